//! The gateway's ed25519 identity.
//!
//! Owns: [`GatewayKey`] (an ed25519-dalek `SigningKey` and its key id), reading and writing it as
//! PEM, [`load_public_key`] / [`key_id_of`] for verifiers, the [`KeyRing`] of every public key a
//! topic may be signed with (a key directory spanning rotations); [`rotation`] owns rotating the
//! key and the [`SigningKeys`] a running gateway signs with; [`envelope`] owns the bytes a Kafka
//! record's signature covers.
//! Guarantees:
//! - keys are stored as standard PEM (PKCS#8 private, SPKI public), so any ed25519 library (or
//!   `openssl pkey`) reads them;
//! - a signature is plain ed25519 over the exact bytes given (no prehash, no context): a Kafka
//!   record's envelope ([`envelope`]) or its value bytes, so a record verifies with any library
//!   from the record as received and the public key;
//! - the key id is the first 16 hex characters of SHA-256 over the raw 32-byte public key, stable
//!   across processes and languages;
//! - [`GatewayKey::write`] never overwrites an existing file and creates the private file with
//!   mode 0600 (on Unix).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::spki::{DecodePublicKey, EncodePublicKey};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::error::BridgeError;

pub mod envelope;
pub mod rotation;
pub use rotation::{next_paths, parse_from, rotate, NextPaths, Rotation, SigningKeys};

const PRIVATE_EXPECTED: &str = "PKCS#8 ed25519 private key";
const PUBLIC_EXPECTED: &str = "SPKI ed25519 public key";

/// The gateway's signing key and its key id.
#[derive(Clone)]
pub struct GatewayKey {
    signing: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for GatewayKey {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl GatewayKey {
    fn from_signing(signing: SigningKey) -> Self {
        let key_id = key_id_of(&signing.verifying_key());
        Self { signing, key_id }
    }

    /// A new random key from the operating system's RNG.
    pub fn generate() -> Self {
        Self::from_signing(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// Reads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    pub fn load(private_pem_path: &Path) -> Result<Self, BridgeError> {
        let pem = fs::read_to_string(private_pem_path).map_err(|source| BridgeError::KeyIo {
            action: "read",
            path: private_pem_path.to_path_buf(),
            source,
        })?;
        let signing = SigningKey::from_pkcs8_pem(&pem).map_err(|e| BridgeError::KeyFormat {
            path: private_pem_path.to_path_buf(),
            expected: PRIVATE_EXPECTED,
            reason: e.to_string(),
        })?;
        Ok(Self::from_signing(signing))
    }

    /// Writes the private key (PKCS#8 PEM, mode 0600) and the public key (SPKI PEM).
    ///
    /// Refuses to overwrite either file; checks both before writing anything.
    pub fn write(
        &self,
        private_pem_path: &Path,
        public_pem_path: &Path,
    ) -> Result<(), BridgeError> {
        for path in [private_pem_path, public_pem_path] {
            if path.exists() {
                return Err(BridgeError::KeyExists {
                    path: path.to_path_buf(),
                });
            }
        }
        let private_pem =
            self.signing
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| BridgeError::KeyFormat {
                    path: private_pem_path.to_path_buf(),
                    expected: PRIVATE_EXPECTED,
                    reason: e.to_string(),
                })?;
        let public_pem = self.public_pem(public_pem_path)?;
        write_new_file(private_pem_path, private_pem.as_bytes(), 0o600)?;
        write_new_file(public_pem_path, public_pem.as_bytes(), 0o644)?;
        Ok(())
    }

    /// The public key as SPKI PEM; `path` is only named in the error.
    pub(crate) fn public_pem(&self, path: &Path) -> Result<String, BridgeError> {
        self.verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| BridgeError::KeyFormat {
                path: path.to_path_buf(),
                expected: PUBLIC_EXPECTED,
                reason: e.to_string(),
            })
    }

    /// The key id: first 16 hex characters of SHA-256 over the raw public key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// Plain ed25519 signature over `value`.
    pub fn sign(&self, value: &[u8]) -> [u8; 64] {
        self.signing.sign(value).to_bytes()
    }
}

/// Creates `path` exclusively (fails if it exists) with `mode` on Unix, writes and syncs it.
pub(crate) fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), BridgeError> {
    let io_err = |source| BridgeError::KeyIo {
        action: "write",
        path: path.to_path_buf(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            BridgeError::KeyExists {
                path: path.to_path_buf(),
            }
        } else {
            io_err(source)
        }
    })?;
    file.write_all(bytes).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    Ok(())
}

/// Reads an SPKI PEM public key (`-----BEGIN PUBLIC KEY-----`).
pub fn load_public_key(public_pem_path: &Path) -> Result<VerifyingKey, BridgeError> {
    let pem = fs::read_to_string(public_pem_path).map_err(|source| BridgeError::KeyIo {
        action: "read",
        path: public_pem_path.to_path_buf(),
        source,
    })?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|e| BridgeError::KeyFormat {
        path: public_pem_path.to_path_buf(),
        expected: PUBLIC_EXPECTED,
        reason: e.to_string(),
    })
}

/// First 16 hex characters of SHA-256 over the raw 32-byte public key.
pub fn key_id_of(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(16);
    for byte in &digest[..8] {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Verifies a base64 (standard alphabet) ed25519 signature over `value`.
///
/// Returns false for malformed base64, a wrong length or a signature that does not verify.
pub fn verify_base64(key: &VerifyingKey, value: &[u8], signature_b64: &str) -> bool {
    use base64::Engine as _;
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(signature_b64.trim()) else {
        return false;
    };
    let Ok(bytes) = <[u8; 64]>::try_from(bytes.as_slice()) else {
        return false;
    };
    let signature = ed25519_dalek::Signature::from_bytes(&bytes);
    key.verify_strict(value, &signature).is_ok()
}

/// Public keys by key id: what a verifier checks a topic that spans key rotations with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRing {
    keys: BTreeMap<String, VerifyingKey>,
}

impl KeyRing {
    /// A ring of one key.
    pub fn single(key: VerifyingKey) -> Self {
        let mut ring = Self::default();
        ring.insert(key);
        ring
    }

    /// Adds a key; returns its key id.
    pub fn insert(&mut self, key: VerifyingKey) -> String {
        let id = key_id_of(&key);
        self.keys.insert(id.clone(), key);
        id
    }

    /// Every `*.pub` file (SPKI PEM) in `dir`; an error when one is unreadable or there is none.
    pub fn load_dir(dir: &Path) -> Result<Self, BridgeError> {
        let io = |source| BridgeError::KeyIo {
            action: "read",
            path: dir.to_path_buf(),
            source,
        };
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "pub") && p.is_file())
            .collect();
        files.sort();
        let mut ring = Self::default();
        for file in &files {
            ring.insert(load_public_key(file)?);
        }
        if ring.is_empty() {
            return Err(BridgeError::KeyFormat {
                path: dir.to_path_buf(),
                expected: PUBLIC_EXPECTED,
                reason: "the key directory holds no *.pub file".into(),
            });
        }
        Ok(ring)
    }

    /// The key with this id.
    pub fn get(&self, key_id: &str) -> Option<&VerifyingKey> {
        self.keys.get(key_id)
    }

    /// Every key.
    pub fn keys(&self) -> impl Iterator<Item = &VerifyingKey> {
        self.keys.values()
    }

    /// The key ids, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier;

    #[test]
    fn sign_verify_round_trip() {
        let key = GatewayKey::generate();
        let sig = key.sign(b"hello");
        let signature = ed25519_dalek::Signature::from_bytes(&sig);
        assert!(key.verifying_key().verify(b"hello", &signature).is_ok());
        assert!(key.verifying_key().verify(b"hellO", &signature).is_err());
    }

    #[test]
    fn pem_round_trip_keeps_key_id_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("gateway.key");
        let public = dir.path().join("gateway.pub");
        let key = GatewayKey::generate();
        key.write(&private, &public).unwrap();

        let text = fs::read_to_string(&private).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
        let text = fs::read_to_string(&public).unwrap();
        assert!(text.starts_with("-----BEGIN PUBLIC KEY-----"), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&private).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }

        let loaded = GatewayKey::load(&private).unwrap();
        assert_eq!(loaded.key_id(), key.key_id());
        assert_eq!(loaded.verifying_key(), key.verifying_key());
        assert_eq!(
            loaded.sign(b"x"),
            key.sign(b"x"),
            "ed25519 is deterministic"
        );
        let public_key = load_public_key(&public).unwrap();
        assert_eq!(key_id_of(&public_key), key.key_id());

        let err = key
            .write(&private, &dir.path().join("other.pub"))
            .unwrap_err();
        assert!(matches!(err, BridgeError::KeyExists { .. }), "{err}");
        assert!(!dir.path().join("other.pub").exists());
    }

    #[test]
    fn key_id_is_stable_and_documented() {
        // RFC 8032 test vector 1 public key.
        let raw: [u8; 32] = [
            0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64,
            0x07, 0x3a, 0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68,
            0xf7, 0x07, 0x51, 0x1a,
        ];
        let key = VerifyingKey::from_bytes(&raw).unwrap();
        let id = key_id_of(&key);
        assert_eq!(id.len(), 16);
        let digest = Sha256::digest(raw);
        let expected: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(id, expected);
        assert_eq!(key_id_of(&key), id);
    }

    #[test]
    fn signature_verifies_with_plain_dalek_from_pem_public_key() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("k.pem");
        let public = dir.path().join("k.pub");
        GatewayKey::generate().write(&private, &public).unwrap();
        let key = GatewayKey::load(&private).unwrap();
        let value = br#"{"resourceType":"Bundle"}"#;
        let header = base64::engine::general_purpose::STANDARD.encode(key.sign(value));

        // What a central team does with nothing but the PEM file and ed25519-dalek.
        let pem = fs::read_to_string(&public).unwrap();
        let verifying = VerifyingKey::from_public_key_pem(&pem).unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&header)
            .unwrap();
        let signature = ed25519_dalek::Signature::from_slice(&raw).unwrap();
        assert!(verifying.verify_strict(value, &signature).is_ok());
        assert!(verify_base64(&verifying, value, &header));
        assert!(!verify_base64(&verifying, b"tampered", &header));
        assert!(!verify_base64(&verifying, value, "not base64!"));
    }

    #[test]
    fn load_reports_bad_pem_with_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.pem");
        fs::write(&path, "nope").unwrap();
        let err = GatewayKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("bad.pem") && err.contains("PKCS#8"), "{err}");
        let err = load_public_key(&dir.path().join("missing.pub"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.pub"), "{err}");
    }
}

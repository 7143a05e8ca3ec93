//! The chain: the canonical byte encoding of an entry (what `hash` is the SHA-256 of), the signed
//! head message, and the set of public keys a verifier accepts ([`KeyRing`]).

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, VerifyingKey};
use icu_cloud_bridge::signing::{key_id_of, GatewayKey};
use sha2::{Digest, Sha256};

/// `prev_hash` of seq 1.
pub const ZERO_HASH: [u8; 32] = [0; 32];

/// First field of every entry's hash input: names the format, so a future format never hashes
/// the same bytes.
pub const ENTRY_DOMAIN: &str = "icu-gateway audit entry v1";
/// First field of the head's signed message.
pub const HEAD_DOMAIN: &str = "icu-gateway audit head v1";

/// The fields an entry's hash covers, as stored (strings exactly as in `audit_log`).
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    pub seq: u64,
    pub time_us: i64,
    pub clock_synced: bool,
    pub account: &'a str,
    pub role: &'a str,
    pub source: &'a str,
    pub action: &'a str,
    pub target_kind: &'a str,
    pub target_id: &'a str,
    pub bed: Option<&'a str>,
    pub old_value: Option<&'a str>,
    pub new_value: Option<&'a str>,
    pub outcome: &'a str,
    pub reason: Option<&'a str>,
    pub key_id: &'a str,
    pub prev_hash: &'a [u8; 32],
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Fields are bounded far below 4 GiB by the callers (an HTTP request, a config path); a
    // longer one would not fit a u32 and is cut to be safe rather than wrap.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..len as usize]);
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

impl HashInput<'_> {
    /// The canonical encoding (module docs of `audit`): every field in a fixed order, strings
    /// length-prefixed (u32 big-endian), optional strings behind a 0/1 byte, integers big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        put_str(&mut out, ENTRY_DOMAIN);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.time_us.to_be_bytes());
        out.push(u8::from(self.clock_synced));
        put_str(&mut out, self.account);
        put_str(&mut out, self.role);
        put_str(&mut out, self.source);
        put_str(&mut out, self.action);
        put_str(&mut out, self.target_kind);
        put_str(&mut out, self.target_id);
        put_opt(&mut out, self.bed);
        put_opt(&mut out, self.old_value);
        put_opt(&mut out, self.new_value);
        put_str(&mut out, self.outcome);
        put_opt(&mut out, self.reason);
        put_str(&mut out, self.key_id);
        out.extend_from_slice(self.prev_hash);
        out
    }

    /// SHA-256 of [`Self::encode`]: the entry's `hash`.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }
}

/// The bytes the head's signature covers: `HEAD_DOMAIN` (length-prefixed), the last seq
/// (u64 big-endian) and its hash.
pub fn head_message(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(72);
    put_str(&mut out, HEAD_DOMAIN);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(hash);
    out
}

/// The public keys a verifier accepts, by key id: the current key and any retired (rotated) ones.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: BTreeMap<String, VerifyingKey>,
}

impl KeyRing {
    pub fn new() -> Self {
        Self::default()
    }

    /// The ring of one gateway key's public half.
    pub fn of(key: &GatewayKey) -> Self {
        let mut ring = Self::new();
        ring.add(key.verifying_key());
        ring
    }

    /// Adds a public key under its key id; returns the id.
    pub fn add(&mut self, key: VerifyingKey) -> String {
        let id = key_id_of(&key);
        self.keys.insert(id.clone(), key);
        id
    }

    pub fn get(&self, key_id: &str) -> Option<&VerifyingKey> {
        self.keys.get(key_id)
    }

    /// The key ids, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `signature` is a valid (strict) ed25519 signature of `message` by `key_id`:
    /// `None` when the key id is not in the ring.
    pub fn verify(&self, key_id: &str, message: &[u8], signature: &[u8]) -> Option<bool> {
        let key = self.get(key_id)?;
        let Ok(bytes) = <[u8; 64]>::try_from(signature) else {
            return Some(false);
        };
        Some(
            key.verify_strict(message, &Signature::from_bytes(&bytes))
                .is_ok(),
        )
    }
}

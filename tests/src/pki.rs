//! A small test PKI made with rcgen: a CA, server certificates for `127.0.0.1` and `localhost`
//! (valid, or expired), and client certificates, written as PEM files into a folder.
//!
//! Keys are ECDSA P-256; private key files are written with mode 600 (the gateway refuses a
//! secret that group or others may read). Nothing here is for production: a site brings its own
//! PKI.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A certificate and its private key on disk.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA that signs certificates into its folder.
pub struct TestPki {
    dir: PathBuf,
    name: String,
    issuer: Issuer<'static, KeyPair>,
    ca_file: PathBuf,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("dir", &self.dir)
            .field("name", &self.name)
            .finish()
    }
}

impl TestPki {
    /// A new CA named `name` (common name `<name> test CA`), its certificate written to
    /// `<dir>/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<TestPki> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, cert.pem())
            .with_context(|| format!("write {}", ca_file.display()))?;
        Ok(TestPki {
            dir: dir.to_owned(),
            name: name.to_owned(),
            issuer: Issuer::new(params, key),
            ca_file,
        })
    }

    /// The CA certificate (PEM), the bundle a client trusts.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// A server certificate for `127.0.0.1` and `localhost`, valid now.
    pub fn server(&self, file_name: &str) -> anyhow::Result<CertFiles> {
        self.server_with(file_name, false)
    }

    /// A server certificate for `127.0.0.1` and `localhost` that expired (valid in 2020 only).
    pub fn expired_server(&self, file_name: &str) -> anyhow::Result<CertFiles> {
        self.server_with(file_name, true)
    }

    fn server_with(&self, file_name: &str, expired: bool) -> anyhow::Result<CertFiles> {
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2020, 12, 31);
        }
        self.issue(file_name, params)
    }

    /// A client certificate whose common name is `name` (e.g. a pump's device id).
    pub fn client(&self, name: &str) -> anyhow::Result<CertFiles> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(name, params)
    }

    fn issue(&self, file_name: &str, mut params: CertificateParams) -> anyhow::Result<CertFiles> {
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = CertFiles {
            cert: self.dir.join(format!("{}-{file_name}.pem", self.name)),
            key: self.dir.join(format!("{}-{file_name}.key", self.name)),
        };
        std::fs::write(&files.cert, cert.pem())
            .with_context(|| format!("write {}", files.cert.display()))?;
        write_secret(&files.key, &key.serialize_pem())?;
        Ok(files)
    }
}

/// Writes `text` to `path` with mode 600 (a password or a private key).
pub fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", path.display()))
}

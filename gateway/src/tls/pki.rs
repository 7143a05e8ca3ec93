//! `icu-gateway cert`: a small test PKI for demos and tests. Production sites bring their own
//! (the hospital's CA); nothing here is meant to protect patient data beyond a demo.
//!
//! Writes into one folder: `ca.crt`/`ca.key` (the test CA), `gateway.crt`/`gateway.key` (server
//! and client use; SANs `localhost`, `127.0.0.1`, `::1` and every `--name`), and for every
//! `--device ID` and `--client NAME` a client certificate `devices/ID.crt`/`.key` or
//! `clients/NAME.crt`/`.key` whose subject CN and DNS SAN are the id, plus the URI SAN
//! `urn:icu:device:ID` for devices. Keys are ECDSA P-256, PKCS#8 PEM, mode 0600.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// What to make.
#[derive(Debug, Clone, Default)]
pub struct PkiRequest {
    /// Extra host names (or IP addresses) of the gateway.
    pub gateway_names: Vec<String>,
    pub devices: Vec<String>,
    pub clients: Vec<String>,
    /// Validity of every certificate, in days from now.
    pub days: i64,
    /// Devices whose certificate has already expired (for tests of the refusal).
    pub expired_devices: Vec<String>,
}

/// Where it went.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub gateway_cert: PathBuf,
    pub gateway_key: PathBuf,
}

fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn validity(params: &mut CertificateParams, days: i64, expired: bool) {
    let now = time::OffsetDateTime::now_utc();
    if expired {
        params.not_before = now - time::Duration::days(30);
        params.not_after = now - time::Duration::days(1);
    } else {
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(days.max(1));
    }
}

fn leaf(
    cn: &str,
    sans: Vec<SanType>,
    server: bool,
    days: i64,
    expired: bool,
    issuer: &Issuer<'_, KeyPair>,
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = if server {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days, expired);
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn dns(name: &str) -> anyhow::Result<SanType> {
    Ok(match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.try_into()?),
    })
}

/// Makes the PKI in `dir` (created if missing; existing files are replaced).
pub fn make(dir: &Path, req: &PkiRequest) -> anyhow::Result<PkiFiles> {
    std::fs::create_dir_all(dir.join("devices"))?;
    std::fs::create_dir_all(dir.join("clients"))?;
    let days = if req.days == 0 { 825 } else { req.days };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        "ICU gateway test CA (not for patient data)",
    );
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca, days + 1, false);
    let ca = CertifiedIssuer::self_signed(ca, ca_key)?;
    let files = PkiFiles {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        gateway_cert: dir.join("gateway.crt"),
        gateway_key: dir.join("gateway.key"),
    };
    std::fs::write(&files.ca_cert, ca.pem())?;
    write_secret(&files.ca_key, &ca.key().serialize_pem())?;

    let mut sans = vec![dns("localhost")?, dns("127.0.0.1")?, dns("::1")?];
    for n in &req.gateway_names {
        sans.push(dns(n)?);
    }
    let (cert, key) = leaf("icu-gateway", sans, true, days, false, &ca)?;
    std::fs::write(&files.gateway_cert, cert)?;
    write_secret(&files.gateway_key, &key)?;

    for (folder, names, device) in [
        ("devices", &req.devices, true),
        ("clients", &req.clients, false),
    ] {
        for id in names {
            let mut sans = vec![dns(id)?];
            if device {
                sans.push(SanType::URI(
                    format!("urn:icu:device:{id}").as_str().try_into()?,
                ));
            }
            let expired = req.expired_devices.contains(id);
            let (cert, key) = leaf(id, sans, false, days, expired, &ca)?;
            std::fs::write(dir.join(folder).join(format!("{id}.crt")), cert)?;
            write_secret(&dir.join(folder).join(format!("{id}.key")), &key)?;
        }
    }
    Ok(files)
}

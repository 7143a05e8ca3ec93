use super::*;

fn pki(dir: &Path) -> pki::PkiFiles {
    pki::make(
        dir,
        &pki::PkiRequest {
            devices: vec!["mon-01".into(), "mon-02".into(), "old-01".into()],
            clients: vec!["adt-engine".into()],
            expired_devices: vec!["old-01".into()],
            ..Default::default()
        },
    )
    .unwrap()
}

/// One handshake over an in-memory pipe; the server's view of the client's identity.
async fn handshake(
    server: Arc<ServerConfig>,
    client: ClientConfig,
) -> Result<Option<PeerIdentity>, String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let (s, c) = tokio::join!(acceptor.accept(a), connector.connect(name, b));
    let (s, _c) = match (s, c) {
        (Ok(s), Ok(c)) => (s, c),
        (s, c) => {
            return Err(format!(
                "server: {:?}; client: {:?}",
                s.err().map(|e| e.to_string()),
                c.err().map(|e| e.to_string())
            ))
        }
    };
    Ok(s.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| identity_of(c)))
}

#[tokio::test]
async fn mutual_tls_binds_the_device_named_by_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let f = pki(dir.path());
    let server = Arc::new(
        server_config(
            &f.gateway_cert,
            &f.gateway_key,
            Some(&f.ca_cert),
            Mode::Required,
        )
        .unwrap(),
    );
    let dev = dir.path().join("devices");
    let client = client_config(
        &f.ca_cert,
        Some((&dev.join("mon-01.crt"), &dev.join("mon-01.key"))),
    )
    .unwrap();
    let id = handshake(server.clone(), client).await.unwrap().unwrap();
    assert!(id.names_any(&["mon-01"]), "{id:?}");
    assert!(id.names_any(&["MON-01"]), "{id:?}");
    assert!(!id.names_any(&["mon-02"]), "{id:?}");
    assert!(
        id.names.iter().any(|n| n == "urn:icu:device:mon-01"),
        "{id:?}"
    );

    // Without a client certificate the handshake is refused.
    let anonymous = client_config(&f.ca_cert, None).unwrap();
    let e = handshake(server.clone(), anonymous).await.unwrap_err();
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // An expired client certificate is refused.
    let old = client_config(
        &f.ca_cert,
        Some((&dev.join("old-01.crt"), &dev.join("old-01.key"))),
    )
    .unwrap();
    assert!(handshake(server.clone(), old).await.is_err());

    // Optional client certificates: none is fine, one is still read.
    let optional = Arc::new(
        server_config(
            &f.gateway_cert,
            &f.gateway_key,
            Some(&f.ca_cert),
            Mode::Optional,
        )
        .unwrap(),
    );
    assert_eq!(
        handshake(optional, client_config(&f.ca_cert, None).unwrap())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_server_from_another_ca_is_not_trusted() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let fa = pki(a.path());
    let fb = pki(b.path());
    let server =
        Arc::new(server_config(&fa.gateway_cert, &fa.gateway_key, None, Mode::Off).unwrap());
    let e = handshake(server, client_config(&fb.ca_cert, None).unwrap())
        .await
        .unwrap_err();
    // Both test CAs have the same name, so the check fails on the signature (UnknownIssuer
    // with differently named CAs): either way the client refuses the certificate.
    assert!(e.contains("invalid peer certificate"), "{e}");
}

#[test]
fn the_section_says_what_is_missing_and_refuses_open_keys() {
    let dir = tempfile::tempdir().unwrap();
    let f = pki(dir.path());
    assert!(TlsConfig::default().problems().is_empty());
    let on = TlsConfig {
        mllp: Mode::Required,
        mllp_client_certs: Mode::Required,
        http: Mode::Optional,
        ..TlsConfig::default()
    };
    let fields: Vec<String> = on.problems().into_iter().map(|p| p.field).collect();
    assert_eq!(
        fields,
        ["tls.cert_file", "tls.key_file", "tls.ca_file", "tls.http"]
    );
    let good = TlsConfig {
        cert_file: Some(f.gateway_cert.clone()),
        key_file: Some(f.gateway_key.clone()),
        ca_file: Some(f.ca_cert.clone()),
        mllp: Mode::Required,
        mllp_client_certs: Mode::Required,
        ..TlsConfig::default()
    };
    assert!(good.problems().is_empty(), "{:?}", good.problems());
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&f.gateway_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let p = good.problems();
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].message.contains("chmod 600"), "{p:?}");
}

#[test]
fn expiry_and_reload_follow_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let f = pki(dir.path());
    let left = expiry(&f.gateway_cert).unwrap();
    assert!(left > 800 * 86_400 && left < 826 * 86_400, "{left}");
    let old = dir.path().join("devices/old-01.crt");
    assert!(expiry(&old).unwrap() < 0);

    let (c, k) = (f.gateway_cert.clone(), f.gateway_key.clone());
    let r = Reloadable::new(vec![c.clone(), k.clone()], move || {
        server_config(&c, &k, None, Mode::Off)
    })
    .unwrap();
    let first = r.current();
    assert!(!r.reload(false).unwrap(), "nothing changed");
    std::thread::sleep(std::time::Duration::from_millis(20));
    pki(dir.path());
    assert!(r.reload(false).unwrap(), "new files");
    assert!(!Arc::ptr_eq(&first, &r.current()));
    // A broken file keeps the configuration in force.
    std::fs::write(&f.gateway_cert, "not a certificate").unwrap();
    let before = r.current();
    assert!(r.reload(false).is_err());
    assert!(Arc::ptr_eq(&before, &r.current()));
}

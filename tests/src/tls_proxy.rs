//! A TLS terminator in front of a plain-text broker: what a TLS-only Kafka listener looks like
//! to a client (librdkafka's OpenSSL handshake, CA and host-name checks, client certificates).
//!
//! tansu 0.6 cannot serve TLS itself: its `broker --cert` and `--key` flags are in one clap
//! group, so giving both is refused ("the argument '--cert <CERT>' cannot be used with '--key
//! <KEY>'") and giving one leaves TLS off. The broker therefore listens in plain text on a port
//! only this proxy uses and advertises the proxy's port, so every connection a client makes
//! (bootstrap and the advertised broker) goes through TLS here.

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// A running terminator; stopped on drop.
#[derive(Debug)]
pub struct TlsProxy {
    port: u16,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TlsProxy {
    /// Serves TLS on `listener` with `cert`/`key`, forwarding each connection's plain bytes to
    /// `127.0.0.1:upstream`. With `client_ca`, a client certificate signed by it is required.
    pub fn start(
        listener: StdListener,
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
        upstream: u16,
    ) -> anyhow::Result<TlsProxy> {
        // ring, as the gateway uses (see gateway/src/tls: aws-lc-rs would need cmake).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("read {}", cert.display()))?
            .collect::<Result<_, _>>()?;
        let key =
            PrivateKeyDer::from_pem_file(key).with_context(|| format!("read {}", key.display()))?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let config = match client_ca {
            None => builder.with_no_client_auth().with_single_cert(certs, key)?,
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca)? {
                    roots.add(c?)?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()?;
                builder
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(certs, key)?
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        runtime.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Ok(TlsProxy {
            port,
            runtime: Some(runtime),
        })
    }

    /// The TLS port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

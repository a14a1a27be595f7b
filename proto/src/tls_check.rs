//! Why a TLS connection to etcd fails, in words an operator can act on. gRPC reports a refused
//! client certificate as "operation was canceled" or "connection closed": with TLS 1.3 the client
//! finishes its side of the handshake before the server checks its certificate, and the server's
//! alert only arrives on the next read, which the HTTP/2 layer reports as a dropped connection.
//! This module does one handshake of its own with the same files and reads that alert.
use crate::access::EtcdAccess;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::sync::Arc;
use std::time::Duration;

/// What is wrong with TLS to the first `https://` endpoint of `access`, if anything can be found
/// within a few seconds: a CA that did not sign etcd's certificate, a client certificate etcd
/// refuses, a file that cannot be read. `None` when the handshake works (or nothing answers).
pub async fn diagnose(access: &EtcdAccess) -> Option<String> {
    let endpoint = access
        .endpoints
        .iter()
        .find(|e| e.starts_with("https://"))?;
    let authority = endpoint.trim_start_matches("https://").split('/').next()?;
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let config = match client_config(access) {
        Ok(config) => config,
        Err(why) => return Some(why),
    };
    let name = ServerName::try_from(host).ok()?;
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(authority).await.ok()?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let mut tls = match connector.connect(name, tcp).await {
            Ok(tls) => tls,
            Err(e) => return Some(format!("TLS to {endpoint}: {e}")),
        };
        // etcd's verdict on our certificate comes as an alert on the first read; an HTTP/2
        // server that accepted it waits for our preface and sends nothing.
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(1), tls.read(&mut byte)).await {
            Ok(Err(e)) => Some(format!(
                "TLS to {endpoint}: etcd refused this client's certificate ({e}): it must be \
                 signed by a CA in etcd's --trusted-ca-file"
            )),
            _ => None,
        }
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

/// `error`'s one line, with what TLS says when that explains it.
pub async fn explained(access: &EtcdAccess, error: &crate::ProtoError) -> String {
    match diagnose(access).await {
        Some(tls) => format!("{}; {tls}", error.brief()),
        None => error.brief(),
    }
}

fn client_config(access: &EtcdAccess) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &access.cacert {
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("etcd_cacert {}: {e}", ca.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("etcd_cacert {}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("etcd_cacert {}: {e}", ca.display()))?;
        }
    }
    let builder = builder.with_root_certificates(roots);
    match (&access.cert, &access.key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<_, _>>())
                .map_err(|e| format!("etcd_cert {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("etcd_key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("etcd_cert/etcd_key: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

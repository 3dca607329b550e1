//! rustls (ring) client configs for the audit sinks' receivers: roots from a
//! CA file, or the Mozilla roots bundled in `webpki-roots` (no system
//! lookup, no download); an optional client certificate.

use std::path::Path;
use std::sync::Arc;

pub fn connector(
    ca_file: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(ca) => {
            for cert in crate::tls::load_certs(ca).map_err(|e| e.to_string())? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: unusable CA certificate: {e}", ca.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    let config = match client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                crate::tls::load_certs(cert).map_err(|e| e.to_string())?,
                crate::tls::load_key(key).map_err(|e| e.to_string())?,
            )
            .map_err(|e| format!("client certificate: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

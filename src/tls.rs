//! TLS material: the acceptor for clients and the connector for the upstream.
//!
//! rustls with the `ring` provider (no C toolchain beyond what `ring` needs,
//! nothing downloaded at build time).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme};

use crate::config::{ClientTlsConfig, ClientTlsMode, UpstreamTlsConfig, UpstreamTlsMode};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] TlsError),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(path: &Path, message: impl Into<String>) -> TlsSetupError {
    TlsSetupError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = std::fs::read(path).map_err(|e| file_error(path, e.to_string()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(path, format!("invalid PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate found"));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let pem = std::fs::read(path).map_err(|e| file_error(path, e.to_string()))?;
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| file_error(path, format!("invalid PEM key: {e}")))?
        .ok_or_else(|| file_error(path, "no private key found"))
}

fn root_store(ca_file: &Path) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_file)? {
        roots
            .add(cert)
            .map_err(|e| file_error(ca_file, format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The server-side TLS config for clients, when client TLS is enabled.
pub fn client_acceptor(
    cfg: &ClientTlsConfig,
) -> Result<Option<tokio_rustls::TlsAcceptor>, TlsSetupError> {
    if cfg.mode == ClientTlsMode::Disable {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) else {
        return Ok(None);
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    // With a client CA, a client that sends TLS must present a certificate it signed.
    let builder = match &cfg.client_ca_file {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(root_store(ca)?),
                provider(),
            )
            .build()
            .map_err(|e| file_error(ca, e.to_string()))?,
        ),
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(load_certs(cert)?, load_key(key)?)?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// How pgward speaks TLS to the upstream.
#[derive(Clone)]
pub struct UpstreamTls {
    pub mode: UpstreamTlsMode,
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: ServerName<'static>,
}

pub fn upstream_connector(
    cfg: &UpstreamTlsConfig,
    upstream_host: &str,
) -> Result<Option<UpstreamTls>, TlsSetupError> {
    if cfg.mode == UpstreamTlsMode::Disable {
        return Ok(None);
    }
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let verifier: Arc<dyn ServerCertVerifier> = match cfg.mode {
        UpstreamTlsMode::VerifyCa | UpstreamTlsMode::VerifyFull => {
            let ca = cfg
                .ca_file
                .as_deref()
                .ok_or_else(|| TlsError::General("verify modes need a CA file".into()))?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(ca)?), provider)
                    .build()
                    .map_err(|e| TlsError::General(e.to_string()))?;
            Arc::new(Verifier {
                inner: Some(webpki),
                check_name: cfg.mode == UpstreamTlsMode::VerifyFull,
                schemes: rustls::crypto::ring::default_provider().signature_verification_algorithms,
            })
        }
        _ => Arc::new(Verifier {
            inner: None,
            check_name: false,
            schemes: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }),
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert), Some(key)) => {
            builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?
        }
        _ => builder.with_no_client_auth(),
    };
    let name = cfg.server_name.as_deref().unwrap_or(upstream_host);
    let server_name = ServerName::try_from(name.to_string()).map_err(|e| {
        TlsError::General(format!("invalid upstream TLS server name {name:?}: {e}"))
    })?;
    Ok(Some(UpstreamTls {
        mode: cfg.mode,
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
    }))
}

/// libpq's semantics: `prefer`/`require` encrypt without checking who answers,
/// `verify-ca` checks the chain, `verify-full` the chain and the host name.
#[derive(Debug)]
struct Verifier {
    inner: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    schemes: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let Some(inner) = &self.inner else {
            return Ok(ServerCertVerified::assertion());
        };
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(TlsError::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(TlsError::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.schemes)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.schemes)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.supported_schemes()
    }
}

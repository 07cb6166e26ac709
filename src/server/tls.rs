//! TLS for the admission endpoints: rustls, TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`.
//!
//! The serving certificate sits behind a resolver holding an atomically swappable
//! `CertifiedKey`, so a new certificate can take effect for new handshakes without a restart
//! while established connections keep theirs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocols in the server's order of preference. kube-apiserver offers only `http/1.1`
/// to webhooks; curl and other clients may pick `h2`.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: {message}")]
    Certificate { path: PathBuf, message: String },
    #[error("TLS private key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("TLS certificate {cert} and key {key} do not belong together: {message}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads a PEM certificate chain and private key and checks that they belong together.
pub fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_error = |message: String| TlsError::Certificate {
        path: cert_path.to_path_buf(),
        message,
    };
    let cert_pem = std::fs::read(cert_path).map_err(|e| cert_error(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(format!("not a PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(cert_error("no PEM CERTIFICATE block found".to_owned()));
    }

    let key_error = |message: String| TlsError::Key {
        path: key_path.to_path_buf(),
        message,
    };
    let key_pem = std::fs::read(key_path).map_err(|e| key_error(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| key_error(format!("no PEM private key found: {e}")))?;

    let certified =
        CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::Mismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
            message: e.to_string(),
        })?;
    Ok(certified)
}

/// Hands every handshake the current serving certificate.
pub struct CertificateResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertificateResolver {
    pub fn new(key: CertifiedKey) -> Self {
        Self {
            current: RwLock::new(Arc::new(key)),
        }
    }

    /// Serves `key` to every handshake from now on.
    pub fn replace(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl fmt::Debug for CertificateResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateResolver")
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertificateResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The rustls server configuration: TLS 1.3 and 1.2, the provider's default (AEAD, forward
/// secret) cipher suites, ALPN `h2` then `http/1.1`.
pub fn server_config(resolver: Arc<CertificateResolver>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs;

    fn write_pair(dir: &Path) -> (PathBuf, PathBuf) {
        certs::generate(&["localhost".to_owned()], 1)
            .unwrap()
            .write_to(dir)
            .unwrap();
        (dir.join(certs::CERT_FILE), dir.join(certs::KEY_FILE))
    }

    #[test]
    fn loads_a_generated_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path());
        let certified = load_certified_key(&cert, &key).unwrap();
        assert_eq!(certified.cert.len(), 1);
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = load_certified_key(Path::new("/nonexistent/tls.crt"), Path::new("k"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/tls.crt"), "{err}");
    }

    #[test]
    fn rejects_a_key_of_another_certificate() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (cert, _) = write_pair(a.path());
        let (_, key) = write_pair(b.path());
        let err = load_certified_key(&cert, &key).unwrap_err();
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
    }

    #[test]
    fn rejects_files_without_pem_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path());
        std::fs::write(&cert, "not a certificate").unwrap();
        let err = load_certified_key(&cert, &key).unwrap_err();
        assert!(matches!(err, TlsError::Certificate { .. }), "{err}");
        let (cert, key) = write_pair(dir.path());
        std::fs::write(&key, "").unwrap();
        let err = load_certified_key(&cert, &key).unwrap_err();
        assert!(matches!(err, TlsError::Key { .. }), "{err}");
    }

    #[test]
    fn offers_tls12_and_tls13_with_alpn() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path());
        let resolver = Arc::new(CertificateResolver::new(
            load_certified_key(&cert, &key).unwrap(),
        ));
        let config = server_config(resolver).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }
}

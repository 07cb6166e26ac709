//! TLS for the admission endpoints: rustls, TLS 1.3 and 1.2 only, ALPN `h2` and `http/1.1`,
//! optionally client certificates verified against a CA (mutual TLS).
//!
//! The configuration lives behind a lock and is rebuilt from the files when they change, so a
//! rotated certificate serves new handshakes without a restart while established connections
//! keep theirs; a pair that does not load leaves the last good one in place.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, version};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::files::Contents;

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
    #[error("client CA {path}: {message}")]
    ClientCa { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Where the serving certificate, its key and (for mutual TLS) the client CA are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files a reload watches.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.cert.clone(), self.key.clone()];
        paths.extend(self.client_ca.clone());
        paths
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn parse_certificates(pem: &Contents) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem.as_deref().map_err(Clone::clone)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    if chain.is_empty() {
        return Err("no PEM CERTIFICATE block found".to_owned());
    }
    Ok(chain)
}

/// Parses a PEM certificate chain and private key and checks that they belong together.
fn certified_key(
    cert_path: &Path,
    cert_pem: &Contents,
    key_path: &Path,
    key_pem: &Contents,
) -> Result<CertifiedKey, TlsError> {
    let chain = parse_certificates(cert_pem).map_err(|message| TlsError::Certificate {
        path: cert_path.to_path_buf(),
        message,
    })?;
    let key_error = |message: String| TlsError::Key {
        path: key_path.to_path_buf(),
        message,
    };
    let key_pem = key_pem.as_deref().map_err(|e| key_error(e.clone()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| key_error(format!("no PEM private key found: {e}")))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::Mismatch {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        message: e.to_string(),
    })
}

/// A loaded configuration and when its certificate expires.
pub struct Loaded {
    pub config: Arc<ServerConfig>,
    /// The leaf certificate's notAfter, in seconds since the Unix epoch.
    pub not_after: Option<i64>,
}

/// Builds the rustls configuration from the files: TLS 1.3 and 1.2, the provider's default
/// (AEAD, forward-secret) cipher suites, ALPN `h2` (unless `http2` is false) then `http/1.1`,
/// and, with a client CA, client certificates required. (The server reads the files through
/// its reloads and calls [`load_contents`].)
#[cfg(test)]
pub fn load(files: &TlsFiles, http2: bool) -> Result<Loaded, TlsError> {
    load_contents(files, &crate::files::read_all(&files.paths()), http2)
}

/// As [`load`], from the files' contents already read, one per [`TlsFiles::paths`] in order.
pub fn load_contents(
    files: &TlsFiles,
    contents: &[Contents],
    http2: bool,
) -> Result<Loaded, TlsError> {
    let missing = Err("not read".to_owned());
    let content = |i: usize| contents.get(i).unwrap_or(&missing);
    let key = Arc::new(certified_key(
        &files.cert,
        content(0),
        &files.key,
        content(1),
    )?);
    let not_after = key.cert.first().and_then(|leaf| not_after(leaf));
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let ca_error = |message: String| TlsError::ClientCa {
                path: path.clone(),
                message,
            };
            let mut roots = RootCertStore::empty();
            for certificate in parse_certificates(content(2)).map_err(ca_error)? {
                roots
                    .add(certificate)
                    .map_err(|e| ca_error(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| ca_error(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(SingleCert(key)));
    config.alpn_protocols = ALPN_PROTOCOLS
        .iter()
        .filter(|p| http2 || **p != b"h2")
        .map(|p| p.to_vec())
        .collect();
    Ok(Loaded {
        config: Arc::new(config),
        not_after,
    })
}

/// Serves one certificate to every handshake, whatever name the client asks for.
#[derive(Debug)]
struct SingleCert(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for SingleCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The certificate's notAfter as a Unix timestamp.
pub fn not_after(certificate: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// The configuration new connections get; replaced on reload.
pub struct TlsState {
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsState {
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self {
            current: RwLock::new(config),
        }
    }

    pub fn replace(&self, config: Arc<ServerConfig>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs;

    fn write_pair(dir: &Path) -> TlsFiles {
        certs::generate(&["localhost".to_owned()], 1)
            .unwrap()
            .write_to(dir)
            .unwrap();
        TlsFiles {
            cert: dir.join(certs::CERT_FILE),
            key: dir.join(certs::KEY_FILE),
            client_ca: None,
        }
    }

    #[test]
    fn loads_a_generated_pair_with_its_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_pair(dir.path());
        let loaded = load(&files, true).unwrap();
        assert_eq!(
            loaded.config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let expiry = loaded.not_after.unwrap();
        assert!(
            (now + 20 * 3600..now + 24 * 3600).contains(&expiry),
            "{expiry} vs {now}"
        );
        let without_h2 = load(&files, false).unwrap();
        assert_eq!(without_h2.config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    /// SECURITY.md lists these; keep it true.
    #[test]
    fn suites_and_groups_are_the_documented_ones() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = load(&write_pair(dir.path()), true).unwrap();
        let provider = loaded.config.crypto_provider();
        let suites: Vec<String> = provider
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(
            suites,
            [
                "TLS13_AES_256_GCM_SHA384",
                "TLS13_AES_128_GCM_SHA256",
                "TLS13_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            ]
        );
        let groups: Vec<String> = provider
            .kx_groups
            .iter()
            .map(|g| format!("{:?}", g.name()))
            .collect();
        assert_eq!(
            groups,
            ["X25519", "secp256r1", "secp384r1", "X25519MLKEM768"]
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let files = TlsFiles {
            cert: "/nonexistent/tls.crt".into(),
            key: "k".into(),
            client_ca: None,
        };
        let err = load(&files, true).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/tls.crt"), "{err}");
    }

    #[test]
    fn rejects_a_key_of_another_certificate() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let mut files = write_pair(a.path());
        files.key = write_pair(b.path()).key;
        let err = load(&files, true).err().unwrap();
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
    }

    #[test]
    fn rejects_files_without_pem_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_pair(dir.path());
        std::fs::write(&files.cert, "not a certificate").unwrap();
        let err = load(&files, true).err().unwrap();
        assert!(matches!(err, TlsError::Certificate { .. }), "{err}");
        let files = write_pair(dir.path());
        std::fs::write(&files.key, "").unwrap();
        let err = load(&files, true).err().unwrap();
        assert!(matches!(err, TlsError::Key { .. }), "{err}");
    }

    #[test]
    fn a_client_ca_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = write_pair(dir.path());
        files.client_ca = Some(dir.path().join(certs::CA_FILE));
        assert!(load(&files, true).is_ok());
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        files.client_ca = Some(dir.path().join("empty.pem"));
        let err = load(&files, true).err().unwrap();
        assert!(matches!(err, TlsError::ClientCa { .. }), "{err}");
    }
}

//! Certificates for serving TLS: a development CA and a server certificate signed by it.
//!
//! The API server verifies the webhook's certificate against the `caBundle` of the webhook
//! configuration and the name `<service>.<namespace>.svc`, so the server certificate carries
//! that name as well as the loopback names a developer uses with curl.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// The in-cluster Service the deploy manifests create: `daemonset-webhook` in namespace
/// `daemonset-webhook`.
pub const SERVICE_NAME: &str = "daemonset-webhook";
pub const SERVICE_NAMESPACE: &str = "daemonset-webhook";

/// The names the deploy manifests give the webhook configurations and their webhooks; the
/// `caBundle` patch written by [`GeneratedCertificates::write_kustomize`] targets them.
pub const CONFIGURATION_NAME: &str = "daemonset-webhook";
pub const MUTATING_WEBHOOK_NAME: &str = "mutate.daemonset-webhook.io";
pub const VALIDATING_WEBHOOK_NAME: &str = "validate.daemonset-webhook.io";
/// The Secret the Deployment mounts its serving certificate from.
pub const SECRET_NAME: &str = "daemonset-webhook-tls";
/// Files [`GeneratedCertificates::write_kustomize`] writes besides the PEM files.
pub const SECRET_FILE: &str = "secret.yaml";
pub const CA_BUNDLE_PATCH_FILE: &str = "webhook-ca-bundle.yaml";

/// How long a generated development certificate is valid.
pub const DEV_VALIDITY_DAYS: i64 = 365;

/// The file names a certificate directory holds, as the deploy manifests and `certs/README.md`
/// name them.
pub const CA_FILE: &str = "ca.crt";
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

/// Subject alternative names of the development server certificate: loopback for people and
/// tests, the Service's DNS names for a cluster.
pub fn dev_subject_alt_names() -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(service_dns_names(SERVICE_NAME, SERVICE_NAMESPACE));
    names
}

/// `<service>.<namespace>.svc` (what the API server verifies) and its fully qualified form.
pub fn service_dns_names(service: &str, namespace: &str) -> [String; 2] {
    [
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// A CA certificate and a server certificate with its private key, all PEM-encoded.
///
/// The CA's private key is not kept: nothing else can be signed with a development CA once the
/// server certificate exists, so a leaked `ca.crt` trusts nothing but this server.
pub struct GeneratedCertificates {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Generates a fresh CA and a server certificate for `subject_alt_names` (DNS names or IP
/// addresses), valid from an hour ago (clock skew) for `validity_days`.
pub fn generate(
    subject_alt_names: &[String],
    validity_days: i64,
) -> Result<GeneratedCertificates, CertError> {
    let not_before = OffsetDateTime::now_utc() - Duration::hours(1);
    let not_after = not_before + Duration::days(validity_days);

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    // A distinct name per CA, so a client trusting another development CA is told the issuer
    // is unknown rather than that a signature is bad.
    ca_params.distinguished_name = distinguished_name(&format!(
        "daemonset-webhook development CA {}",
        unique_suffix()
    ));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server_params = CertificateParams::new(subject_alt_names.to_vec())?;
    server_params.distinguished_name = distinguished_name(
        subject_alt_names
            .first()
            .map(String::as_str)
            .unwrap_or("daemonset-webhook"),
    );
    server_params.is_ca = IsCa::ExplicitNoCa;
    server_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.use_authority_key_identifier_extension = true;
    server_params.not_before = not_before;
    server_params.not_after = not_after;
    let server_cert = server_params.signed_by(&server_key, &issuer)?;

    Ok(GeneratedCertificates {
        ca_pem: ca_cert.pem(),
        cert_pem: server_cert.pem(),
        key_pem: server_key.serialize_pem(),
    })
}

/// Eight hex digits that differ between CAs made by different processes or at different times.
fn unique_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    format!("{:08x}", hasher.finish() as u32)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

impl GeneratedCertificates {
    /// Writes `ca.crt`, `tls.crt` and `tls.key` into `dir` (created if missing); the key is
    /// readable by its owner only.
    pub fn write_to(&self, dir: &Path) -> Result<(), CertError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CertError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        write_file(&dir.join(CA_FILE), &self.ca_pem, 0o644).map_err(io(&dir.join(CA_FILE)))?;
        write_file(&dir.join(CERT_FILE), &self.cert_pem, 0o644)
            .map_err(io(&dir.join(CERT_FILE)))?;
        write_file(&dir.join(KEY_FILE), &self.key_pem, 0o600).map_err(io(&dir.join(KEY_FILE)))?;
        Ok(())
    }
}

impl GeneratedCertificates {
    /// Writes the PEM files and, for kustomize, `secret.yaml` (a `kubernetes.io/tls` Secret
    /// named [`SECRET_NAME`] in `namespace`, with `ca.crt`) and `webhook-ca-bundle.yaml` (a
    /// strategic-merge patch setting `caBundle` on both webhook configurations).
    pub fn write_kustomize(&self, dir: &Path, namespace: &str) -> Result<(), CertError> {
        use base64::Engine as _;
        let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
        self.write_to(dir)?;
        let secret = format!(
            "# Generated by `daemonset-webhook certs`: the webhook's serving certificate.\n\
             apiVersion: v1\n\
             kind: Secret\n\
             metadata:\n  name: {SECRET_NAME}\n  namespace: {namespace}\n\
             type: kubernetes.io/tls\n\
             data:\n  tls.crt: {}\n  tls.key: {}\n  ca.crt: {}\n",
            b64(&self.cert_pem),
            b64(&self.key_pem),
            b64(&self.ca_pem),
        );
        let ca_bundle = b64(&self.ca_pem);
        let patch = format!(
            "# Generated by `daemonset-webhook certs`: the CA the API server trusts for the webhook.\n\
             apiVersion: admissionregistration.k8s.io/v1\n\
             kind: MutatingWebhookConfiguration\n\
             metadata:\n  name: {CONFIGURATION_NAME}\n\
             webhooks:\n  - name: {MUTATING_WEBHOOK_NAME}\n    clientConfig:\n      caBundle: {ca_bundle}\n\
             ---\n\
             apiVersion: admissionregistration.k8s.io/v1\n\
             kind: ValidatingWebhookConfiguration\n\
             metadata:\n  name: {CONFIGURATION_NAME}\n\
             webhooks:\n  - name: {VALIDATING_WEBHOOK_NAME}\n    clientConfig:\n      caBundle: {ca_bundle}\n",
        );
        let io = |path: PathBuf| move |source| CertError::Io { path, source };
        let secret_path = dir.join(SECRET_FILE);
        write_file(&secret_path, &secret, 0o600).map_err(io(secret_path.clone()))?;
        let patch_path = dir.join(CA_BUNDLE_PATCH_FILE);
        write_file(&patch_path, &patch, 0o644).map_err(io(patch_path.clone()))?;
        Ok(())
    }
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_file(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // A file left by an interrupted run would keep its mode: start afresh.
    match fs::remove_file(&tmp) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    {
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let mut file = options.open(&tmp)?;
        // The umask can only narrow `mode`; a key must never be wider than asked either.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn generated_server_certificate_verifies_against_its_ca_for_every_name() {
        let names = dev_subject_alt_names();
        let generated = generate(&names, 1).unwrap();
        let ca = CertificateDer::from_pem_slice(generated.ca_pem.as_bytes()).unwrap();
        let leaf = CertificateDer::from_pem_slice(generated.cert_pem.as_bytes()).unwrap();

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder(roots.into())
            .build()
            .unwrap();
        for name in &names {
            let server_name = rustls_pki_types::ServerName::try_from(name.as_str()).unwrap();
            verifier
                .verify_server_cert(
                    &leaf,
                    &[],
                    &server_name,
                    &[],
                    rustls_pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = rustls_pki_types::ServerName::try_from("example.com").unwrap();
        assert!(
            verifier
                .verify_server_cert(&leaf, &[], &other, &[], rustls_pki_types::UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn kustomize_files_carry_the_same_certificates() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let generated = generate(&service_dns_names("svc", "ns"), 1).unwrap();
        generated.write_kustomize(dir.path(), "ns").unwrap();
        let secret: serde_json::Value =
            serde_saphyr::from_str(&fs::read_to_string(dir.path().join(SECRET_FILE)).unwrap())
                .unwrap();
        assert_eq!(secret["type"], "kubernetes.io/tls");
        assert_eq!(secret["metadata"]["namespace"], "ns");
        let decode = |v: &serde_json::Value| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap())
                    .unwrap(),
            )
            .unwrap()
        };
        assert_eq!(decode(&secret["data"]["tls.crt"]), generated.cert_pem);
        assert_eq!(decode(&secret["data"]["tls.key"]), generated.key_pem);
        assert_eq!(decode(&secret["data"]["ca.crt"]), generated.ca_pem);
        let patches: Vec<serde_json::Value> = serde_saphyr::from_multiple(
            &fs::read_to_string(dir.path().join(CA_BUNDLE_PATCH_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(patches.len(), 2);
        for (patch, webhook) in patches
            .iter()
            .zip([MUTATING_WEBHOOK_NAME, VALIDATING_WEBHOOK_NAME])
        {
            assert_eq!(patch["metadata"]["name"], CONFIGURATION_NAME);
            assert_eq!(patch["webhooks"][0]["name"], webhook);
            assert_eq!(
                decode(&patch["webhooks"][0]["clientConfig"]["caBundle"]),
                generated.ca_pem
            );
        }
    }

    #[test]
    fn written_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        // A world-readable leftover of an interrupted run must not lend the key its mode.
        let leftover = dir.path().join(format!("{KEY_FILE}.tmp"));
        fs::write(&leftover, "old").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&leftover, fs::Permissions::from_mode(0o644)).unwrap();
        }
        generate(&dev_subject_alt_names(), 1)
            .unwrap()
            .write_to(dir.path())
            .unwrap();
        for file in [CA_FILE, CERT_FILE, KEY_FILE] {
            assert!(dir.path().join(file).is_file(), "{file} missing");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "key is readable by others: {mode:o}");
        }
        assert!(!leftover.exists());
    }
}

//! What an `https://` sink must prove: the rustls client settings of the push. Its
//! certificate must chain to `export.pyroscope.ca-file` when that is set (a private CA:
//! those certificates only, as Prometheus's and Alloy's `ca_file` do), else to the host's
//! trust store (`/etc/ssl/certs`, or `SSL_CERT_FILE`/`SSL_CERT_DIR`), and name the URL's
//! host. rustls runs on its `ring` provider; TLS 1.2 and 1.3; ALPN `http/1.1` (the push is
//! one HTTP/1.1 request).
//!
//! Building the settings parses every trusted certificate, so they are kept between
//! pushes: the host's store is read once (a new system CA needs an agent restart), the
//! CA file again whenever its modification time changes (a rotated CA needs no reload).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::{ClientConfig, RootCertStore};

/// The client settings last built, and what they were built from.
#[derive(Default)]
pub struct TlsSettings {
    built: Option<(Source, Arc<ClientConfig>)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Source {
    System,
    CaFile(PathBuf, Option<SystemTime>),
}

impl TlsSettings {
    /// The settings for a push trusting `ca_file` (empty: the host's store).
    pub fn client_config(&mut self, ca_file: &Path) -> Result<Arc<ClientConfig>, String> {
        let source = if ca_file.as_os_str().is_empty() {
            Source::System
        } else {
            let modified = std::fs::metadata(ca_file)
                .and_then(|m| m.modified())
                .map_err(|e| format!("export.pyroscope.ca-file {}: {e}", ca_file.display()))?;
            Source::CaFile(ca_file.to_path_buf(), Some(modified))
        };
        if let Some((built_from, config)) = &self.built
            && *built_from == source
        {
            return Ok(config.clone());
        }
        let roots = match &source {
            Source::System => system_roots()?,
            Source::CaFile(path, _) => crate::config::read_ca_file(path)
                .map_err(|e| format!("export.pyroscope.ca-file: {e}"))?,
        };
        let config = client_config(roots)?;
        self.built = Some((source, config.clone()));
        Ok(config)
    }
}

fn client_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, String> {
    // rustls 0.23.48 marks `ring` deprecated because it has no post-quantum key exchange
    // (X25519MLKEM768); the other provider, aws-lc-rs, needs cmake and a C toolchain to
    // build. Classical X25519/P-256 is what this build negotiates.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The host's trust store; an error when it holds no usable certificate.
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(format!(
            "the host's trust store has no CA certificate{why}: install ca-certificates, or set export.pyroscope.ca-file"
        ));
    }
    Ok(roots)
}

/// A failed handshake said for the log: an untrusted certificate says which setting
/// decides what is trusted.
pub fn handshake_error(authority: &str, error: &std::io::Error, ca_file: &Path) -> String {
    let certificate = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        });
    if !certificate {
        return format!("TLS handshake with {authority} failed: {error}");
    }
    let trusted = if ca_file.as_os_str().is_empty() {
        "the host's trust store (set export.pyroscope.ca-file for a private CA)".to_string()
    } else {
        format!("export.pyroscope.ca-file {}", ca_file.display())
    };
    format!(
        "TLS handshake with {authority} failed: {error}; the certificate is checked against {trusted}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_is_an_error_naming_the_key() {
        let err = TlsSettings::default()
            .client_config(Path::new("/nonexistent/ca.pem"))
            .unwrap_err();
        assert!(err.starts_with("export.pyroscope.ca-file"), "{err}");
    }

    #[test]
    fn an_untrusted_certificate_names_the_setting_that_decides_trust() {
        let rustls_error =
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls_error);
        let said = handshake_error("sink:443", &io, Path::new("/etc/heapwarden/ca.pem"));
        assert!(said.contains("UnknownIssuer"), "{said}");
        assert!(
            said.contains("export.pyroscope.ca-file /etc/heapwarden/ca.pem"),
            "{said}"
        );
        let said = handshake_error("sink:443", &io, Path::new(""));
        assert!(said.contains("host's trust store"), "{said}");
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!handshake_error("sink:443", &reset, Path::new("")).contains("trust"));
    }
}

//! `[export.pyroscope]`: where the agent pushes every heap profile it stores (Grafana
//! Pyroscope's Connect push endpoint), how it labels them, and its checks — a bad URL, a
//! missing service name, an invalid static label or a `ca-file` without a certificate is
//! a config error naming its key. Reloadable: the exporter reads the section from the
//! live config. The section owns reading `ca-file` ([`read_ca_file`]): the check here and
//! the exporter's TLS client trust the same certificates.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::load::ConfigError;
use super::types::Toggle;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExportConfig {
    pub pyroscope: PyroscopeConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct PyroscopeConfig {
    /// Base URL of Pyroscope (or of a Grafana Alloy in front of it), http:// or
    /// https://; empty: off.
    pub url: String,
    /// Pyroscope's `service_name`; required when `url` is set.
    pub service_name: String,
    /// Static labels added to every profile (`instance` here overrides the host name).
    pub labels: BTreeMap<String, String>,
    /// `X-Scope-OrgID` when set.
    pub tenant: String,
    /// Bearer token file (0600, the agent's user's own); empty: no Authorization header.
    pub token_file: PathBuf,
    /// HTTP Basic auth user; with it the token file holds the password (Grafana Cloud:
    /// the stack's Pyroscope user and an access-policy token). Empty: Bearer.
    pub username: String,
    /// PEM file of the CA certificate(s) an https:// sink's certificate must chain to,
    /// instead of the host's trust store (a private CA); empty: the host's store.
    pub ca_file: PathBuf,
    /// One push, connect to last byte of the answer.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Also take a periodic profile of each worker this often ("off": never).
    pub every: Toggle<Every>,
    /// The Grafana (or Pyroscope UI) base URL links are built from; empty: no links.
    pub link_base: String,
}

impl Default for PyroscopeConfig {
    fn default() -> Self {
        PyroscopeConfig {
            url: String::new(),
            service_name: String::new(),
            labels: BTreeMap::new(),
            tenant: String::new(),
            token_file: PathBuf::new(),
            username: String::new(),
            ca_file: PathBuf::new(),
            timeout: Duration::from_secs(10),
            every: Toggle::Off,
            link_base: String::new(),
        }
    }
}

impl PyroscopeConfig {
    pub fn enabled(&self) -> bool {
        !self.url.trim().is_empty()
    }
}

/// A period written like "60s" (a [`Toggle`] so that "off" reads naturally).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Every(pub Duration);

impl FromStr for Every {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(Every)
            .map_err(|_| format!("expected a period like \"60s\", got {s:?}"))
    }
}

impl fmt::Display for Every {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// Labels the agent sets itself; a static label may not take their name (`instance`
/// may: it overrides the host name).
pub const RESERVED_LABELS: &[&str] = &[
    "service_name",
    "__name__",
    "worker",
    "runtime",
    "trigger",
    "rule",
    "release",
];
/// Labels the agent may add to a profile besides the static ones.
pub const AGENT_LABELS: usize = 8;
/// Pyroscope's default `max_label_names_per_series`.
pub const MAX_LABELS: usize = 30;
const MAX_LABEL_VALUE: usize = 2048;

/// Prometheus's (and Pyroscope's) label name grammar: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An `http://` or `https://host[:port][/path]` URL, or why not.
pub fn check_push_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url
        .trim()
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("{url:?} must start with http:// or https://"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("{url:?} must not have a query"));
    }
    Ok(())
}

/// The CA certificates of a PEM file (`export.pyroscope.ca-file`) as a trust store, or
/// why not: unreadable, no `CERTIFICATE` block, or a block that is not a usable CA
/// certificate.
pub fn read_ca_file(path: &Path) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let shown = path.display();
    let blocks = CertificateDer::pem_file_iter(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::Io(e) => format!("cannot read {shown}: {e}"),
        e => format!("{shown}: {e}"),
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for (n, block) in blocks.enumerate() {
        let cert = block.map_err(|e| format!("{shown} is not PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("{shown}: certificate {} is not usable: {e}", n + 1))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "{shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(roots)
}

pub(super) fn validate(c: &PyroscopeConfig, errors: &mut Vec<ConfigError>) {
    let link_ok = c.link_base.is_empty()
        || c.link_base.starts_with("http://")
        || c.link_base.starts_with("https://");
    if !link_ok {
        errors.push(ConfigError::new(
            "export.pyroscope.link-base",
            "must be an http:// or https:// URL (the Grafana or Pyroscope UI)",
        ));
    }
    if c.timeout < Duration::from_millis(100) || c.timeout > Duration::from_secs(300) {
        errors.push(ConfigError::new(
            "export.pyroscope.timeout",
            "must be between 100ms and 5m",
        ));
    }
    if let Toggle::On(Every(every)) = c.every
        && (every < Duration::from_secs(1) || every > Duration::from_secs(24 * 3600))
    {
        errors.push(ConfigError::new(
            "export.pyroscope.every",
            "must be between 1s and 1d, or \"off\"",
        ));
    }
    for (name, value) in &c.labels {
        let key = format!("export.pyroscope.labels.{name}");
        if !valid_label_name(name) || name.starts_with("__") {
            errors.push(ConfigError::new(
                &key,
                "a label name is letters, digits and _ (not first a digit, not starting with __)",
            ));
        } else if RESERVED_LABELS.contains(&name.as_str()) {
            errors.push(ConfigError::new(&key, "the agent sets this label itself"));
        } else if value.is_empty() || value.len() > MAX_LABEL_VALUE {
            errors.push(ConfigError::new(
                &key,
                format!("the value must be 1 to {MAX_LABEL_VALUE} bytes"),
            ));
        }
    }
    let room = MAX_LABELS - AGENT_LABELS;
    if c.labels.keys().filter(|k| *k != "instance").count() > room {
        errors.push(ConfigError::new(
            "export.pyroscope.labels",
            format!("at most {room} static labels (Pyroscope takes 30 per profile, the agent sets up to 8)"),
        ));
    }
    // Checked whenever set, export on or off: a reload that switches export on (or to
    // https) must not find it broken only then.
    if !c.ca_file.as_os_str().is_empty()
        && let Err(e) = read_ca_file(&c.ca_file)
    {
        errors.push(ConfigError::new("export.pyroscope.ca-file", e));
    }
    if !c.username.is_empty() && c.token_file.as_os_str().is_empty() {
        errors.push(ConfigError::new(
            "export.pyroscope.username",
            "needs export.pyroscope.token-file, which holds the password",
        ));
    } else if c.username.contains(':') || c.username.chars().any(char::is_control) {
        errors.push(ConfigError::new(
            "export.pyroscope.username",
            "a Basic auth user has no ':' and no control character",
        ));
    }
    if !c.enabled() {
        return;
    }
    if let Err(e) = check_push_url(&c.url) {
        errors.push(ConfigError::new("export.pyroscope.url", e));
    }
    if c.service_name.trim().is_empty() {
        errors.push(ConfigError::new(
            "export.pyroscope.service-name",
            "required when export.pyroscope.url is set (Pyroscope's service_name)",
        ));
    } else if c.service_name.len() > MAX_LABEL_VALUE {
        errors.push(ConfigError::new(
            "export.pyroscope.service-name",
            format!("at most {MAX_LABEL_VALUE} bytes"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::super::load::load;
    use super::*;

    fn errors_of(text: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        match load(Some(&path), Vec::new(), &[]) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| e.key).collect(),
        }
    }

    #[test]
    fn a_full_section_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[export.pyroscope]\nurl = \"http://127.0.0.1:4040\"\nservice-name = \"shop\"\n\
             labels = { env = \"prod\", instance = \"eu-1\" }\ntenant = \"t\"\n\
             timeout = \"2s\"\nevery = \"60s\"\nlink-base = \"https://grafana.example\"\n",
        )
        .unwrap();
        let c = load(Some(&path), Vec::new(), &[]).unwrap().export.pyroscope;
        assert!(c.enabled());
        assert_eq!(c.labels.len(), 2);
        assert_eq!(c.every, Toggle::On(Every(Duration::from_secs(60))));
        assert_eq!(c.timeout, Duration::from_secs(2));
    }

    #[test]
    fn each_mistake_names_its_key() {
        let section = |body: &str| format!("[export.pyroscope]\n{body}\n");
        assert_eq!(
            errors_of(&section("url = \"http://x:4040\"")),
            vec!["export.pyroscope.service-name"]
        );
        assert_eq!(
            errors_of(&section("url = \"ftp://x\"\nservice-name = \"s\"")),
            vec!["export.pyroscope.url"]
        );
        assert!(errors_of(&section("url = \"https://x\"\nservice-name = \"s\"")).is_empty());
        assert_eq!(
            errors_of(&section("username = \"1234\"")),
            vec!["export.pyroscope.username"]
        );
        assert_eq!(
            errors_of(&section("username = \"a:b\"\ntoken-file = \"t\"")),
            vec!["export.pyroscope.username"]
        );
        // Grafana Cloud's numeric user, written bare.
        assert!(errors_of(&section("username = 123456\ntoken-file = \"t\"")).is_empty());
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate\n").unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for ca in [dir.path().join("missing.pem"), not_pem, garbage] {
            assert_eq!(
                errors_of(&section(&format!(
                    "url = \"https://x\"\nservice-name = \"s\"\nca-file = {:?}",
                    ca.display().to_string()
                ))),
                vec!["export.pyroscope.ca-file"],
                "{}",
                ca.display()
            );
        }
        assert_eq!(
            errors_of(&section("url = \"not a url\"\nservice-name = \"s\"")),
            vec!["export.pyroscope.url"]
        );
        assert_eq!(
            errors_of(&section("urll = \"http://x\"")),
            vec!["export.pyroscope.urll"]
        );
        assert_eq!(
            errors_of(&section(
                "labels = { \"bad-name\" = \"v\", worker = \"9\" }"
            )),
            vec![
                "export.pyroscope.labels.bad-name",
                "export.pyroscope.labels.worker"
            ]
        );
        assert_eq!(
            errors_of(&section("every = \"0s\"")),
            vec!["export.pyroscope.every"]
        );
        assert_eq!(
            errors_of(&section("every = \"sometimes\"")),
            vec!["export.pyroscope.every"]
        );
        assert_eq!(
            errors_of(&section("link-base = \"grafana\"")),
            vec!["export.pyroscope.link-base"]
        );
        let many: Vec<String> = (0..23).map(|i| format!("l{i} = \"v\"")).collect();
        assert_eq!(
            errors_of(&section(&format!("labels = {{ {} }}", many.join(", ")))),
            vec!["export.pyroscope.labels"]
        );
        assert!(errors_of(&section("")).is_empty());
    }
}

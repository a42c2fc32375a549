//! Redaction where the demo logs request data: header values and JSON payload fields whose
//! names are sensitive become `"[REDACTED]"` before they reach a log record, so a secret
//! never enters the log buffer. The keys are the agent's `log.redact` (passed in the
//! worker context) or the same defaults; matching is case-insensitive, `_` and `-` alike.
//!
//! Only the request log and the job log carry outside data; every other record holds
//! values the demo chose, so no drain has to inspect every key of every record.

use std::sync::Arc;

use heapwarden_probes::DEFAULT_LOG_REDACT;
use slog::{Key, Record, SerdeValue, Serializer};

pub const REDACTED: &str = "[REDACTED]";
/// The sensitive names, normalised (lower case, `-` for `_`). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Redactor {
    keys: Arc<[String]>,
}

impl Redactor {
    /// `keys`: the agent's `log.redact`; None: its defaults.
    pub fn new(keys: Option<&[String]>) -> Redactor {
        let keys = match keys {
            Some(keys) => keys.iter().map(|k| normalise(k)).collect(),
            None => DEFAULT_LOG_REDACT.iter().map(|k| normalise(k)).collect(),
        };
        Redactor { keys }
    }

    /// Compares without allocating: runs for every logged header.
    pub fn is_sensitive(&self, name: &str) -> bool {
        self.keys.iter().any(|k| {
            k.len() == name.len()
                && k.bytes().zip(name.bytes()).all(|(want, got)| {
                    want == if got == b'_' {
                        b'-'
                    } else {
                        got.to_ascii_lowercase()
                    }
                })
        })
    }

    /// `value` with every sensitive field, at any depth, redacted: for logging.
    pub fn json(&self, mut value: serde_json::Value) -> LoggedJson {
        self.redact(&mut value);
        LoggedJson(value)
    }

    fn redact(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if self.is_sensitive(k) {
                        *v = serde_json::Value::String(REDACTED.into());
                    } else {
                        self.redact(v);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.redact(v)),
            _ => {}
        }
    }
}

fn normalise(key: &str) -> String {
    key.to_ascii_lowercase().replace('_', "-")
}

/// A JSON value in a log record, serialised as nested JSON (not as a string); built by
/// [`Redactor::json`], so it holds nothing sensitive.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(transparent)]
pub struct LoggedJson(serde_json::Value);

impl slog::Value for LoggedJson {
    fn serialize(&self, _: &Record, key: Key, serializer: &mut dyn Serializer) -> slog::Result {
        serializer.emit_serde(key, self)
    }
}

impl SerdeValue for LoggedJson {
    fn as_serde(&self) -> &dyn erased_serde::Serialize {
        self
    }

    fn to_sendable(&self) -> Box<dyn SerdeValue + Send + 'static> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_match_whatever_their_case_and_separator() {
        let redactor = Redactor::new(None);
        for name in [
            "Authorization",
            "SET_COOKIE",
            "set-cookie",
            "api-key",
            "Token",
        ] {
            assert!(redactor.is_sensitive(name), "{name}");
        }
        for name in ["accept", "tokens", "x-token", ""] {
            assert!(!redactor.is_sensitive(name), "{name}");
        }
        let custom = Redactor::new(Some(&["X_Session".to_string()]));
        assert!(custom.is_sensitive("x-session"));
        assert!(!custom.is_sensitive("authorization"));
    }

    #[test]
    fn nested_fields_are_redacted_and_the_rest_kept() {
        let logged = Redactor::new(None).json(json!({
            "password": "hunter2",
            "rounds": 3,
            "metadata": {"token": "t0p", "list": [{"secret": 1}, "plain"]},
        }));
        assert_eq!(
            serde_json::to_value(&logged).expect("serialises"),
            json!({
                "password": REDACTED,
                "rounds": 3,
                "metadata": {"token": REDACTED, "list": [{"secret": REDACTED}, "plain"]},
            })
        );
    }
}

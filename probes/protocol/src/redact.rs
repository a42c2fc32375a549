//! Which log keys are sensitive (`log.redact`), and redacting them in JSON: one matcher
//! for the agent's log drain and for workers that log request data (the demo), so both
//! sides of the `HEAPWARDEN_LOG_REDACT` contract agree on what a key name matches —
//! case-insensitive, `_` and `-` alike (`Set-Cookie`, `set_cookie`, `SET-COOKIE`). With
//! the `slog` feature, [`Nested`] puts such JSON (or any serde value) into a log record.

use std::sync::Arc;

use crate::DEFAULT_LOG_REDACT;

/// What a sensitive value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// The sensitive key names, normalised (lower case, `-` for `_`). Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedactKeys {
    keys: Arc<[String]>,
}

impl RedactKeys {
    pub fn new<S: AsRef<str>>(keys: &[S]) -> RedactKeys {
        RedactKeys {
            keys: keys.iter().map(|k| normalise(k.as_ref())).collect(),
        }
    }

    /// The agent's `log.redact` default ([`DEFAULT_LOG_REDACT`]).
    pub fn defaults() -> RedactKeys {
        RedactKeys::new(DEFAULT_LOG_REDACT)
    }

    /// Compares against the normalised keys without allocating: this runs for every key
    /// of every record.
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

    /// Replaces the value of every sensitive field of `value`, at any depth.
    pub fn redact_json(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if self.is_sensitive(k) {
                        *v = serde_json::Value::String(REDACTED.into());
                    } else {
                        self.redact_json(v);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.redact_json(v)),
            _ => {}
        }
    }
}

/// A serde value logged as nested JSON (an object in the record, not a string) by slog's
/// `nested-values` drains: redacted JSON ([`RedactKeys::redact_json`]), or a view of the
/// caller's own data. Cheap to clone values (an `Arc`) keep a record cheap to hand to a
/// log thread.
#[cfg(feature = "slog")]
#[derive(Debug, Clone, serde::Serialize)]
#[serde(transparent)]
pub struct Nested<T>(pub T);

#[cfg(feature = "slog")]
impl<T: serde::Serialize + Clone + Send + 'static> slog::Value for Nested<T> {
    fn serialize(
        &self,
        _: &slog::Record,
        key: slog::Key,
        serializer: &mut dyn slog::Serializer,
    ) -> slog::Result {
        serializer.emit_serde(key, self)
    }
}

#[cfg(feature = "slog")]
impl<T: serde::Serialize + Clone + Send + 'static> slog::SerdeValue for Nested<T> {
    fn as_serde(&self) -> &dyn erased_serde::Serialize {
        self
    }

    fn to_sendable(&self) -> Box<dyn slog::SerdeValue + Send + 'static> {
        Box::new(self.clone())
    }
}

fn normalise(key: &str) -> String {
    key.to_ascii_lowercase().replace('_', "-")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_match_whatever_their_case_and_separator() {
        let keys = RedactKeys::defaults();
        for name in [
            "Authorization",
            "SET_COOKIE",
            "set-cookie",
            "api-key",
            "Token",
        ] {
            assert!(keys.is_sensitive(name), "{name}");
        }
        for name in ["accept", "tokens", "x-token", ""] {
            assert!(!keys.is_sensitive(name), "{name}");
        }
        let custom = RedactKeys::new(&["X_Session"]);
        assert!(custom.is_sensitive("x-session"));
        assert!(!custom.is_sensitive("authorization"));
    }

    #[test]
    fn nested_fields_are_redacted_and_the_rest_kept() {
        let mut value = json!({
            "password": "hunter2",
            "rounds": 3,
            "metadata": {"token": "t0p", "list": [{"secret": 1}, "plain"]},
        });
        RedactKeys::defaults().redact_json(&mut value);
        assert_eq!(
            value,
            json!({
                "password": REDACTED,
                "rounds": 3,
                "metadata": {"token": REDACTED, "list": [{"secret": REDACTED}, "plain"]},
            })
        );
    }
}

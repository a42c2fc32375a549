//! Redaction where the demo logs request data: header values and JSON payload fields whose
//! names are sensitive become `"[REDACTED]"` before they reach a log record, so a secret
//! never enters the log buffer. The keys are the agent's `log.redact` (passed in the
//! worker context) or the same defaults; matching is case-insensitive, `_` and `-` alike.
//!
//! Only the request log and the job log carry outside data; every other record holds
//! values the demo chose, so no drain has to inspect every key of every record.

pub use heapwarden_probes::REDACTED;
use heapwarden_probes::{Nested, RedactKeys};

/// The sensitive names (the matcher is the agent's own, `RedactKeys`). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Redactor {
    keys: RedactKeys,
}

impl Redactor {
    /// `keys`: the agent's `log.redact`; None: its defaults.
    pub fn new(keys: Option<&[String]>) -> Redactor {
        Redactor {
            keys: keys.map_or_else(RedactKeys::defaults, RedactKeys::new),
        }
    }

    /// Compares without allocating: runs for every logged header.
    pub fn is_sensitive(&self, name: &str) -> bool {
        self.keys.is_sensitive(name)
    }

    /// `value` with every sensitive field, at any depth, redacted: for logging, as nested
    /// JSON (as the agent logs it).
    pub fn json(&self, mut value: serde_json::Value) -> Nested<serde_json::Value> {
        self.keys.redact_json(&mut value);
        Nested(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

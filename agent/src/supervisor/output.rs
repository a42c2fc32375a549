//! Worker stdout/stderr, captured line by line and re-emitted as agent log records with
//! `worker`, `pid` and `stream`. A line that is itself a JSON object keeps its structure
//! (its `msg` and `level` become the record's, the rest goes under `fields`).

use futures_util::StreamExt;
use slog::{Logger, error, info, warn};
use tokio::io::AsyncRead;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use crate::log::RedactedJson;

/// Longer lines are cut: a worker printing without newlines must not grow our memory.
const MAX_LINE: usize = 64 * 1024;

pub fn capture<R: AsyncRead + Unpin + Send + 'static>(
    reader: R,
    stream: &'static str,
    log: Logger,
) {
    let log = log.new(slog::o!("stream" => stream));
    tokio::spawn(async move {
        let mut lines = FramedRead::new(reader, LinesCodec::new_with_max_length(MAX_LINE));
        while let Some(line) = lines.next().await {
            match line {
                Ok(line) => relay(&log, &line),
                Err(LinesCodecError::MaxLineLengthExceeded) => {
                    warn!(log, "A worker output line exceeded the maximum length and was cut."; "max_bytes" => MAX_LINE);
                }
                Err(LinesCodecError::Io(_)) => break,
            }
        }
    });
}

fn relay(log: &Logger, line: &str) {
    if line.starts_with('{')
        && let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_str(line)
    {
        let msg = match fields.remove("msg") {
            Some(serde_json::Value::String(s)) => s,
            Some(other) => other.to_string(),
            None => String::new(),
        };
        let level = fields.remove("level");
        fields.remove("ts");
        // The agent's context already says which worker and pid this is.
        fields.remove("worker");
        fields.remove("pid");
        let fields = RedactedJson(serde_json::Value::Object(fields));
        match level.as_ref().and_then(|l| l.as_str()) {
            Some("ERRO" | "ERROR" | "CRIT" | "CRITICAL") => {
                error!(log, "{}", msg; "fields" => fields)
            }
            Some("WARN" | "WARNING") => warn!(log, "{}", msg; "fields" => fields),
            _ => info!(log, "{}", msg; "fields" => fields),
        }
        return;
    }
    info!(log, "{}", line);
}

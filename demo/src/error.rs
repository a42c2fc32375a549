//! `ApiError`: every failure the demo answers with, as a JSON body
//! `{"error": "...", "status": N}`; bad input is 4xx, overload 503, never a 500.

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use heapwarden_probes::Causes;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::compute::ComputeError;
use super::db::DbError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after_secs: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unavailable(message: impl Into<String>, retry_after_secs: u32) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            retry_after_secs: Some(retry_after_secs),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": self.message, "status": self.status.as_u16()}));
        let mut response = (self.status, body).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<DbError> for ApiError {
    fn from(error: DbError) -> ApiError {
        if error.is_pool_timeout() {
            ApiError::unavailable("every database connection is busy; retry shortly", 1)
        } else {
            ApiError::unavailable(
                format!("the database is unavailable: {}", Causes(&error)),
                2,
            )
        }
    }
}

impl From<ComputeError> for ApiError {
    fn from(error: ComputeError) -> ApiError {
        ApiError::unavailable(Causes(&error).to_string(), 1)
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::bad_request(format!("bad path parameter: {}", rejection.body_text()))
    }
}

/// A request body read whole within [`BODY_READ_TIMEOUT`]; past it the answer is 408
/// and the connection is closed, so a client trickling its body cannot hold a connection
/// (and a task) for as long as it likes.
pub struct TimedBytes(pub Result<Bytes, BytesRejection>);

/// How long a request body may take to arrive, from the end of its head.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl<S: Send + Sync> axum::extract::FromRequest<S> for TimedBytes {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Response> {
        match tokio::time::timeout(BODY_READ_TIMEOUT, Bytes::from_request(req, state)).await {
            Ok(body) => Ok(TimedBytes(body)),
            Err(_) => {
                let mut response = ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive in time",
                )
                .into_response();
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                Err(response)
            }
        }
    }
}

/// Parses a JSON body whatever its content type: oversized bodies are 413 (the body
/// limit), anything unparsable or of the wrong shape is 400.
pub fn parse_json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        let status = rejection.status();
        let status = if status.is_client_error() {
            status
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, rejection.body_text())
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|error| ApiError::bad_request(format!("malformed JSON body: {error}")))
}

/// Parses a path id; the router's own rejection text is not JSON, so it is rewrapped.
pub fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request(format!("id must be an integer, got {raw:?}")))
}

#[cfg(test)]
mod tests {
    use heapwarden_probes::Causes;

    use super::{ComputeError, DbError};
    use crate::server::ListenError;

    /// Each error names its cause once when logged with its causes (the demo's log sites
    /// and API answers print errors through `Causes`, as the agent does).
    #[test]
    fn every_cause_is_printed_once() {
        let io = || std::io::Error::other("no room left");
        let cases: Vec<(Box<dyn std::error::Error>, &str)> = vec![
            (
                Box::new(DbError::Query {
                    doing: "taking a job",
                    source: sqlx::Error::PoolClosed,
                }),
                "taking a job failed: ",
            ),
            (
                Box::new(DbError::Open {
                    url: "sqlite::memory:".into(),
                    source: sqlx::Error::PoolClosed,
                }),
                "cannot open the database sqlite::memory:: ",
            ),
            (
                Box::new(ComputeError::Spawn {
                    index: 2,
                    source: io(),
                }),
                "cannot start compute thread 2: ",
            ),
            (
                Box::new(ListenError::Adopt(io())),
                "cannot use the inherited listening socket: ",
            ),
            (
                Box::new(ListenError::Bind {
                    addr: "127.0.0.1:1".parse().unwrap(),
                    source: io(),
                }),
                "cannot listen on 127.0.0.1:1: ",
            ),
        ];
        for (error, head) in cases {
            let line = Causes(error.as_ref()).to_string();
            let cause = error.source().expect("a source").to_string();
            assert!(line.starts_with(head), "{line}");
            assert_eq!(line.matches(cause.as_str()).count(), 1, "{line}");
            assert!(line.ends_with(&cause), "{line}");
        }
    }
}

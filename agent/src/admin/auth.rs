//! The admin API's bearer token: loading (or creating, on first start) the token file —
//! which must belong to the agent's user, not be a symbolic link, and not be readable by
//! group or others — and the middleware that checks `Authorization: Bearer <token>` (the
//! scheme case-insensitive, RFC 7235) in constant time.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Name of the token file created in the state directory when none is configured.
pub const DEFAULT_TOKEN_FILE: &str = "admin-token";
const TOKEN_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token file {path} is readable by group or others (mode {mode:04o}); run `chmod 600 {path}`", path = path.display())]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("token file")]
    Owned(#[source] crate::owned::OwnedError),
    #[error("token file {path} is empty", path = path.display())]
    Empty { path: PathBuf },
    #[error("could not read token file {path}", path = path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not create token file {path}", path = path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The token the API requires. `Debug` does not print it.
#[derive(Clone)]
pub struct AdminToken(Arc<str>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    pub fn new(token: impl Into<Arc<str>>) -> Self {
        AdminToken(token.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares without an early exit, so the time taken says nothing about how many
    /// leading bytes matched.
    pub fn matches(&self, offered: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), offered.as_bytes());
        let mut diff = u8::from(a.len() != b.len());
        for (i, x) in a.iter().enumerate() {
            diff |= x ^ b.get(i).copied().unwrap_or(0);
        }
        std::hint::black_box(diff) == 0
    }
}

/// Reads the token from `token_file`, or with an empty path from
/// `<state_dir>/admin-token`, creating that file (mode 0600, 32 random bytes as hex) when
/// it does not exist yet. A configured file is never created: a typo must not silently
/// mint a token nobody knows.
pub fn load_or_create_token(token_file: &Path, state_dir: &Path) -> Result<String, AuthError> {
    if !token_file.as_os_str().is_empty() {
        return read_token(token_file);
    }
    let path = state_dir.join(DEFAULT_TOKEN_FILE);
    match read_token(&path) {
        Err(AuthError::Owned(e)) if e.is_not_found() => create_token(&path),
        other => other,
    }
}

fn read_token(path: &Path) -> Result<String, AuthError> {
    let read_err = |source| AuthError::Read {
        path: path.to_path_buf(),
        source,
    };
    let (mut file, meta) = crate::owned::open_file(path).map_err(AuthError::Owned)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(AuthError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read_err)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(AuthError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

fn create_token(path: &Path) -> Result<String, AuthError> {
    let create_err = |source| AuthError::Create {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(create_err)?;
    }
    let mut random = [0u8; TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(create_err)?;
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match file {
        Ok(mut file) => {
            file.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(create_err)?;
            Ok(token)
        }
        // Another agent start won the race; use its token.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_token(path),
        Err(e) => Err(create_err(e)),
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is matched without
/// regard to case (RFC 7235, section 2.1).
pub fn offered_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Middleware: 401 with a JSON body unless the request carries the bearer token.
pub async fn require_token(
    State(token): State<AdminToken>,
    request: Request,
    next: Next,
) -> Response {
    let offered = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(offered_token);
    match offered {
        Some(offered) if token.matches(offered) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(serde_json::json!({"error": "unauthorized", "reason": "a valid bearer token is required"})),
        )
            .into_response(),
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;

use std::os::unix::fs::PermissionsExt;

use super::*;

#[test]
fn a_missing_default_token_is_created_private_and_then_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let token = load_or_create_token(Path::new(""), &state).expect("created");
    assert_eq!(token.len(), 2 * TOKEN_BYTES);
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
    let path = state.join(DEFAULT_TOKEN_FILE);
    let mode = std::fs::metadata(&path).expect("file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        load_or_create_token(Path::new(""), &state).expect("reread"),
        token
    );
}

#[test]
fn a_group_readable_token_file_is_refused_with_its_path_and_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("token");
    std::fs::write(&path, "secret\n").expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let err = load_or_create_token(&path, dir.path()).expect_err("too open");
    let text = err.to_string();
    assert!(
        matches!(err, AuthError::TooOpen { mode: 0o640, .. }),
        "{text}"
    );
    assert!(
        text.contains(&path.display().to_string()) && text.contains("0640"),
        "{text}"
    );
}

#[test]
fn a_configured_file_is_read_trimmed_and_never_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("token");
    let missing = load_or_create_token(&path, dir.path()).expect_err("missing");
    assert!(matches!(missing, AuthError::Read { .. }), "{missing}");
    assert!(!path.exists());
    std::fs::write(&path, "  s3cret \n").expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(
        load_or_create_token(&path, dir.path()).expect("read"),
        "s3cret"
    );
    std::fs::write(&path, "\n").expect("write");
    assert!(matches!(
        load_or_create_token(&path, dir.path()),
        Err(AuthError::Empty { .. })
    ));
}

#[test]
fn token_comparison_rejects_prefixes_and_extensions() {
    let token = AdminToken::new("abcdef");
    assert!(token.matches("abcdef"));
    assert!(!token.matches("abcde"));
    assert!(!token.matches("abcdefg"));
    assert!(!token.matches("abcdeF"));
    assert!(!token.matches(""));
    assert!(!format!("{token:?}").contains("abc"));
}

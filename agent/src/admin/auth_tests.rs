use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::log::causes;
use crate::owned::OwnedError;

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
    assert!(
        matches!(missing, AuthError::Owned(ref e) if e.is_not_found()),
        "{missing}"
    );
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

/// Runs `f` on a file owned by `nobody` (the tests run as root, as CI does).
fn chown_nobody(path: &Path) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "ownership tests need root (CI runs as root)"
    );
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("passwd")
        .expect("user nobody");
    nix::unistd::chown(path, Some(nobody.uid), Some(nobody.gid)).expect("chown");
}

#[test]
fn a_token_file_owned_by_another_user_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("token");
    std::fs::write(&path, "theirs\n").expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    chown_nobody(&path);
    let err = load_or_create_token(&path, dir.path()).expect_err("foreign owner");
    assert!(
        matches!(err, AuthError::Owned(OwnedError::NotOwned { .. })),
        "{err}"
    );
    assert!(
        causes(&err).contains("not by the agent's user"),
        "{}",
        causes(&err)
    );
    // The generated token in a state directory is checked the same way.
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    let default = state.join(DEFAULT_TOKEN_FILE);
    std::fs::write(&default, "theirs\n").expect("write");
    std::fs::set_permissions(&default, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    chown_nobody(&default);
    let err = load_or_create_token(Path::new(""), &state).expect_err("foreign owner");
    assert!(
        matches!(err, AuthError::Owned(OwnedError::NotOwned { .. })),
        "{err}"
    );
}

#[test]
fn a_token_file_that_is_a_symlink_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("real");
    std::fs::write(&target, "secret\n").expect("write");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let link = dir.path().join("token");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let err = load_or_create_token(&link, dir.path()).expect_err("symlink");
    assert!(
        matches!(err, AuthError::Owned(OwnedError::Symlink { .. })),
        "{err}"
    );
    assert!(causes(&err).contains("symbolic link"), "{}", causes(&err));
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let token = AdminToken::new("s3cret");
    for header in [
        "Bearer s3cret",
        "bearer s3cret",
        "BEARER s3cret",
        "bEaReR  s3cret",
    ] {
        assert_eq!(offered_token(header), Some("s3cret"), "{header}");
    }
    for header in ["Basic s3cret", "Bearers3cret", "s3cret", "Bearer"] {
        assert!(
            offered_token(header).is_none_or(|t| !token.matches(t)),
            "{header}"
        );
    }
}

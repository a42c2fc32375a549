//! End-to-end tests of what the agent accepts from the file system and from admin
//! clients (issue 11, items 11 and 12): a state directory or token file owned by another
//! user is refused (the tests run as root, as CI does, and hand files to `nobody`), the
//! bearer scheme is matched case-insensitively, and a burst of manual heap dumps is
//! bounded (one per slot, two at once, 429 with `Retry-After` beyond).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use heapwarden_tests::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn chown_nobody(path: &Path) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests hand files to `nobody` and need root (CI runs as root)"
    );
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("passwd")
        .expect("user nobody");
    nix::unistd::chown(path, Some(nobody.uid), Some(nobody.gid)).expect("chown");
}

fn config(admin: SocketAddr, extra_admin: &str) -> String {
    format!(
        "[admin]\nlisten = \"{admin}\"\n{extra_admin}\n[pool]\nworkers = 1\n\
listen = \"127.0.0.1:{}\"\ncommand = [{:?}]\n",
        free_port(),
        bin("probe-worker").display().to_string()
    )
}

fn admin_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().expect("addr")
}

/// The agent must exit non-zero with `why` in its output.
fn refuses(mut agent: Proc, why: &str) {
    let status = agent.wait_exit(SECS(20));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the agent ran ({status:?}); log:\n{}",
        agent.logs.raw()
    );
    assert!(agent.logs.raw().contains(why), "log:\n{}", agent.logs.raw());
}

#[test]
fn a_state_dir_and_token_of_another_user_are_refused() {
    let _guard = TimeoutGuard::new("foreign_state_dir", SECS(60));
    let sandbox = Sandbox::new();
    let state = sandbox.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    let token = state.join("admin-token");
    std::fs::write(&token, "chosen-by-nobody\n").expect("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    chown_nobody(&token);
    chown_nobody(&state);
    refuses(
        sandbox.agent(&config(admin_addr(), "")),
        "not by the agent's user",
    );

    // A configured token file of another user, in a state directory that is ours.
    let sandbox = Sandbox::new();
    let token = sandbox.write("token", "chosen-by-nobody\n");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    chown_nobody(&token);
    let extra = format!("token-file = {:?}", token.display().to_string());
    refuses(
        sandbox.agent(&config(admin_addr(), &extra)),
        "not by the agent's user",
    );
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let _guard = TimeoutGuard::new("bearer_case", SECS(60));
    let sandbox = Sandbox::new();
    let admin = admin_addr();
    let agent = sandbox.agent(&config(admin, ""));
    agent
        .logs
        .wait_for(SECS(20), "all ready", msg("Every worker is ready."));
    let token = std::fs::read_to_string(sandbox.path().join("state/admin-token")).expect("token");
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let (status, body) = raw_get(admin, &format!("Authorization: {scheme} {}", token.trim()));
        assert_eq!(status, 200, "{scheme}: {body}");
    }
    let (status, _) = raw_get(admin, "Authorization: Basic x");
    assert_eq!(status, 401);
}

fn raw_get(addr: SocketAddr, auth_line: &str) -> (u16, String) {
    raw_request(addr, "GET", "/api/v1/workers", auth_line)
}

/// One request on a fresh connection; (status, the whole response with its headers).
fn raw_request(addr: SocketAddr, method: &str, path: &str, auth_line: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, SECS(5)).expect("connect");
    stream.set_read_timeout(Some(SECS(30))).expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth_line}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// Converter helpers (`heapwarden __convert-profile`) running now.
fn converter_helpers() -> usize {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| c.windows(17).any(|w| w == b"__convert-profile"))
        })
        .count()
}

#[test]
fn a_burst_of_manual_dumps_is_bounded() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let _guard = TimeoutGuard::new("dump_burst", SECS(120));
    let sandbox = Sandbox::new();
    let admin = admin_addr();
    let agent = sandbox.agent(&config(admin, "").replace("workers = 1", "workers = 2"));
    agent
        .logs
        .wait_for(SECS(20), "all ready", msg("Every worker is ready."));
    let token = std::fs::read_to_string(sandbox.path().join("state/admin-token")).expect("token");
    let auth = format!("Authorization: Bearer {}", token.trim());
    let done = Arc::new(AtomicBool::new(false));
    let most_helpers = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (done, most) = (done.clone(), most_helpers.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                most.fetch_max(converter_helpers(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let clients: Vec<_> = (0..30)
        .map(|i| {
            let auth = auth.clone();
            std::thread::spawn(move || {
                raw_request(
                    admin,
                    "POST",
                    &format!("/api/v1/workers/{}/profile", i % 2),
                    &auth,
                )
            })
        })
        .collect();
    let answers: Vec<(u16, String)> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    done.store(true, Ordering::Relaxed);
    watcher.join().expect("watcher");
    let written = answers.iter().filter(|(s, _)| *s == 201).count();
    let refused: Vec<&String> = answers
        .iter()
        .filter(|(s, _)| *s == 429)
        .map(|(_, r)| r)
        .collect();
    assert_eq!(
        written + refused.len(),
        30,
        "only 201 or 429: {:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    assert!(written >= 2, "{written} written");
    assert!(!refused.is_empty(), "30 parallel dumps were all accepted");
    assert!(
        refused
            .iter()
            .all(|r| r.to_ascii_lowercase().contains("retry-after: 1")),
        "{refused:?}"
    );
    let most = most_helpers.load(Ordering::Relaxed);
    eprintln!(
        "30 parallel dumps: {written} written, {} refused (429), at most {most} helpers at once",
        refused.len()
    );
    assert!(most <= 2, "{most} converter helpers at once");
}

//! `take_inherited_socket` in real child processes, started the way systemd and the
//! agent's trampoline start them (`LISTEN_PID` = the child's own pid, the socket on fd 3):
//! the socket is taken once, with its name and close-on-exec; a socket meant for another
//! process, two sockets, or a fd 3 that is not a socket are told apart.

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use heapwarden_probes::take_inherited_socket;

const CHILD_ENV: &str = "HEAPWARDEN_PROBES_LISTEN_CHILD";

/// Runs only as the child of the tests below: prints what it was given.
#[test]
fn child_reports_the_inherited_socket() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    match take_inherited_socket() {
        Ok(Some(socket)) => {
            let listener = TcpListener::from(socket.fd);
            let port = listener.local_addr().expect("a bound socket").port();
            let fd3_open = std::fs::read_link("/proc/self/fd/3").is_ok();
            let again = take_inherited_socket().map(|s| s.is_some());
            println!(
                "outcome=socket name={} port={port} fd3_open={fd3_open} again_is_error={}",
                socket.name,
                again.is_err()
            );
        }
        Ok(None) => println!("outcome=none"),
        Err(error) => println!("outcome=error {error}"),
    }
}

/// Starts the child with `stdin` as its fd 3 (and 4) and `LISTEN_PID` set by `pid`
/// (shell text).
fn run_child(stdin: Stdio, pid: &str, fds: &str) -> String {
    let exe = std::env::current_exe().expect("test executable");
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 3<&0 4<&0 0</dev/null; LISTEN_PID={pid} LISTEN_FDS={fds} LISTEN_FDNAMES=web exec \"$0\" \"$@\""
        ))
        .arg(exe)
        .args(["child_reports_the_inherited_socket", "--exact", "--nocapture"])
        .env(CHILD_ENV, "1")
        .stdin(stdin)
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "child failed: {stdout}");
    stdout
        .lines()
        .find(|l| l.starts_with("outcome="))
        .unwrap_or_else(|| panic!("no outcome in {stdout}"))
        .to_string()
}

fn listener() -> (Stdio, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    (Stdio::from(OwnedFd::from(listener)), port)
}

#[test]
fn the_socket_for_this_process_is_taken_once_with_its_name() {
    let (stdin, port) = listener();
    let outcome = run_child(stdin, "$$", "1");
    assert_eq!(
        outcome,
        format!("outcome=socket name=web port={port} fd3_open=false again_is_error=true")
    );
}

#[test]
fn a_socket_meant_for_another_process_is_left_alone() {
    let (stdin, _) = listener();
    assert_eq!(run_child(stdin, "1", "1"), "outcome=none");
}

#[test]
fn two_sockets_or_a_file_on_fd_3_are_errors() {
    let (stdin, _) = listener();
    let two = run_child(stdin, "$$", "2");
    assert!(two.contains("exactly one"), "{two}");
    let file = std::fs::File::open("/dev/null").expect("open /dev/null");
    let not_socket = run_child(Stdio::from(file), "$$", "1");
    assert!(not_socket.contains("not a socket"), "{not_socket}");
}

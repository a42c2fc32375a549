//! Running the external tools the production tests drive (systemd-analyze, promtool,
//! go): with a deadline, and a failure that names the Debian package when one is missing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

pub const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives inside the workspace")
        .to_path_buf()
}

/// Runs a tool with a deadline. A tool that is not installed fails the test with the
/// Debian package to install; one that hangs is killed.
pub fn run_tool(mut cmd: Command, debian_package: &str) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = match cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{program}` is not installed: install the Debian package `{debian_package}` \
             (apt-get install {debian_package})"
        ),
        Err(err) => panic!("cannot start `{program}`: {err}"),
    };
    // Drain both pipes on threads so a chatty tool cannot block on a full pipe.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout is piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr is piped")));
    let Some(status) = crate::try_poll(TOOL_TIMEOUT, || child.try_wait().ok().flatten()) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("`{program}` did not finish within {TOOL_TIMEOUT:?}");
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}",
        output.status,
        text(output)
    );
}

/// Builds the package from the debug binaries the test run already built (one build at
/// a time: the script stages its files in packaging/generated/).
pub fn build_deb(out: &Path) -> PathBuf {
    let lock = std::fs::File::create(std::env::temp_dir().join("heapwarden-package-deb.lock"))
        .expect("lock file");
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock the package build");
    let mut script = Command::new(repo_root().join("scripts/package-deb"));
    script
        .args(["--profile", "dev", "--no-build", "--fast", "--output"])
        .arg(out);
    let output = script.output().expect("run scripts/package-deb");
    assert_success("scripts/package-deb", &output);
    std::fs::read_dir(out)
        .expect("package dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb was written")
}

/// `promtool check metrics` on an exposition page: its exit code and everything it
/// printed. The page is written from its own thread while promtool's output is read, so
/// a large page cannot fill both pipes and hang.
pub fn promtool_check_metrics(page: &str) -> (Option<i32>, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`)");
    let mut stdin = child.stdin.take().expect("stdin");
    let page = page.to_owned();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(page.as_bytes());
    });
    let output = child.wait_with_output().expect("promtool output");
    let _ = writer.join();
    let report = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), report)
}

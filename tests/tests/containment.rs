//! Nothing a worker starts outlives it or the agent: a SIGKILLed agent's orphaned
//! grandchildren (holding the service socket) are killed by the next agent before it
//! binds, and while the agent runs it adopts and kills what escapes a worker's group.

use std::net::SocketAddr;
use std::time::Duration;

use heapwarden_tests::*;
use nix::sys::signal::Signal;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Pids of live processes whose command line is exactly `argv`.
fn processes(argv: &[&str]) -> Vec<i32> {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
        .filter(|pid| alive(*pid))
        .collect()
}

fn config(admin: SocketAddr, port: u16, command: &str) -> String {
    format!(
        r#"
[admin]
listen = "{admin}"
[pool]
workers = 2
listen = "127.0.0.1:{port}"
command = ["sh", "-c", "{command}"]
min-uptime = "200ms"
"#
    )
}

#[test]
fn grandchildren_of_a_sigkilled_agent_are_killed_before_the_next_one_binds() {
    let _guard = TimeoutGuard::new("sigkill_grandchildren", SECS(90));
    let sandbox = Sandbox::new();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let port = free_port();
    let text = config(admin, port, "sleep 47 & sleep 48");
    let mut first = sandbox.agent(&text);
    wait_until_ok(admin, "/readyz", SECS(30), &first.logs);
    let sleeps = poll(SECS(10), "both workers' sleeps", || {
        let mut found = processes(&["sleep", "47"]);
        found.extend(processes(&["sleep", "48"]));
        (found.len() == 4).then_some(found)
    });
    first.signal(Signal::SIGKILL);
    first.wait_exit(SECS(5)).expect("the agent died");
    // The workers die with the agent (parent-death signal); their `sleep 47`s do not.
    assert!(
        sleeps.iter().all(|&pid| alive(pid)),
        "the orphans are the point of this test"
    );

    let mut second = sandbox.agent(&text);
    wait_until_ok(admin, "/readyz", SECS(30), &second.logs);
    for pid in sleeps {
        assert!(
            wait_gone(pid, SECS(5)),
            "orphan {pid} of the killed agent survived"
        );
    }
    second.logs.wait_for(
        SECS(5),
        "the cleanup record",
        msg("Processes left by a previous agent were killed."),
    );
    let (status, _) = http_get(format!("127.0.0.1:{port}").parse().unwrap(), "/", SECS(2))
        .map_or((0, String::new()), |r| r);
    // `sleep` never answers HTTP: a connection must not land on a leftover.
    assert_eq!(status, 0, "something answered on the service port");
    // A graceful stop leaves nothing either.
    let mut now = processes(&["sleep", "47"]);
    now.extend(processes(&["sleep", "48"]));
    assert_eq!(now.len(), 4, "the new workers' sleeps: {now:?}");
    second.signal(Signal::SIGTERM);
    second.wait_exit(SECS(20)).expect("the agent stops");
    for pid in now {
        assert!(
            wait_gone(pid, SECS(5)),
            "sleep {pid} outlived a stopped agent"
        );
    }
}

#[test]
fn a_descendant_that_leaves_the_worker_group_dies_with_its_worker() {
    let _guard = TimeoutGuard::new("setsid_escape", SECS(60));
    let sandbox = Sandbox::new();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // The shell exits soon; its `setsid sleep` is in a session of its own, out of reach
    // of the group kill, and is re-parented to the agent (a subreaper).
    let text = config(admin, free_port(), "setsid sleep 4049 & sleep 0.3; exit 3")
        + "[pool.restart]\ninitial-delay = \"50ms\"\nmax-delay = \"200ms\"\nmax-restarts = 100\n";
    let mut agent = sandbox.agent(&text);
    let early = poll(SECS(20), "escaped sleeps", || {
        let found = processes(&["sleep", "4049"]);
        (!found.is_empty()).then_some(found)
    });
    let exits = agent.logs.matching(msg("A worker exited.")).len();
    agent.logs.wait_for_n(
        exits + 4,
        SECS(30),
        "more restarts",
        msg("A worker exited."),
    );
    for &pid in &early {
        assert!(wait_gone(pid, SECS(5)), "sleep {pid} outlived its worker");
    }
    agent.logs.wait_for(
        SECS(5),
        "the kill record",
        msg("A process left behind by an exited worker was killed."),
    );
    // A graceful stop takes what the running workers left along.
    let running = processes(&["sleep", "4049"]);
    agent.signal(Signal::SIGTERM);
    agent.wait_exit(SECS(20)).expect("the agent stops");
    for pid in running {
        assert!(wait_gone(pid, SECS(5)), "sleep {pid} outlived the agent");
    }
}

/// The agent looks for orphans on SIGCHLD and when it forgets an exited worker, not on a
/// timer. Here the workers' exits are the last events for 60 s (their restarts wait):
/// each escaped `sleep` must go when its worker does, though the SIGCHLD of that exit may
/// be handled while the worker still counts as live.
#[test]
fn an_escaped_descendant_dies_with_its_worker_when_nothing_else_happens() {
    let _guard = TimeoutGuard::new("setsid_escape_alone", SECS(60));
    let sandbox = Sandbox::new();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = config(admin, free_port(), "setsid sleep 4051 & sleep 0.5; exit 3")
        + "[pool.restart]\ninitial-delay = \"60s\"\nmax-delay = \"60s\"\n";
    let mut agent = sandbox.agent(&text);
    let escaped = poll(SECS(20), "both escaped sleeps", || {
        let found = processes(&["sleep", "4051"]);
        (found.len() == 2).then_some(found)
    });
    agent
        .logs
        .wait_for_n(2, SECS(10), "both workers' exits", msg("A worker exited."));
    for &pid in &escaped {
        assert!(
            wait_gone(pid, SECS(5)),
            "sleep {pid} outlived its worker while no restart came"
        );
    }
    agent.logs.wait_for(
        SECS(5),
        "the kill record",
        msg("A process left behind by an exited worker was killed."),
    );
    agent.signal(Signal::SIGTERM);
    agent.wait_exit(SECS(20)).expect("the agent stops");
}

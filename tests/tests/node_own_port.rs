//! A Node app that listens on its own port instead of the pool's gets one line naming
//! both (issue #16, defect 12): under a pool on one port, `listen(other)` binds in one
//! worker and fails with EADDRINUSE in the next, and nothing said why.

mod node_support;

use heapwarden_tests::{Sandbox, TimeoutGuard, free_port};
use node_support::{SECS, require_node};

#[test]
fn an_app_on_its_own_port_is_told_both_ports_in_one_line() {
    let _guard = TimeoutGuard::new("node_own_port", SECS(90));
    require_node();
    let sandbox = Sandbox::new();
    let (pool_port, app_port) = (free_port(), free_port());
    let app = format!(
        "require('http').createServer((q, r) => r.end('x')).listen({app_port}, '127.0.0.1')"
    );
    let command = serde_json::to_string(&["node", "-e", &app]).unwrap();
    let agent = sandbox.agent(&format!(
        r#"
[pool]
workers = 2
command = {command}
listen = "127.0.0.1:{pool_port}"
min-uptime = "1s"
"#
    ));
    let line = agent.logs.wait_for(SECS(60), "the own-port line", |r| {
        r["msg"]
            .as_str()
            .is_some_and(|m| m.starts_with("The app listens on its own port, not the pool's"))
    });
    let text = line.to_string();
    assert!(
        text.contains(&app_port.to_string()) && text.contains(&pool_port.to_string()),
        "{line}"
    );
}

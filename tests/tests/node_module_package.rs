//! The Node probe loads when the state directory lies under a `"type": "module"` package
//! (issue #16, defect 5): Node would read a `.js` probe there as ESM and every worker
//! crash-looped (`SyntaxError: Illegal return statement`); the probe ships as `.cjs`.

mod node_support;

use heapwarden_tests::{Sandbox, free_port, heapwarden, poll, wait_until_ok};
use node_support::{APP_JS, SECS, require_node};

#[test]
fn node_workers_get_the_probe_with_the_state_dir_under_an_esm_package() {
    let _guard = heapwarden_tests::TimeoutGuard::new("node_module_package", SECS(120));
    require_node();
    let sandbox = Sandbox::new();
    // The sandbox is the package: the state directory (sandbox/state) lies inside it.
    sandbox.write(
        "package.json",
        r#"{ "name": "esm-app", "version": "1.0.0", "private": true, "type": "module" }"#,
    );
    sandbox.write("app.cjs", APP_JS);
    let (port, admin) = (free_port(), free_port());
    let agent = sandbox.agent(&format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"
[pool]
workers = 1
command = ["node", "app.cjs"]
cwd = {cwd:?}
listen = "127.0.0.1:{port}"
min-uptime = "1s"
[sampling]
interval = "200ms"
"#,
        cwd = sandbox.path().display().to_string()
    ));
    let admin_addr = format!("127.0.0.1:{admin}").parse().unwrap();
    wait_until_ok(admin_addr, "/readyz", SECS(60), &agent.logs);
    let probe = sandbox.path().join("state/probes/heapwarden-probe.cjs");
    assert!(probe.is_file(), "{} is missing", probe.display());
    let config = sandbox.path().join("heapwarden.toml");
    let heap = poll(SECS(30), "the Node probe's heap figure", || {
        let out = std::process::Command::new(heapwarden())
            .args(["ps", "--json", "-c"])
            .arg(&config)
            .output()
            .ok()?;
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        rows[0]["heap_allocated_bytes"].as_u64().filter(|b| *b > 0)
    });
    println!("heap of the Node worker under an ESM package: {heap} B");
    assert!(
        agent
            .logs
            .matching(|r| r["msg"]
                .as_str()
                .is_some_and(|m| m.contains("Illegal return statement")))
            .is_empty(),
        "the probe was read as ESM"
    );
}

//! The dispatcher as a pure function: command + config → env.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use super::*;

fn argv(words: &[&str]) -> Vec<OsString> {
    words.iter().map(OsString::from).collect()
}

fn decide(probe: ProbeKind, words: &[&str], pool_env: &[(&str, &str)]) -> AttachPlan {
    let env: BTreeMap<String, String> = pool_env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    plan(&AttachInput {
        probe,
        argv: &argv(words),
        pool_env: &env,
        inherited_node_options: None,
        node_probe: Some(Path::new("/var/lib/heapwarden/probes/heapwarden-probe.cjs")),
        listen_port: Some(8080),
        native: None,
    })
}

fn node_options(plan: &AttachPlan) -> Option<&str> {
    plan.env
        .iter()
        .find(|(k, _)| k == "NODE_OPTIONS")
        .map(|(_, v)| v.as_str())
}

#[test]
fn auto_attaches_node_to_node_and_its_launchers() {
    for cmd in [
        &["node", "app.js"][..],
        &["/usr/bin/nodejs", "server.js"],
        &["node20", "app.js"],
        &["npm", "start"],
        &["/usr/local/bin/npx", "serve"],
        &["yarn", "start"],
        &["pnpm", "start"],
        &["/usr/bin/env", "NODE_ENV=production", "node", "app.js"],
    ] {
        let plan = decide(ProbeKind::Auto, cmd, &[]);
        assert_eq!(plan.attached, Some(Attached::Node), "{cmd:?}");
        assert_eq!(
            node_options(&plan),
            Some("--require /var/lib/heapwarden/probes/heapwarden-probe.cjs")
        );
        assert!(
            plan.env
                .contains(&("HEAPWARDEN_LISTEN_PORT".into(), "8080".into()))
        );
        assert!(plan.env.contains(&("PORT".into(), "8080".into())));
    }
}

#[test]
fn auto_leaves_other_programs_alone_without_a_log_line() {
    for cmd in [
        &["python3", "app.py"][..],
        &["/srv/app/server"],
        &["nodemon", "app.js"],
        &["sh", "-c", "node app.js"],
        &["env", "-i"],
    ] {
        assert_eq!(
            decide(ProbeKind::Auto, cmd, &[]),
            AttachPlan::default(),
            "{cmd:?}"
        );
    }
}

#[test]
fn the_users_node_options_are_kept_after_the_probe() {
    let plan = decide(
        ProbeKind::Auto,
        &["node", "app.js"],
        &[
            (
                "NODE_OPTIONS",
                "--max-old-space-size=256 --enable-source-maps",
            ),
            ("PORT", "3000"),
        ],
    );
    assert!(
        !plan.env.iter().any(|(k, _)| k == "PORT"),
        "the user's PORT wins"
    );
    assert_eq!(
        node_options(&plan),
        Some(
            "--require /var/lib/heapwarden/probes/heapwarden-probe.cjs --max-old-space-size=256 --enable-source-maps"
        )
    );
    let inherited = plan_with_inherited("--trace-warnings");
    assert_eq!(
        node_options(&inherited),
        Some("--require /var/lib/heapwarden/probes/heapwarden-probe.cjs --trace-warnings")
    );
}

fn plan_with_inherited(options: &str) -> AttachPlan {
    plan(&AttachInput {
        probe: ProbeKind::Node,
        argv: &argv(&["./start.sh"]),
        pool_env: &BTreeMap::new(),
        inherited_node_options: Some(options),
        node_probe: Some(Path::new("/var/lib/heapwarden/probes/heapwarden-probe.cjs")),
        listen_port: None,
        native: None,
    })
}

#[test]
fn node_is_forced_onto_wrappers_and_paths_with_spaces_are_quoted() {
    let plan = plan(&AttachInput {
        probe: ProbeKind::Node,
        argv: &argv(&["./run-app.sh"]),
        pool_env: &BTreeMap::new(),
        inherited_node_options: None,
        node_probe: Some(Path::new("/srv/my state/probes/heapwarden-probe.cjs")),
        listen_port: None,
        native: None,
    });
    assert_eq!(plan.attached, Some(Attached::Node));
    assert_eq!(
        node_options(&plan),
        Some("--require \"/srv/my state/probes/heapwarden-probe.cjs\"")
    );
    assert_eq!(plan.env.len(), 1, "no port without a TCP socket");
}

#[test]
fn off_gives_nothing_and_failures_say_why() {
    assert_eq!(
        decide(ProbeKind::Off, &["node", "app.js"], &[]),
        AttachPlan::default()
    );
    let native = decide(ProbeKind::Native, &["/srv/app/server"], &[]);
    assert_eq!(native.attached, None);
    assert!(native.env.is_empty());
    assert!(native.not_attached.is_some(), "{native:?}");
    let unwritable = plan(&AttachInput {
        probe: ProbeKind::Auto,
        argv: &argv(&["node", "app.js"]),
        pool_env: &BTreeMap::new(),
        inherited_node_options: None,
        node_probe: None,
        listen_port: None,
        native: None,
    });
    assert!(
        unwritable
            .not_attached
            .unwrap()
            .contains("could not be written")
    );
    let quoted = plan(&AttachInput {
        probe: ProbeKind::Node,
        argv: &argv(&["node"]),
        pool_env: &BTreeMap::new(),
        inherited_node_options: None,
        node_probe: Some(Path::new("/odd\"dir/heapwarden-probe.cjs")),
        listen_port: None,
        native: None,
    });
    assert!(quoted.not_attached.is_some());
}

#[test]
fn the_probe_file_is_written_world_readable_and_rewritten_when_stale() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = node::install_probe(dir.path()).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), node::PROBE_SOURCE);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    std::fs::write(&path, "stale").unwrap();
    node::install_probe(dir.path()).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), node::PROBE_SOURCE);
}

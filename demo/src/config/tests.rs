//! Tests of loading `[demo]` with the shared loader: the committed example, the demo's
//! keys and their variables, and its own checks.

use std::path::Path;
use std::time::Duration;

use heapwarden_probes::config::{ConfigErrors, env_name, known_keys};

use super::*;

fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<DemoConfig, ConfigErrors> {
    heapwarden_probes::config::load(file, env, &[])
}

const EXAMPLE: &str = include_str!("../../../systemd/heapwarden.toml");

fn load_text(text: &str, env: &[(&str, &str)]) -> Result<DemoConfig, ConfigErrors> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).expect("write config");
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    load(Some(&path), env)
}

#[test]
fn the_example_config_documents_every_key_with_its_default() {
    let example = load_text(EXAMPLE, &[]).expect("the example's [demo] is valid");
    assert_eq!(example, DemoConfig::default());
    let section = EXAMPLE
        .split_once("\n[demo]\n")
        .expect("the example has a [demo] section")
        .1;
    for key in known_keys::<DemoConfig>() {
        assert!(
            section
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{key} ="))),
            "systemd/heapwarden.toml does not document `demo.{key}`"
        );
    }
}

#[test]
fn other_sections_are_the_agents_and_ignored() {
    let text = "state-dir = 7\n[pool]\nworkers = \"many\"\n[nonsense]\n[demo]\nl1-ttl = \"5s\"\n";
    let config = load_text(text, &[]).expect("only [demo] is checked here");
    assert_eq!(config.l1_ttl, Duration::from_secs(5));
}

#[test]
fn environment_overrides_the_file() {
    let text = "[demo]\nl1-capacity = 5\nredis-url = \"redis://a:1\"\n";
    let config = load_text(
        text,
        &[
            ("HEAPWARDEN_DEMO_L1_CAPACITY", "9"),
            ("HEAPWARDEN_DEMO_LEAK_RATE", "2MiB"),
            ("HEAPWARDEN_DEMO_LEAK_SLOTS", "[1, 2]"),
            ("HEAPWARDEN_POOL_WORKERS", "not ours"),
        ],
    )
    .expect("valid");
    assert_eq!(config.l1_capacity, 9);
    assert_eq!(config.leak_rate.bytes(), 2 * 1024 * 1024);
    assert_eq!(config.leak_slots, vec![1, 2]);
    assert_eq!(config.redis_url, "redis://a:1");
    assert_eq!(env_name("demo.redis-url"), "HEAPWARDEN_DEMO_REDIS_URL");
}

#[test]
fn every_error_is_reported_with_its_key_and_source() {
    let text =
        "[demo]\nl1-ttl = \"soon\"\nmax-body = \"lots\"\nnonsense = 1\njobs-concurrency = 0\n";
    let errors = load_text(text, &[("HEAPWARDEN_DEMO_SEED_ROWS", "many")]).unwrap_err();
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    for key in [
        "demo.l1-ttl",
        "demo.max-body",
        "demo.nonsense",
        "demo.seed-rows",
    ] {
        assert!(keys.contains(&key), "{key} missing from {errors}");
    }
    let text = errors.to_string();
    assert!(
        text.contains("(set by HEAPWARDEN_DEMO_SEED_ROWS)"),
        "{text}"
    );
    assert!(
        text.lines().all(|l| l.starts_with("config error: demo.")),
        "{text}"
    );
    // Whole-section checks run once every key has the right type.
    let errors = load_text("[demo]\njobs-concurrency = 0\n", &[]).unwrap_err();
    assert_eq!(errors.0[0].key, "demo.jobs-concurrency");
}

// The loader's own behaviour (broken files, a section that is not a table, arbitrary
// text) is tested once, with the loader (heapwarden-protocol's config tests).
proptest::proptest! {
    /// Arbitrary override text never panics and is blamed on its variable.
    #[test]
    fn arbitrary_overrides_never_panic(raw in "\\PC{0,40}") {
        if let Err(errors) = load(None, vec![("HEAPWARDEN_DEMO_L1_TTL".to_string(), raw)]) {
            let text = errors.to_string();
            proptest::prop_assert!(text.contains("demo.l1-ttl"), "{}", text);
        }
    }
}

/// Durations that parse but overflow an instant (issue 11's examples) are errors naming
/// their key, for every duration key of the section.
#[test]
fn every_duration_key_has_an_upper_bound() {
    let keys = [
        "l1-ttl",
        "l2-ttl",
        "db-acquire-timeout",
        "db-idle-timeout",
        "redis-timeout",
        "job-backoff",
        "job-lease",
        "jobs-poll",
    ];
    for huge in [
        "\"400000000000y\"",
        "\"4000000000000000000s\"",
        "\"1000000h\"",
    ] {
        for key in keys {
            let errors = load_text(&format!("[demo]\n{key} = {huge}\n"), &[])
                .expect_err(&format!("demo.{key} = {huge} was accepted"));
            assert!(
                errors.0.iter().any(|e| e.key == format!("demo.{key}")),
                "demo.{key} = {huge}: the error does not name the key: {errors}"
            );
        }
    }
}

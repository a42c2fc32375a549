//! Tests of loading `[demo]` with the shared loader: the committed example, the demo's
//! keys and their variables, its own checks, and its bounds as the configuration page
//! states them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use heapwarden_probes::config::bounds::check_page_table;
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

/// The section's duration keys: those whose default is written as a duration (`"60s"`).
fn duration_keys() -> Vec<String> {
    let defaults = toml::Value::try_from(DemoConfig::default()).expect("defaults serialise");
    known_keys::<DemoConfig>()
        .into_iter()
        .filter(|key| {
            (defaults.get(key).and_then(|v| v.as_str()))
                .is_some_and(|s| humantime::parse_duration(s).is_ok())
        })
        .collect()
}

/// Durations that parse but overflow an instant (issue 11's examples) are errors naming
/// their key, for every duration key of the section; each has its bound.
#[test]
fn every_duration_key_has_an_upper_bound() {
    let keys = duration_keys();
    let bounded: Vec<String> = (section::DURATION_BOUNDS.iter())
        .map(|b| b.key.trim_start_matches("demo.").to_string())
        .collect();
    assert_eq!(
        keys.iter().collect::<BTreeSet<_>>(),
        bounded.iter().collect::<BTreeSet<_>>(),
        "every duration key of [demo] is in DURATION_BOUNDS"
    );
    for huge in [
        "\"400000000000y\"",
        "\"4000000000000000000s\"",
        "\"1000000h\"",
    ] {
        for key in &keys {
            let errors = load_text(&format!("[demo]\n{key} = {huge}\n"), &[])
                .expect_err(&format!("demo.{key} = {huge} was accepted"));
            assert!(
                errors.0.iter().any(|e| e.key == format!("demo.{key}")),
                "demo.{key} = {huge}: the error does not name the key: {errors}"
            );
        }
    }
}

/// Each bound is enforced as stated: its edges load, a step past either edge is one error
/// naming the key in the page's words.
#[test]
fn every_bound_holds_at_its_edges_and_not_past_them() {
    let load_one = |key: &str, value: String| load_text(&format!("[demo]\n{key} = {value}\n"), &[]);
    for b in section::DURATION_BOUNDS {
        let key = b.key.trim_start_matches("demo.");
        let max = b.max.expect("every demo duration has a maximum");
        for edge in [b.min, max] {
            let value = format!("\"{}\"", humantime::format_duration(edge));
            load_one(key, value.clone()).unwrap_or_else(|e| panic!("{key} = {value}: {e}"));
        }
        let mut past = vec![max + Duration::from_nanos(1)];
        past.extend(b.min.checked_sub(Duration::from_nanos(1)));
        for value in past {
            let value = format!("\"{}\"", humantime::format_duration(value));
            let errors = load_one(key, value.clone()).expect_err(&value);
            assert_eq!(
                errors.to_string(),
                format!("config error: {}: must be from {}", b.key, b.stated()),
                "{key} = {value}"
            );
        }
    }
    for b in section::COUNT_BOUNDS {
        let key = b.key.trim_start_matches("demo.");
        load_one(key, b.min.to_string()).expect("the minimum loads");
        let errors = load_one(key, (b.min - 1).to_string()).expect_err(key);
        assert_eq!(
            errors.to_string(),
            format!("config error: {}: must be {}", b.key, b.stated())
        );
    }
    for b in section::SIZE_BOUNDS {
        let key = b.key.trim_start_matches("demo.");
        load_one(key, format!("\"{}\"", b.min)).expect("the minimum loads");
        let errors = load_one(key, (b.min.bytes() - 1).to_string()).expect_err(key);
        assert_eq!(
            errors.to_string(),
            format!("config error: {}: must be {}", b.key, b.stated())
        );
    }
}

/// The configuration page's Bounds table states every `demo.` range the section checks,
/// in the words of [`section::stated`], and no `demo.` range it does not check (the other rows are
/// the agent's: its tests hold them to its `bounds.rs`).
#[test]
fn the_configuration_page_states_every_demo_bound() {
    const PAGE: &str = include_str!("../../../docs/src/operate/configuration.md");
    let code: BTreeMap<String, String> = (section::stated().into_iter())
        .map(|(key, bounds)| (key.to_string(), bounds))
        .collect();
    if let Err(why) = check_page_table(PAGE, |key| key.starts_with("demo."), &code) {
        panic!("docs/src/operate/configuration.md#bounds, the demo's rows: {why}");
    }
}

//! Tests of loading: the committed example, overrides, and error reporting.

use std::collections::BTreeMap;
use std::path::Path;

use heapwarden_protocol::config::bounds::check_page_table;

use super::load::{env_name, known_keys};
use super::*;

const EXAMPLE: &str = include_str!("../../../systemd/heapwarden.toml");

fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    load(Some(&path), env, &[])
}

#[test]
fn the_example_config_parses_and_documents_every_key() {
    let config = load_text(EXAMPLE, &[]).expect("example config is valid");
    assert_eq!(config.state_dir, Path::new("/var/lib/heapwarden"));
    for key in known_keys() {
        let leaf = key.rsplit('.').next().unwrap();
        assert!(
            EXAMPLE
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{leaf} ="))
                    || l.trim_start().starts_with(&format!("[{key}]"))),
            "systemd/heapwarden.toml does not document `{key}`"
        );
    }
}

#[test]
fn the_example_matches_the_defaults() {
    let example = load_text(EXAMPLE, &[]).unwrap();
    let defaults = load(None, Vec::new(), &[]).unwrap();
    assert_eq!(example.pool, defaults.pool);
    assert_eq!(example.watchdog, defaults.watchdog);
}

#[test]
fn environment_overrides_file_and_flags_override_environment() {
    let text = "[pool]\nworkers = 2\nlisten = \"127.0.0.1:1000\"\n";
    let c = load_text(
        text,
        &[
            ("HEAPWARDEN_POOL_WORKERS", "7"),
            ("HEAPWARDEN_POOL_MIN_UPTIME", "2s"),
        ],
    )
    .unwrap();
    assert_eq!(c.pool.workers, 7);
    assert_eq!(c.pool.min_uptime, std::time::Duration::from_secs(2));
    let c = load(
        None,
        vec![("HEAPWARDEN_POOL_WORKERS".to_string(), "7".to_string())],
        &[("pool.workers", "3".to_string())],
    )
    .unwrap();
    assert_eq!(c.pool.workers, 3);
    assert_eq!(env_name("admin.token-file"), "HEAPWARDEN_ADMIN_TOKEN_FILE");
    assert_eq!(env_name("state-dir"), "HEAPWARDEN_STATE_DIR");
}

#[test]
fn every_error_is_reported_with_its_key() {
    let text = "[pool]\nworkers = -1\nkill-timeout = \"later\"\n[watchdog]\nwatch = \"vibes\"\nstrikes = 0\n[typo]\n";
    let errors = load_text(text, &[]).unwrap_err();
    let keys: Vec<&str> = errors.0.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"pool.workers"), "{errors}");
    assert!(keys.contains(&"pool.kill-timeout"), "{errors}");
    assert!(keys.contains(&"watchdog.watch"), "{errors}");
    assert!(keys.contains(&"typo"), "{errors}");
}

#[test]
fn rules_can_be_switched_off() {
    let c = load_text(
        "[watchdog]\nmax-memory = \"off\"\ngrowth = \"off\"\ntrend-min-rate = \"off\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.watchdog.max_memory.get(), None);
    assert_eq!(c.watchdog.trend_min_rate.get(), None);
}

#[test]
fn the_predicted_rule_is_on_by_default_and_its_guards_are_bounded() {
    let c = load_text("", &[]).unwrap();
    assert_eq!(c.watchdog.predict, super::types::Predict::On);
    let off = load_text("[watchdog]\npredict = \"off\"\n", &[]).unwrap();
    assert_eq!(off.watchdog.predict, super::types::Predict::Off);
    let text = "[watchdog]\npredict = \"maybe\"\n";
    let keys = |text: &str| -> Vec<String> {
        load_text(text, &[])
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.key)
            .collect()
    };
    assert_eq!(keys(text), ["watchdog.predict"]);
    let text = "[watchdog]\npredict-window = \"2h\"\npredict-level = 1.0\npredict-samples = 0\n\
                predict-confidence = 0.2\npredict-margin = 0.5\n";
    assert_eq!(
        keys(text),
        [
            "watchdog.predict-window",
            "watchdog.predict-level",
            "watchdog.predict-samples",
            "watchdog.predict-confidence",
            "watchdog.predict-margin"
        ]
    );
    let text = "[watchdog]\npredict-level = nan\npredict-samples = 61\npredict-margin = inf\n";
    assert_eq!(
        keys(text),
        [
            "watchdog.predict-level",
            "watchdog.predict-samples",
            "watchdog.predict-margin"
        ]
    );
}

/// One line, as every config error (toml's own message draws the line over three more).
#[test]
fn syntax_errors_name_the_file_and_the_line_in_one_line() {
    let errors = load_text("[pool]\nworkers = = 2", &[]).unwrap_err();
    let text = errors.to_string();
    assert!(text.contains("not valid TOML (line 2)"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
}

// Arbitrary text never panics the loader: heapwarden-protocol's config tests.
proptest::proptest! {
    /// Arbitrary values for a real key give a config or an error naming that key.
    #[test]
    fn bad_values_name_their_key(value in "[a-z0-9\"\\[\\]., -]{0,20}") {
        let text = format!("[pool]\nmin-uptime = {value}\n");
        if let Err(errors) = load_text(&text, &[]) {
            proptest::prop_assert!(errors.0.iter().any(|e| e.key.starts_with("pool") || e.key == "(file)"), "{}", errors);
        }
    }
}

/// `key = value` as a config file: the key's table header, then the leaf.
fn one_key(key: &str, value: &str) -> String {
    match key.rsplit_once('.') {
        Some((table, leaf)) => format!("[{table}]\n{leaf} = {value}\n"),
        None => format!("{key} = {value}\n"),
    }
}

#[test]
fn every_duration_key_has_an_upper_bound() {
    let keys = super::bounds::duration_keys();
    // The agent's own sections; `[demo]` bounds its own (heapwarden-demo's tests).
    assert!(keys.len() >= 13, "duration keys found: {keys:?}");
    // Values that parse as durations but overflow an instant (the examples).
    for huge in [
        "\"400000000000y\"",
        "\"4000000000000000000s\"",
        "\"1000000h\"",
    ] {
        for key in &keys {
            let errors = load_text(&one_key(key, huge), &[])
                .expect_err(&format!("{key} = {huge} was accepted"));
            assert!(
                errors.0.iter().any(|e| &e.key == key),
                "{key} = {huge}: the error does not name the key: {errors}"
            );
        }
    }
}

proptest::proptest! {
    /// Arbitrary durations for any duration key: check-config answers (config or errors
    /// naming the key), never panics, and what it accepts is within the bounds.
    #[test]
    fn arbitrary_durations_never_panic_the_loader(
        key_index in 0usize..64,
        amount in proptest::prop_oneof![0u64..1000, proptest::num::u64::ANY],
        unit in proptest::sample::select(vec!["ns", "us", "ms", "s", "m", "h", "d", "w", "M", "y", ""]),
        noise in "[0-9a-z .]{0,6}",
    ) {
        let keys = super::bounds::duration_keys();
        let key = &keys[key_index % keys.len()];
        for value in [format!("\"{amount}{unit}\""), format!("\"{amount}{unit}{noise}\""), amount.to_string()] {
            match load_text(&one_key(key, &value), &[]) {
                Ok(config) => {
                    for b in super::bounds::DURATION_BOUNDS {
                        proptest::prop_assert!(b.holds((b.get)(&config)), "{} out of its bounds", b.key);
                    }
                }
                Err(errors) => proptest::prop_assert!(
                    errors.0.iter().any(|e| &e.key == key || e.key == "(file)" || e.key == "watchdog.trend-window" || e.key == "pool.restart.initial-delay"),
                    "{key} = {value}: {errors}"
                ),
            }
        }
    }
}

/// The book's configuration page lists every key of the schema in its section table, so a
/// key added to the schema and not to the docs fails here (the reference page includes
/// `systemd/heapwarden.toml`, which the test above keeps complete).
#[test]
fn the_configuration_page_names_every_key() {
    const PAGE: &str = include_str!("../../../docs/src/operate/configuration.md");
    let rows: Vec<(&str, &str)> = PAGE
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split_once(" | "))
        .collect();
    let mut missing = Vec::new();
    for key in known_keys() {
        // A section the agent keeps opaque ([demo]) is one key with a row of its own.
        if rows.iter().any(|(cell, _)| *cell == format!("`[{key}]`")) {
            continue;
        }
        let (section, leaf) = key.rsplit_once('.').unwrap_or(("", key.as_str()));
        let first = if section.is_empty() {
            "top".to_string()
        } else {
            format!("`[{section}]`")
        };
        let Some((_, keys)) = rows.iter().find(|(cell, _)| *cell == first) else {
            missing.push(key.clone());
            continue;
        };
        if !keys.contains(&format!("`{leaf}`")) {
            missing.push(key.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "docs/src/operate/configuration.md does not list {missing:?}"
    );
}

#[test]
fn pool_env_takes_integers_and_booleans_as_their_string_form() {
    let config = load_text(
        "[pool.env]\nPORT = 3000\nDEBUG = true\nNODE_ENV = \"production\"\n",
        &[],
    )
    .expect("PM2-style env values");
    assert_eq!(config.pool.env["PORT"], "3000");
    assert_eq!(config.pool.env["DEBUG"], "true");
    assert_eq!(config.pool.env["NODE_ENV"], "production");
    let err = load_text("[pool.env]\nRATIO = 1.5\nLIST = [1]\n", &[]).unwrap_err();
    let keys: Vec<&str> = err.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["pool.env"], "{err}");
}

/// The configuration page's Bounds table states every range `bounds.rs` checks, in the
/// words of [`super::bounds::stated`], and no range the code does not check (`demo.`
/// rows are the demo's: heapwarden-demo's tests hold them to its section).
#[test]
fn the_configuration_page_states_every_bound() {
    const PAGE: &str = include_str!("../../../docs/src/operate/configuration.md");
    let code: BTreeMap<String, String> = super::bounds::stated()
        .into_iter()
        .map(|(key, bounds)| (key.to_string(), bounds.join("; ")))
        .collect();
    if let Err(why) = check_page_table(PAGE, |key| !key.starts_with("demo."), &code) {
        panic!("docs/src/operate/configuration.md#bounds: {why}");
    }
}

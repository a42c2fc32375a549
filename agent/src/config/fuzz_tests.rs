//! Fuzz target (`bench/fuzz.sh`): config files and environment overrides built from the
//! real keys with hostile values (extreme durations and sizes, wrong types, nested
//! tables, unknown keys) go through the whole loader: a config or errors, never a panic.

use proptest::prelude::*;

use super::load::known_keys;
use super::*;

fn arb_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "\"0s\"", "\"1ms\"", "\"4000000000000000000s\"", "\"400000000000y\"", "\"-1s\"",
            "\"1MiB\"", "\"18446744073709551615B\"", "\"999999PiB\"", "\"off\"", "\"1MiB/min\"",
            "\"0B/s\"", "0", "-1", "18446744073709551616", "1e308", "nan", "inf", "true",
            "\"\"", "[]", "[\"\"]", "[\"a\", 1]", "{}", "{ a = 1 }", "\"127.0.0.1:0\"",
            "\"[::1]:99999\"", "\"auto\"", "\"restart\"", "\"profile-only\"", "\"trace\"",
        ])
        .prop_map(str::to_string),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| format!("{f:?}")),
        1 => "\"[ -~]{0,12}\"",
    ]
}

/// Assignments (dotted key, TOML value), environment overrides, and whether to write the
/// assignments as a file (the TOML parser too) or hand them over as flags (no disk).
type Case = (Vec<(String, String)>, Vec<(String, String)>, bool);

fn arb_config() -> impl Strategy<Value = Case> {
    let keys = known_keys();
    let key = prop::sample::select(keys.clone());
    let assignment = prop_oneof![
        6 => (key.clone(), arb_value()),
        1 => ("[a-z-]{1,10}(\\.[a-z-]{1,8})?", arb_value()),
    ];
    // One key alone reaches the whole-config checks; many at once test the reporting.
    let assignments = prop_oneof![
        prop::collection::vec(assignment.clone(), 1..=1),
        prop::collection::vec(assignment, 0..12),
    ];
    let env_key = prop::sample::select(keys);
    let env = prop::collection::vec((env_key, "[ -~]{0,16}"), 0..4)
        .prop_map(|env| env.into_iter().map(|(k, v)| (env_name(&k), v)).collect());
    (assignments, env, prop::bool::weighted(0.1))
}

fn toml_line(key: &str, value: &str) -> String {
    let quoted: Vec<String> = key.split('.').map(|part| format!("{part:?}")).collect();
    format!("{} = {value}", quoted.join("."))
}

#[test]
fn fuzz_config_loader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fuzz.toml");
    crate::fuzzing::fuzz(
        "config loader",
        arb_config(),
        |(assignments, env, as_file)| {
            let result = if as_file {
                let text: String = assignments
                    .iter()
                    .map(|(k, v)| format!("{}\n", toml_line(k, v)))
                    .collect();
                std::fs::write(&path, &text).expect("write");
                load(Some(&path), env, &[])
            } else {
                let flags: Vec<(&str, String)> = assignments
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.clone()))
                    .collect();
                load(None, env, &flags)
            };
            if let Ok(config) = &result {
                // A config that loads is usable: what is derived from it cannot panic either.
                let _ = config.pool.worker_count();
            }
            Ok(())
        },
    );
}

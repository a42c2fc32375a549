//! The loader over a small section with what real ones have: a nested table, a map of
//! the user's keys, a list, and a check that needs the whole section.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct Section {
    workers: u32,
    listen: String,
    slots: Vec<u32>,
    restart: Restart,
    env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct Restart {
    max_tries: u32,
}

impl Default for Section {
    fn default() -> Self {
        Section {
            workers: 2,
            listen: "127.0.0.1:8080".into(),
            slots: Vec::new(),
            restart: Restart { max_tries: 3 },
            env: BTreeMap::new(),
        }
    }
}

impl Default for Restart {
    fn default() -> Self {
        Restart { max_tries: 3 }
    }
}

impl ConfigSection for Section {
    const KEY: &'static str = "app";
    const MAP_KEYS: &'static [&'static str] = &["env"];

    fn validate(&self, errors: &mut Vec<ConfigError>) {
        if self.workers == 0 {
            errors.push(ConfigError::new("app.workers", "must be at least 1"));
        }
    }
}

fn load_text(
    text: &str,
    env: &[(&str, &str)],
    flags: &[(&str, String)],
) -> Result<Section, ConfigErrors> {
    let dir = std::env::temp_dir().join(format!(
        "heapwarden-protocol-config-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("c.toml");
    std::fs::write(&path, text).expect("write config");
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    let loaded = load::<Section>(Some(&path), env, flags);
    let _ = std::fs::remove_dir_all(&dir);
    loaded
}

fn keys(errors: &ConfigErrors) -> Vec<&str> {
    errors.0.iter().map(|e| e.key.as_str()).collect()
}

#[test]
fn every_bad_key_is_reported_at_once_under_its_whole_name() {
    let text = "[other]\nanything = 1\n[app]\nworkers = \"many\"\nnonsense = 1\n\
[app.restart]\nmax-tries = -1\n[app.env]\nANY_NAME = \"x\"\n";
    let errors = load_text(text, &[("HEAPWARDEN_APP_LISTEN", "[1]")], &[]).unwrap_err();
    assert_eq!(
        keys(&errors),
        [
            "app.listen",
            "app.nonsense",
            "app.restart.max-tries",
            "app.workers"
        ]
    );
    let text = errors.to_string();
    assert!(
        text.contains("(set by HEAPWARDEN_APP_LISTEN)"),
        "the variable that set a bad value is named: {text}"
    );
    assert!(
        text.lines().all(|l| l.starts_with("config error: app.")),
        "{text}"
    );
}

#[test]
fn flags_override_variables_which_override_the_file() {
    let text = "[app]\nworkers = 4\nlisten = \"file\"\n[app.restart]\nmax-tries = 1\n";
    let loaded = load_text(
        text,
        &[
            ("HEAPWARDEN_APP_LISTEN", "env:1"),
            ("HEAPWARDEN_APP_SLOTS", "[1, 2]"),
            ("HEAPWARDEN_APP_RESTART_MAX_TRIES", "7"),
        ],
        &[("listen", "flag:2".to_string())],
    )
    .expect("valid");
    assert_eq!(loaded.workers, 4);
    assert_eq!(loaded.listen, "flag:2");
    assert_eq!(loaded.slots, [1, 2]);
    assert_eq!(loaded.restart.max_tries, 7);
    let errors = load_text("", &[], &[("workers", "x".to_string())]).unwrap_err();
    assert!(
        errors.to_string().contains("(set by flag for app.workers)"),
        "{errors}"
    );
}

#[test]
fn whole_section_checks_run_once_every_key_is_well_typed() {
    let errors = load_text("[app]\nworkers = 0\n", &[], &[]).unwrap_err();
    assert_eq!(keys(&errors), ["app.workers"]);
    assert_eq!(
        load_text("", &[], &[]).expect("defaults"),
        Section::default()
    );
    assert_eq!(
        load::<Section>(None, Vec::new(), &[]).expect("no file: defaults"),
        Section::default()
    );
}

#[test]
fn a_broken_file_is_one_line_naming_where() {
    let errors = load_text("[app]\nworkers = = 3\n", &[], &[]).unwrap_err();
    let text = errors.to_string();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("not valid TOML (line 2)"), "{text}");
    let errors = load_text("app = 3\n", &[], &[]).unwrap_err();
    assert_eq!(
        errors.to_string(),
        "config error: app: must be a table ([app]), not a integer"
    );
    let missing = load::<Section>(Some(Path::new("/nonexistent/c.toml")), Vec::new(), &[]);
    assert_eq!(keys(&missing.unwrap_err()), ["(file)"]);
}

#[test]
fn keys_and_their_variables() {
    assert_eq!(
        known_keys::<Section>(),
        ["env", "listen", "restart.max-tries", "slots", "workers"]
    );
    assert_eq!(env_name("pool.min-uptime"), "HEAPWARDEN_POOL_MIN_UPTIME");
    assert_eq!(env_name("demo.l1-ttl"), "HEAPWARDEN_DEMO_L1_TTL");
}

proptest::proptest! {
    /// Arbitrary text never panics the loader: it is a section or a list of errors.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = load_text(&text, &[], &[]);
    }

    /// Arbitrary override text never panics, and an error is blamed on its variable.
    #[test]
    fn arbitrary_overrides_never_panic(raw in "\\PC{0,40}") {
        let env = vec![("HEAPWARDEN_APP_RESTART_MAX_TRIES".to_string(), raw)];
        if let Err(errors) = load::<Section>(None, env, &[]) {
            let text = errors.to_string();
            proptest::prop_assert!(
                text.contains("app.restart.max-tries") && text.contains("(set by HEAPWARDEN_APP_RESTART_MAX_TRIES)"),
                "{}", text
            );
        }
    }
}

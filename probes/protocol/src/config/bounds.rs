//! Ranges of config values as data, for the agent's sections and a worker's own: a
//! section lists its bounded keys as [`Bound`]s, checks them with [`Bound::check`] in its
//! [`ConfigSection::validate`](super::ConfigSection::validate), and the same tables say
//! what the configuration page states ([`Bound::stated`]: `0s to 1h`, `1 to 100`,
//! `at least 1`), so a test can hold the page's `## Bounds` table to the code key for key
//! ([`check_page_table`]). A value outside is one error naming its key: a typo can never
//! overflow a deadline later.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ConfigError, Size};

/// A value a bound compares, written as the config file writes it.
pub trait Bounded: Copy + PartialOrd {
    /// `1h`, `256B`, `0.5`.
    fn written(self) -> String;
}

impl Bounded for Duration {
    fn written(self) -> String {
        humantime::format_duration(self).to_string()
    }
}

impl Bounded for Size {
    fn written(self) -> String {
        self.to_string()
    }
}

impl Bounded for f64 {
    fn written(self) -> String {
        self.to_string()
    }
}

impl Bounded for u64 {
    fn written(self) -> String {
        self.to_string()
    }
}

/// A key of section `C` and its allowed range: from `min` to `max` (no `max`: at least
/// `min`); `below_max` when the maximum itself is refused.
pub struct Bound<C, T> {
    /// The whole dotted key, as errors and the page name it: `demo.l1-ttl`.
    pub key: &'static str,
    pub min: T,
    pub max: Option<T>,
    pub below_max: bool,
    pub get: fn(&C) -> T,
}

impl<C, T: Bounded> Bound<C, T> {
    /// `key` from `min` to `max`, both allowed.
    pub const fn new(key: &'static str, min: T, max: T, get: fn(&C) -> T) -> Self {
        Bound {
            key,
            min,
            max: Some(max),
            below_max: false,
            get,
        }
    }

    /// `key` of `min` or more.
    pub const fn at_least(key: &'static str, min: T, get: fn(&C) -> T) -> Self {
        Bound {
            key,
            min,
            max: None,
            below_max: false,
            get,
        }
    }

    /// `key` from `min` to just below `max`.
    pub const fn below(key: &'static str, min: T, max: T, get: fn(&C) -> T) -> Self {
        Bound {
            key,
            min,
            max: Some(max),
            below_max: true,
            get,
        }
    }

    /// The range in the page's words: `0s to 1h`, `0 to below 1`, `at least 1`.
    pub fn stated(&self) -> String {
        let min = self.min.written();
        match self.max {
            None => format!("at least {min}"),
            Some(max) => {
                let below = if self.below_max { "below " } else { "" };
                format!("{min} to {below}{}", max.written())
            }
        }
    }

    /// Whether `value` is in range; a NaN never is.
    pub fn holds(&self, value: T) -> bool {
        value >= self.min
            && self
                .max
                .is_none_or(|max| value < max || (!self.below_max && value == max))
    }

    /// One error naming the key when `config`'s value is out of range: `must be from 0s
    /// to 1h`, `must be at least 1`.
    pub fn check(&self, config: &C, errors: &mut Vec<ConfigError>) {
        if !self.holds((self.get)(config)) {
            let from = if self.max.is_some() { "from " } else { "" };
            let message = format!("must be {from}{}", self.stated());
            errors.push(ConfigError::new(self.key, message));
        }
    }
}

/// The docs test of the agent and of a worker: the rows of `page`'s `## Bounds` table
/// whose key `owns` selects must be exactly `code` (key → bounds, as [`Bound::stated`]
/// says them). `Err` says what is wrong and lists the rows the table should have.
pub fn check_page_table(
    page: &str,
    owns: impl Fn(&str) -> bool,
    code: &BTreeMap<String, String>,
) -> Result<(), String> {
    let stated: BTreeMap<String, String> = page_table(page)
        .ok_or("the page has no `## Bounds` section")?
        .into_iter()
        .filter(|(key, _)| owns(key))
        .collect();
    if stated == *code {
        return Ok(());
    }
    let rows: String = code
        .iter()
        .map(|(key, bounds)| format!("| `{key}` | {bounds} |\n"))
        .collect();
    Err(format!(
        "its rows {stated:?} differ from the code's; they should read:\n{rows}"
    ))
}

/// The rows of `page`'s `## Bounds` table (`` | `key` | bounds | ``), key → bounds;
/// `None` without such a section.
fn page_table(page: &str) -> Option<BTreeMap<String, String>> {
    let section = page.split("\n## ").find(|s| s.starts_with("Bounds"))?;
    let rows = section
        .lines()
        .filter_map(|l| {
            l.strip_prefix("| `")?
                .strip_suffix(" |")?
                .split_once("` | ")
        })
        .map(|(key, bounds)| (key.to_string(), bounds.to_string()))
        .collect();
    Some(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Section {
        timeout: Duration,
        level: f64,
        count: u64,
    }

    const TIMEOUT: Bound<Section, Duration> = Bound::new(
        "app.timeout",
        Duration::from_millis(100),
        Duration::from_secs(3600),
        |s| s.timeout,
    );
    const LEVEL: Bound<Section, f64> = Bound::below("app.level", 0.0, 1.0, |s| s.level);
    const COUNT: Bound<Section, u64> = Bound::at_least("app.count", 1, |s| s.count);

    fn errors(section: &Section) -> Vec<String> {
        let mut errors = Vec::new();
        TIMEOUT.check(section, &mut errors);
        LEVEL.check(section, &mut errors);
        COUNT.check(section, &mut errors);
        errors
            .into_iter()
            .map(|e| format!("{}: {}", e.key, e.message))
            .collect()
    }

    #[test]
    fn each_range_is_stated_and_checked_in_the_same_words() {
        assert_eq!(TIMEOUT.stated(), "100ms to 1h");
        assert_eq!(LEVEL.stated(), "0 to below 1");
        assert_eq!(COUNT.stated(), "at least 1");
        let edges = Section {
            timeout: Duration::from_secs(3600),
            level: 0.0,
            count: 1,
        };
        assert_eq!(errors(&edges), Vec::<String>::new());
        let outside = Section {
            timeout: Duration::from_millis(99),
            level: 1.0,
            count: 0,
        };
        assert_eq!(
            errors(&outside),
            [
                "app.timeout: must be from 100ms to 1h",
                "app.level: must be from 0 to below 1",
                "app.count: must be at least 1",
            ]
        );
        let over = Section {
            timeout: Duration::from_secs(3601),
            level: f64::NAN,
            count: u64::MAX,
        };
        assert_eq!(errors(&over).len(), 2, "{:?}", errors(&over));
    }

    #[test]
    fn the_page_table_is_read_row_by_row() {
        let page = "# Config\n\n| key | x |\n|---|---|\n| `a` | no |\n\n## Bounds\n\nText.\n\n\
                    | key | bounds |\n|---|---|\n| `app.timeout` | 100ms to 1h |\n\
                    | `app.count` | at least 1 |\n\n## Next\n\n| `b` | no |\n";
        let rows = page_table(page).expect("a Bounds section");
        let expected = BTreeMap::from([
            ("app.count".to_string(), "at least 1".to_string()),
            ("app.timeout".to_string(), "100ms to 1h".to_string()),
        ]);
        assert_eq!(rows, expected);
        assert_eq!(page_table("# Config\n"), None);
        let code = BTreeMap::from([("app.count".to_string(), "at least 1".to_string())]);
        let page = "# Config\n## Bounds\n| `app.count` | at least 1 |\n| `other.key` | x |\n";
        assert_eq!(
            check_page_table(page, |k| k.starts_with("app."), &code),
            Ok(())
        );
        let wrong = check_page_table(page, |_| true, &code).expect_err("other.key is extra");
        assert!(wrong.ends_with("| `app.count` | at least 1 |\n"), "{wrong}");
    }
}

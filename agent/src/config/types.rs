//! Value types that appear in the config file: rates ("1MiB/min"), limits that can be
//! switched off ("off"), and the watched memory figure; sizes ("512MiB") are the shared
//! loader's ([`Size`]), as the demo's are.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use heapwarden_protocol::config::Size;

/// A number or text, as a threshold may be written (`512`, `"512MiB"`, `"off"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeInput {
    Int(u64),
    Text(String),
}

/// A growth rate written like "1MiB/min", "10MiB/s" or "512KiB/h".
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Rate {
    pub bytes_per_second: f64,
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("expected a rate like \"1MiB/min\" (per s, min or h), got {s:?}");
        let (size, per) = s.trim().split_once('/').ok_or_else(bad)?;
        let size: Size = size.parse().map_err(|_| bad())?;
        let seconds = match per.trim() {
            "s" | "sec" => 1.0,
            "m" | "min" => 60.0,
            "h" | "hour" => 3600.0,
            _ => return Err(bad()),
        };
        Ok(Rate {
            bytes_per_second: size.0 as f64 / seconds,
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_min = (self.bytes_per_second * 60.0).round() as u64;
        write!(f, "{}/min", Size(per_min))
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A rule threshold that can be written as "off" to disable the rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Toggle<T> {
    Off,
    On(T),
}

impl<T: Copy> Toggle<T> {
    pub fn get(&self) -> Option<T> {
        match self {
            Toggle::Off => None,
            Toggle::On(v) => Some(*v),
        }
    }
}

impl<T: fmt::Display> Serialize for Toggle<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Toggle::Off => s.serialize_str("off"),
            Toggle::On(v) => s.collect_str(v),
        }
    }
}

impl<'de, T: FromStr<Err = String>> Deserialize<'de> for Toggle<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = match SizeInput::deserialize(d)? {
            SizeInput::Int(n) => n.to_string(),
            SizeInput::Text(s) => s,
        };
        if text.trim().eq_ignore_ascii_case("off") {
            return Ok(Toggle::Off);
        }
        text.parse()
            .map(Toggle::On)
            .map_err(|e: String| serde::de::Error::custom(format!("{e}, or \"off\"")))
    }
}

/// Which memory figure the leak rules watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Watch {
    /// heap allocated when the worker links the probe, else PSS, else RSS.
    Auto,
    Heap,
    Pss,
    Rss,
}

/// How connections are spread over the workers (`pool.balance`; supervisor/listen).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// One `SO_REUSEPORT` socket per slot, the kernel choosing among them in turn (needs
    /// `CAP_BPF`; without it, or when systemd passed the socket: `shared`).
    #[default]
    RoundRobin,
    /// One socket every worker accepts on: whichever worker is idle first takes a
    /// connection.
    Shared,
}

/// Which probe a worker gets (`pool.probe`); `attach` turns it into the worker's env.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeKind {
    /// Node's probe when the command runs node (`node`, `nodejs`, `npm`, `npx`, …);
    /// otherwise none (a Rust worker that links `heapwarden-probes` says hello anyway).
    #[default]
    Auto,
    Node,
    Native,
    Off,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Auto => "auto",
            ProbeKind::Node => "node",
            ProbeKind::Native => "native",
            ProbeKind::Off => "off",
        }
    }
}

/// What the watchdog does when a rule trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeakAction {
    Restart,
    ProfileOnly,
}

/// Whether the `predicted` rule runs (`watchdog.predict`): on by default, and only where
/// `max-memory` is set, since it predicts the crossing of that limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Predict {
    #[default]
    On,
    Off,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_need_a_time_unit() {
        let r: Rate = "1MiB/min".parse().unwrap();
        assert!((r.bytes_per_second - 1048576.0 / 60.0).abs() < 1e-6);
        assert_eq!(
            "10MiB/s".parse::<Rate>().unwrap().bytes_per_second,
            10.0 * 1048576.0
        );
        assert!("1MiB".parse::<Rate>().is_err());
        assert!("1MiB/fortnight".parse::<Rate>().is_err());
    }

    #[test]
    fn toggles_accept_off() {
        let t: Toggle<Size> = toml::from_str::<toml::Table>("v = \"off\"").unwrap()["v"]
            .clone()
            .try_into()
            .unwrap();
        assert_eq!(t, Toggle::Off);
    }
}

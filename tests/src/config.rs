//! A builder for the agent configs the end-to-end tests write: the `[admin]` and `[pool]`
//! lines nearly every test repeats (free ports, worker count, command), plus whatever
//! keys a test sets. Values follow the agent's own override rule: read as TOML when they
//! parse as a number, a boolean or an array, as a string otherwise (`"200ms"`).

use std::fmt;
use std::net::SocketAddr;

use crate::free_port;

/// An agent config; `to_string()` gives the TOML for [`crate::Sandbox::agent`].
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The service address (`pool.listen`).
    pub listen: SocketAddr,
    /// The admin address (`admin.listen`).
    pub admin: SocketAddr,
    sections: Vec<(String, Vec<(String, String)>)>,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl AgentConfig {
    /// `workers` workers running `command`, on free service and admin ports.
    pub fn new(workers: usize, command: &[&str]) -> AgentConfig {
        let (listen, admin) = (loopback(free_port()), loopback(free_port()));
        let config = AgentConfig {
            listen,
            admin,
            sections: Vec::new(),
        };
        let config = config
            .set("admin", "listen", &admin.to_string())
            .set("pool", "workers", &workers.to_string())
            .set("pool", "listen", &listen.to_string());
        if command.is_empty() {
            config
        } else {
            config.command(command)
        }
    }

    /// `workers` workers running `sh -c script`.
    pub fn sh(workers: usize, script: &str) -> AgentConfig {
        AgentConfig::new(workers, &["sh", "-c", script])
    }

    /// Sets `pool.command`.
    pub fn command(self, argv: &[&str]) -> AgentConfig {
        self.set_raw("pool", "command", &toml_array(argv))
    }

    /// Sets `key` in `[section]` (`"pool.restart"`, `"watchdog"`, …) by the override rule.
    pub fn set(self, section: &str, key: &str, value: &str) -> AgentConfig {
        let raw = if looks_like_toml(value) {
            value.to_string()
        } else {
            toml_string(value)
        };
        self.set_raw(section, key, &raw)
    }

    /// Sets `key` to a TOML value written as is.
    pub fn set_raw(mut self, section: &str, key: &str, raw: &str) -> AgentConfig {
        let index = match self.sections.iter().position(|(s, _)| s == section) {
            Some(i) => i,
            None => {
                self.sections.push((section.to_string(), Vec::new()));
                self.sections.len() - 1
            }
        };
        let keys = &mut self.sections[index].1;
        keys.retain(|(k, _)| k != key);
        keys.push((key.to_string(), raw.to_string()));
        self
    }
}

/// A TOML array of strings (`["sh", "-c", "…"]`).
pub fn toml_array(items: &[&str]) -> String {
    let list: Vec<String> = items.iter().map(|a| toml_string(a)).collect();
    format!("[{}]", list.join(", "))
}

fn looks_like_toml(value: &str) -> bool {
    value.parse::<i64>().is_ok()
        || value.parse::<f64>().is_ok_and(|_| value.contains('.'))
        || matches!(value, "true" | "false")
        || value.starts_with('[')
}

/// A TOML basic string.
fn toml_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl fmt::Display for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (section, keys) in &self.sections {
            writeln!(f, "[{section}]")?;
            for (key, value) in keys {
                writeln!(f, "{key} = {value}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sections_in_order_with_typed_values() {
        let config = AgentConfig::sh(2, "echo \"hi\"; exit 3")
            .set("pool", "min-uptime", "200ms")
            .set("pool.restart", "factor", "2.0")
            .set("pool.restart", "max-restarts", "20")
            .set("pool", "min-uptime", "5s");
        let text = config.to_string();
        let expected = format!(
            "[admin]\nlisten = \"{}\"\n[pool]\nworkers = 2\nlisten = \"{}\"\n\
             command = [\"sh\", \"-c\", \"echo \\\"hi\\\"; exit 3\"]\nmin-uptime = \"5s\"\n\
             [pool.restart]\nfactor = 2.0\nmax-restarts = 20\n",
            config.admin, config.listen
        );
        assert_eq!(text, expected);
    }
}

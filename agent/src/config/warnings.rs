//! Settings that are valid but almost certainly not what was meant: reported by
//! `check-config` (on stderr, exit 0) and logged by `run` at start. Today one: a
//! `pool.env.PORT` other than the pool's port, which makes every worker bind that port
//! itself instead of the shared socket (the first one wins, the others crash-loop or
//! are killed at `ready-timeout`), as a PM2 `env: {PORT: 3000}` copied word for word does.

use super::sections::Config;

/// One warning: the key it is about and what is wrong, as a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub key: &'static str,
    pub message: String,
}

pub fn warnings(config: &Config) -> Vec<ConfigWarning> {
    let mut out = Vec::new();
    let listen_port = config.pool.listen.port();
    if let Some(port) = config.pool.env.get("PORT")
        && port.trim() != listen_port.to_string()
    {
        out.push(ConfigWarning {
            key: "pool.env.PORT",
            message: format!(
                "PORT = {port:?} differs from pool.listen {}: workers that listen on $PORT \
                 bind port {port} each instead of the shared socket; remove PORT from \
                 [pool.env] (the agent sets it to the pool's port) or set pool.listen to \
                 that port",
                config.pool.listen
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_in_pool_env_other_than_the_listen_port_is_a_warning() {
        let mut config = Config::default();
        assert!(warnings(&config).is_empty());
        let same = config.pool.listen.port().to_string();
        config.pool.env.insert("PORT".into(), same);
        assert!(warnings(&config).is_empty());
        config.pool.env.insert("PORT".into(), "3000".into());
        let w = warnings(&config);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].key, "pool.env.PORT");
        assert!(w[0].message.contains("\"3000\""), "{}", w[0].message);
    }
}

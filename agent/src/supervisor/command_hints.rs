//! Warnings about a `pool.command` that will run but not as meant, printed by
//! `check-config` (and by `run` before it starts) without failing the config.
//!
//! One so far: gunicorn told to bind `fd://3`. gunicorn already adopts the inherited
//! socket from `LISTEN_FDS` (the agent sets `LISTEN_PID` to the worker's pid, so its
//! systemd check passes); a `bind` of `fd://3` then makes it wrap the same descriptor a
//! second time, the first wrapper's close leaves the second with a closed descriptor,
//! and the worker exits with EBADF at start — a crash loop. Looked for in the command's
//! arguments (`-b`/`--bind`, `--bind=`), a gunicorn config file it names
//! (`-c`/`--config`, a `bind` line there), and `GUNICORN_CMD_ARGS` in `[pool.env]`.

use std::path::{Path, PathBuf};

use crate::config::Config;

/// The bind that crash-loops.
const INHERITED_BIND: &str = "fd://3";

/// Every warning for `config`'s command, one line each.
pub fn warnings(config: &Config) -> Vec<String> {
    let argv = &config.pool.command;
    let cwd = config.pool.cwd.clone();
    let env_args = config.pool.env.get("GUNICORN_CMD_ARGS").map(String::as_str);
    gunicorn_binds_fd3(argv, env_args, cwd.as_deref())
        .map(|place| {
            format!(
                "warning: pool.command: gunicorn is told to bind {INHERITED_BIND} ({place}), but it already \
                 adopts fd 3 from LISTEN_FDS; binding it again fails with EBADF and the worker \
                 crash-loops. Remove that bind: gunicorn serves the agent's socket without one."
            )
        })
        .into_iter()
        .collect()
}

/// Where gunicorn is told to bind fd 3, if it is.
fn gunicorn_binds_fd3(
    argv: &[String],
    env_args: Option<&str>,
    cwd: Option<&Path>,
) -> Option<String> {
    let is_gunicorn = argv.iter().take(3).any(|a| {
        Path::new(a)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("gunicorn"))
    }) || argv.windows(2).any(|w| w[0] == "-m" && w[1] == "gunicorn");
    if !is_gunicorn {
        return None;
    }
    if binds_fd3(argv.iter().map(String::as_str)) {
        return Some("in its arguments".into());
    }
    if env_args.is_some_and(|args| binds_fd3(args.split_whitespace())) {
        return Some("in GUNICORN_CMD_ARGS".into());
    }
    let config_file = argv
        .windows(2)
        .find_map(|w| (w[0] == "-c" || w[0] == "--config").then(|| w[1].clone()));
    let config_file = config_file.or_else(|| {
        argv.iter()
            .find_map(|a| a.strip_prefix("--config=").map(str::to_string))
    });
    let file = config_file.filter(|f| !f.starts_with("python:"))?;
    let path = match cwd {
        Some(dir) if Path::new(&file).is_relative() => dir.join(&file),
        _ => PathBuf::from(&file),
    };
    let text = std::fs::read_to_string(&path).ok()?;
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .any(|l| l.contains("bind") && l.contains(INHERITED_BIND))
        .then(|| format!("in {}", path.display()))
}

fn binds_fd3<'a>(args: impl Iterator<Item = &'a str>) -> bool {
    let args: Vec<&str> = args.collect();
    args.windows(2)
        .any(|w| (w[0] == "-b" || w[0] == "--bind") && w[1] == INHERITED_BIND)
        || args
            .iter()
            .any(|a| a.strip_prefix("--bind=") == Some(INHERITED_BIND) || *a == "-bfd://3")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn gunicorn_binding_fd3_is_found_in_args_env_and_its_config_file() {
        let found = |a: &str, env: Option<&str>| gunicorn_binds_fd3(&argv(a), env, None);
        assert!(found("/srv/venv/bin/gunicorn -b fd://3 app:app", None).is_some());
        assert!(found("python3 -m gunicorn --bind=fd://3 app:app", None).is_some());
        assert!(found("gunicorn app:app", Some("--workers 2 --bind fd://3")).is_some());
        assert_eq!(
            found("gunicorn -w 3 app:app", None),
            None,
            "no bind: adopts fd 3"
        );
        assert_eq!(found("gunicorn -b 127.0.0.1:8000 app:app", None), None);
        assert_eq!(
            found("uvicorn --fd 3 app:app", None),
            None,
            "uvicorn wants --fd 3"
        );
        assert_eq!(
            found("/bin/sh -c true -b fd://3", None),
            None,
            "not gunicorn"
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("conf.py"),
            "workers = 3\nbind = [\"fd://3\"]\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("ok.py"),
            "workers = 3\n# bind = [\"fd://3\"]\n",
        )
        .unwrap();
        let with_file = |a: &str| gunicorn_binds_fd3(&argv(a), None, Some(dir.path()));
        let place = with_file("gunicorn -c conf.py app:app").expect("found in the file");
        assert!(place.contains("conf.py"), "{place}");
        assert_eq!(
            with_file("gunicorn -c ok.py app:app"),
            None,
            "commented out"
        );
        assert_eq!(with_file("gunicorn -c missing.py app:app"), None);
    }
}

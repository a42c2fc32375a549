//! An error with its causes on one line, each once: `the admin token cannot be used:
//! could not read token file /x: No such file or directory (os error 2)`. The agent's
//! error types keep their source out of their own message (thiserror `#[source]` /
//! `#[from]`, or `transparent` when they only wrap), so walking `source()` never
//! repeats a cause. The agent's logs and API answers, and the demo's logs, print errors
//! through this; a binary's edge prints anyhow's `{e:#}`, which walks the same chain.

use std::error::Error;
use std::fmt;

/// Displays `error` and every `source()` below it, joined by `: `.
pub struct Causes<'a>(pub &'a dyn Error);

impl fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            write!(f, ": {cause}")?;
            next = cause.source();
        }
        Ok(())
    }
}

/// `Causes(error).to_string()`.
pub fn causes(error: &dyn Error) -> String {
    Causes(error).to_string()
}

#[cfg(test)]
mod tests {
    use super::causes;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}")]
    struct Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("the admin token cannot be used")]
        Token(#[source] Read),
        #[error(transparent)]
        Plain(#[from] Read),
    }

    #[test]
    fn every_cause_is_printed_once() {
        let read = || Read {
            path: "/x",
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(
            causes(&Outer::Token(read())),
            "the admin token cannot be used: cannot read /x: entity not found"
        );
        assert_eq!(
            causes(&Outer::Plain(read())),
            "cannot read /x: entity not found"
        );
        let wrapped = anyhow::Error::new(Outer::Token(read()));
        assert_eq!(format!("{wrapped:#}"), causes(&Outer::Token(read())));
    }
}

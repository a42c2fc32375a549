//! Standard output of the CLI's verbs. A reader that goes away early
//! (`heapwarden ps --json | head -1`) ends the verb quietly with success, as `ls` or `git`
//! end on SIGPIPE, instead of `println!`'s panic; any other write error is one line on
//! standard error and exit 74 (EX_IOERR).

use std::io::Write;

/// Writes one line to standard output (see the module's header for errors).
pub fn line(args: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{args}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("heapwarden: cannot write to standard output: {e}");
        std::process::exit(74);
    }
}

/// `println!` for the CLI's verbs, through [`line`].
macro_rules! outln {
    () => {
        $crate::cli::out::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::out::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

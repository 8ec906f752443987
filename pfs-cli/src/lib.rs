//! The pfs command-line tools' shared parts: the striped parallel copy engine of `pfs-cp`
//! and `pfs demo` ([`copy`]) and the tools' common helpers ([`tool`]). The binaries are
//! `pfs` (cluster and namespace commands), `pfs-cp` and `pfs-probe`.

pub mod copy;
pub mod error;
pub mod tool;

pub use error::{Error, Result};

/// `println!` for a command's report: when standard output is gone (`pfs getstripe | head`),
/// the command stops quietly with success instead of panicking on the broken pipe.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            return Ok(());
        }
    }};
}

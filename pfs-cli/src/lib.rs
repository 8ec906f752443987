//! The pfs command-line tools' shared parts: the striped parallel copy engine of `pfs-cp`
//! and `pfs demo` ([`copy`]) and the tools' common helpers ([`tool`]). The binaries are
//! `pfs` (cluster and namespace commands), `pfs-cp` and `pfs-probe`.

pub mod copy;
pub mod error;
pub mod tool;

pub use error::{Error, Result};

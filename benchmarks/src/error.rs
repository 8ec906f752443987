//! [`Error`]: why a benchmark run failed (a rank prints it and exits non-zero).

use std::sync::Arc;

/// An error of the benchmarks.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// A pfs client call failed.
    #[error(transparent)]
    Client(#[from] pfs_client::Error),
    /// Starting the embedded cluster failed.
    #[error(transparent)]
    Cluster(#[from] pfs_testkit::Error),
    /// The configuration file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] pfs_common::Error),
    /// The ranks' coordinator or MPI failed.
    #[error(transparent)]
    Comm(#[from] crate::comm::CommError),
    /// A local file operation (the POSIX back end, a JSON report) failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// Bad options.
    #[error("{0}")]
    Invalid(String),
    /// Data read back differs from what was written, or a worker task failed.
    #[error("{0}")]
    Check(String),
}

impl Error {
    /// A local I/O error, `what` naming the file or operation.
    pub fn io(what: impl std::fmt::Display, source: std::io::Error) -> Error {
        Error::Io { what: what.to_string(), source: Arc::new(source) }
    }

    /// The errno-like code of the cause (NotFound for a missing file on either back end).
    pub fn code(&self) -> pfs_common::ErrorCode {
        match self {
            Error::Client(e) => e.code(),
            Error::Cluster(_) | Error::Comm(_) | Error::Check(_) => pfs_common::ErrorCode::Io,
            Error::Config(e) => e.code(),
            Error::Io { source, .. } => pfs_common::ErrorCode::of_io(source),
            Error::Invalid(_) => pfs_common::ErrorCode::Invalid,
        }
    }
}

/// A refused command-line option of pfs-ior or pfs-mdtest (before anything starts). The
/// messages name the options as IOR and mdtest spell them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// `-a` names an API other than PFS and POSIX.
    #[error("unknown api `{0}` (PFS, POSIX, or PFS,POSIX)")]
    UnknownApi(String),
    /// `-a` names no API.
    #[error("empty api list")]
    NoApi,
    /// A size or count that does not parse.
    #[error(transparent)]
    Size(#[from] pfs_common::units::SizeError),
    /// `--size` without `--preset`.
    #[error("--size goes with --preset")]
    SizeWithoutPreset,
    /// An option that must be positive is 0 (`-b, -t and -s`, `-n`, `-i`).
    #[error("{0} must be positive")]
    NotPositive(&'static str),
    /// IOR's block size (`-b`) is not a multiple of its transfer size (`-t`).
    #[error("block size {block} must be a multiple of transfer size {transfer}")]
    BlockNotMultiple { block: u64, transfer: u64 },
    /// A size over its limit (`option` names it, `limit` in bytes).
    #[error("{option} must be at most {limit} bytes")]
    TooLarge { option: &'static str, limit: u64 },
    /// `--posix.odirect` with sizes that are not multiples of the O_DIRECT alignment
    /// (`align` bytes); `hard_records` is the record size of `--preset ior-hard` when that
    /// preset asked for them.
    #[error(
        "--posix.odirect needs the transfer size (-t) and block size (-b) to be multiples of {align} bytes \
         (O_DIRECT alignment); got -t {transfer} and -b {block}{}",
        hard_note(*hard_records)
    )]
    Unaligned { align: u64, transfer: u64, block: u64, hard_records: Option<u64> },
    /// `-o` is empty.
    #[error("-o must name a file")]
    NoFile,
    /// Two options that exclude each other (mdtest's `-F` and `-D`).
    #[error("{0} and {1} exclude each other")]
    Exclusive(&'static str, &'static str),
}

fn hard_note(records: Option<u64>) -> String {
    records.map(|r| format!(" (--preset ior-hard's {r}-byte records cannot be used with O_DIRECT)")).unwrap_or_default()
}

/// Result alias with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

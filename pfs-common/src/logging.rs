//! Log set-up shared by the binaries: `tracing` to stderr, filtered by `PFS_LOG`
//! (default `info`), e.g. `PFS_LOG=pfs_meta=debug`.

/// Installs the stderr subscriber once; later calls do nothing.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(true).try_init();
}

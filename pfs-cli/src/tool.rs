//! Helpers shared by the command-line tools: finding the configuration, a runtime, reporting
//! errors as one line.

use crate::error::{Error, Result};
use pfs_common::config::Config;
use std::path::PathBuf;
use std::sync::Arc;

/// The default configuration file, relative to the working directory.
pub const DEFAULT_CONFIG: &str = "config/local.toml";

/// Loads `--config FILE` (clap also fills it from `PFS_CONFIG`), or `config/local.toml`.
pub fn load_config(arg: Option<PathBuf>) -> Result<Arc<Config>> {
    let path = arg.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    Ok(Arc::new(Config::load(&path)?))
}

/// Prints `tool: error: message` on stderr and exits with status 1.
pub fn die(tool: &str, e: &Error) -> ! {
    eprintln!("{tool}: error: {e}");
    std::process::exit(1)
}

/// A multi-threaded runtime for a tool.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the tokio runtime", e))
}

/// Ends a tool's client session cleanly (a dropped connection would count as an eviction and
/// be fenced on every storage server). A failure here changes nothing for the command's
/// outcome: pfs-meta then ends the session itself.
pub async fn close(client: &pfs_client::Client) {
    if let Err(e) = client.close().await {
        tracing::debug!("closing the session: {e}");
    }
}

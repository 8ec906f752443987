//! `pfs-storage --config FILE --id N`: runs one storage server.

use clap::Parser;
use pfs_common::config::Config;
use pfs_common::ServerId;
use std::path::PathBuf;
use std::sync::Arc;

/// The pfs storage server (one process per storage target).
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Cluster configuration file.
    #[arg(long, env = "PFS_CONFIG", default_value = "config/local.toml")]
    config: PathBuf,
    /// This server's id (its `[[storage]]` section in the config).
    #[arg(long)]
    id: u32,
}

fn main() {
    let args = Args::parse();
    pfs_common::logging::init();
    let result = Config::load(&args.config).map_err(pfs_storage::StorageError::from).and_then(|config| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| pfs_storage::StorageError::io("starting the tokio runtime", e))?;
        rt.block_on(pfs_storage::run(Arc::new(config), ServerId(args.id)))
    });
    if let Err(e) = result {
        eprintln!("pfs-storage: {e}");
        std::process::exit(1);
    }
}

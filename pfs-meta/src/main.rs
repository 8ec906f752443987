//! `pfs-meta --config FILE [--id N]`: one node of the metadata service.

use clap::Parser;
use pfs_common::config::Config;
use std::path::PathBuf;
use std::sync::Arc;

/// The pfs metadata server.
#[derive(Parser, Debug)]
#[command(name = "pfs-meta", version, about)]
struct Args {
    /// The cluster configuration (TOML).
    #[arg(long, env = "PFS_CONFIG", default_value = "config/local.toml")]
    config: PathBuf,
    /// Which metadata node of the config this is (its `[[meta]]` id); may be left out when
    /// the config names only one.
    #[arg(long)]
    id: Option<u64>,
}

fn main() {
    let args = Args::parse();
    pfs_common::logging::init();
    if let Err(e) = start(&args) {
        eprintln!("pfs-meta: {e}");
        std::process::exit(1);
    }
}

fn start(args: &Args) -> pfs_meta::Result<()> {
    let config = Arc::new(Config::load(&args.config)?);
    let id = config.pick_meta_node(args.id)?.id;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| pfs_meta::MetaError::io("starting the tokio runtime", e))?;
    runtime.block_on(pfs_meta::run(config, id))
}

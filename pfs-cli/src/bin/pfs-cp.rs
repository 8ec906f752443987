//! `pfs-cp`: striped parallel copy between local files and pfs.
//!
//! ```text
//! pfs-cp big.bin pfs:/data/big.bin            # local -> pfs
//! pfs-cp pfs:/data/big.bin /tmp/back.bin      # pfs -> local
//! pfs-cp -r pfs:/data pfs:/backup             # pfs -> pfs, recursive
//! pfs-cp --verify --stripe-count 2 --chunk-size 4m in.bin pfs:/in.bin
//! pfs-cp --replicas 2 precious.bin pfs:/precious.bin   # every chunk on two servers
//! ```

use clap::Parser;
use pfs_cli::copy::{copy, total_bytes, CopyOptions, Endpoint};
use pfs_cli::tool;
use pfs_client::CreateOptions;
use std::io::IsTerminal;
use std::path::PathBuf;

/// Striped parallel copy between local files and pfs. pfs paths are written pfs:/dir/file.
#[derive(Parser)]
#[command(name = "pfs-cp", version)]
struct Args {
    /// Cluster configuration file.
    #[arg(long, env = "PFS_CONFIG")]
    config: Option<PathBuf>,
    /// Copy directories recursively.
    #[arg(short = 'r', long)]
    recursive: bool,
    /// Storage targets each new pfs file is striped over (default: all).
    #[arg(long)]
    stripe_count: Option<u32>,
    /// Chunk size of new pfs files, e.g. 1m, 4m (a multiple of the block size).
    #[arg(long, value_parser = pfs_common::units::parse_size)]
    chunk_size: Option<u64>,
    /// Copies of every chunk of new pfs files, each on another storage server (1 to 3;
    /// default: the config's `[layout] replicas`).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=3))]
    replicas: Option<u8>,
    /// Check the copy: into pfs, the SHA-256 of every chunk of the source against the one the
    /// storage servers computed of the bytes they wrote (pfs-meta's chunk map, at the final
    /// fsync); into a local file, every segment read back and compared by SHA-256. Any
    /// difference fails the copy, naming the chunk or byte range.
    #[arg(long)]
    verify: bool,
    /// With --verify, read pfs destinations back from the storage servers too, segment by
    /// segment, instead of checking them against the chunk map (twice the network traffic).
    #[arg(long, requires = "verify")]
    read_back: bool,
    /// Print bytes, time and throughput when done.
    #[arg(long)]
    stats: bool,
    /// Source: a local path or pfs:/path.
    src: String,
    /// Destination: a local path or pfs:/path (an existing directory receives SRC's name).
    dst: String,
}

fn main() {
    pfs_common::logging::init();
    let args = Args::parse();
    if let Err(e) = run(args) {
        tool::die("pfs-cp", &e);
    }
}

fn run(args: Args) -> pfs_cli::Result<()> {
    let config = tool::load_config(args.config)?;
    let rt = tool::runtime()?;
    rt.block_on(async {
        let client = pfs_client::Client::connect(pfs_client::ClientOptions::from_config(&config)?).await?;
        let (src, dst) = (Endpoint::parse(&args.src), Endpoint::parse(&args.dst));
        let progress = if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total_bytes(&client, &src).await?);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .expect("static template"),
            );
            Some(bar)
        } else {
            None
        };
        let opts = CopyOptions {
            recursive: args.recursive,
            create: CreateOptions {
                stripe_count: args.stripe_count,
                chunk_size: args.chunk_size,
                replicas: args.replicas,
                ..Default::default()
            },
            verify: args.verify,
            read_back: args.read_back,
            progress: progress.clone(),
        };
        let result = copy(&client, &src, &dst, &opts).await;
        tool::close(&client).await;
        if let Some(p) = progress {
            p.finish_and_clear();
        }
        let stats = result?;
        if args.stats {
            println!(
                "copied {} files, {} bytes in {:.3} s: {:.1} MiB/s{}",
                stats.files,
                stats.bytes,
                stats.elapsed.as_secs_f64(),
                stats.mib_per_s(),
                if args.verify { ", sha256 verified" } else { "" }
            );
        } else if args.verify && std::io::stderr().is_terminal() {
            eprintln!("verified: the destination has the source's sha256");
        }
        Ok(())
    })
}

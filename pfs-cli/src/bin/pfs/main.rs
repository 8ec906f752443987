//! `pfs`: the cluster tool. Start and stop daemons (`up`, `down`), run the demo, and work
//! with the namespace (`ls`, `stat`, `mkdir`, `rm`, `mv`, `cat`, `df`, `getstripe`).

mod commands;
mod daemons;
mod demo;
mod fsck;
mod meta;
mod mount;

use clap::{Parser, Subcommand};
use pfs_cli::tool;
use std::path::PathBuf;

/// pfs: a striped parallel file system. pfs paths are written /dir/file.
#[derive(Parser)]
#[command(name = "pfs", version)]
struct Args {
    /// Cluster configuration file [default: config/local.toml].
    #[arg(long, global = true, env = "PFS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum MetaCmd {
    /// `meta-<id> <address> <leader|follower|candidate|learner|DOWN> term <T> applied <index>`
    /// for every meta node of the config; exits 0 only if one of them leads.
    Status,
    /// Add meta node ID at ADDR (start it first, with an empty data directory): it catches
    /// up as a learner, then becomes a voter.
    Add { id: u64, address: std::net::SocketAddr },
    /// Remove meta node ID from the group.
    Remove { id: u64 },
}

#[derive(Subcommand)]
enum Cmd {
    /// Start every daemon the config names on this host; returns once all serve.
    Up,
    /// The metadata group: `status` (one line per meta node; exit 0 only with a leader),
    /// `add ID ADDR`, `remove ID` (membership changes online, with the cluster secret).
    Meta {
        #[command(subcommand)]
        action: MetaCmd,
    },
    /// Stop the daemons `pfs up` started.
    Down,
    /// Start a throw-away cluster, stripe a file over it, read it back, verify, measure.
    Demo {
        /// Size of the demo file, e.g. 256m.
        #[arg(long, default_value = "256m", value_parser = pfs_common::units::parse_size)]
        size: u64,
        /// Storage servers in the demo cluster.
        #[arg(long, default_value_t = 4)]
        servers: u32,
        /// Copies of every chunk (as config/local.toml's `[layout] replicas`).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=3))]
        replicas: u8,
        /// Kill (SIGKILL) the metadata leader half way through the copy in; the copy must
        /// finish and verify, and the demo says how long the cluster had no leader.
        #[arg(long)]
        kill_leader: bool,
    },
    /// List a directory (or show one file).
    Ls {
        /// Long format: kind, size, generation, id, mtime.
        #[arg(short = 'l')]
        long: bool,
        #[arg(default_value = "/")]
        path: String,
    },
    /// Show a file's or directory's attributes.
    Stat { path: String },
    /// Make a directory.
    Mkdir {
        /// Make parents as needed; an existing directory is fine.
        #[arg(short = 'p')]
        parents: bool,
        path: String,
    },
    /// Remove a file, or with -r a directory and everything under it.
    Rm {
        #[arg(short = 'r')]
        recursive: bool,
        path: String,
    },
    /// Remove an empty directory.
    Rmdir { path: String },
    /// Rename a file or directory (metadata only: no data moves).
    Mv { from: String, to: String },
    /// Write a file's bytes to standard output.
    Cat { path: String },
    /// Capacity and state of every storage server.
    Df,
    /// A file's layout, and per chunk its holders and SHA-256.
    Getstripe {
        path: String,
        /// Also read every chunk and check its bytes against the recorded SHA-256.
        #[arg(long)]
        verify: bool,
    },
    /// Check the file system: every file's committed chunks against what the storage servers
    /// hold (read and verified against their checksums). Reports lost, corrupt and orphaned
    /// chunks and sizes that disagree with the chunks; exits 1 when it finds any.
    Fsck {
        /// Rewrite lost and corrupt copies from a good replica, and remove orphaned chunks (of
        /// files that no longer exist, past a file's end, or on a server outside the chunk's
        /// chain).
        #[arg(long)]
        repair: bool,
        /// Only compare listings; do not read the chunks to verify their checksums.
        #[arg(long)]
        quick: bool,
    },
    /// Scrub now: every storage server that is up re-reads all its chunks, checks them against
    /// their checksums and SHA-256, and rewrites damaged copies from a good replica. Waits for
    /// the passes and reports; exits 1 if a chunk could not be repaired or a server is down.
    Scrub,
    /// Mount the cluster at MOUNTPOINT (FUSE) and serve it until Ctrl-C, SIGTERM or `pfs
    /// umount`, then unmount. Runs in the foreground.
    Mount {
        mountpoint: PathBuf,
        /// FUSE worker threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// How long the kernel may keep the attributes and names of directories and symbolic
        /// links, ms: path walks and permission checks skip pfs-meta meanwhile, and a
        /// directory another client renames, removes or chmods can be seen as it was for that
        /// long. 0: ask pfs-meta every time. Files are never cached (sizes and names of files
        /// are always current).
        #[arg(long, default_value_t = 1000)]
        dir_cache_ms: u64,
    },
    /// Unmount a pfs mount (`fusermount3 -u`).
    Umount { mountpoint: PathBuf },
    /// Write a new cluster secret (32 random bytes, mode 0400) to FILE, which must not exist;
    /// name it in the config as `[auth] secret_file` and copy it to every host of the cluster.
    /// With --client-key, write instead the client key derived from the config's secret: it
    /// lets a node connect as a client only (`[auth] client_key_file`).
    Keygen {
        file: PathBuf,
        #[arg(long)]
        client_key: bool,
    },
    /// Run one daemon in the foreground (what `pfs up` starts when the dedicated
    /// pfs-meta / pfs-storage binaries are not installed).
    #[command(hide = true)]
    Serve {
        #[command(subcommand)]
        which: Serve,
    },
}

#[derive(Subcommand)]
enum Serve {
    Meta {
        /// Which metadata node of the config (may be left out when it names only one).
        #[arg(long)]
        id: Option<u64>,
    },
    Storage {
        #[arg(long)]
        id: u32,
    },
}

fn main() {
    pfs_common::logging::init();
    let args = Args::parse();
    if let Err(e) = run(args) {
        tool::die("pfs", &e);
    }
}

fn run(args: Args) -> pfs_cli::Result<()> {
    let rt = tool::runtime()?;
    match args.cmd {
        Cmd::Demo { size, servers, replicas, kill_leader } => {
            rt.block_on(demo::run(size, servers, replicas, kill_leader))
        }
        Cmd::Up => rt.block_on(daemons::up(&tool::load_config(args.config.clone())?, &config_path(&args.config))),
        Cmd::Down => daemons::down(&*tool::load_config(args.config)?),
        Cmd::Meta { action } => {
            let config = tool::load_config(args.config)?;
            rt.block_on(async {
                match action {
                    MetaCmd::Status => meta::status(&config).await,
                    MetaCmd::Add { id, address } => meta::add(&config, id, address).await,
                    MetaCmd::Remove { id } => meta::remove(&config, id).await,
                }
            })
        }
        Cmd::Keygen { file, client_key } => keygen(&file, client_key.then_some(args.config)),
        Cmd::Mount { mountpoint, threads, dir_cache_ms } => {
            let dir_ttl = std::time::Duration::from_millis(dir_cache_ms);
            mount::run(rt, &*tool::load_config(args.config)?, &mountpoint, threads, dir_ttl)
        }
        Cmd::Umount { mountpoint } => mount::umount(&mountpoint),
        Cmd::Serve { which } => {
            let config = tool::load_config(args.config)?;
            match which {
                Serve::Meta { id } => {
                    let id = config.pick_meta_node(id)?.id;
                    Ok(rt.block_on(pfs_meta::run(config, id))?)
                }
                Serve::Storage { id } => Ok(rt.block_on(pfs_storage::run(config, pfs_common::ServerId(id)))?),
            }
        }
        cmd => {
            let config = tool::load_config(args.config)?;
            rt.block_on(async move {
                let client = pfs_client::Client::connect(pfs_client::ClientOptions::from_config(&config)?).await?;
                let result = commands::run(&client, cmd).await;
                // End the session cleanly: a dropped connection would be an eviction, fenced on
                // every storage server.
                tool::close(&client).await;
                result
            })
        }
    }
}

/// `pfs keygen`: a new random cluster secret, or (with a config) the client key derived
/// from the config's secret.
fn keygen(file: &std::path::Path, client_key_of: Option<Option<PathBuf>>) -> pfs_cli::Result<()> {
    use pfs_common::auth::{write_new_key, Credentials, Key};
    let key = match client_key_of {
        None => Key::random(),
        Some(config) => {
            let config = tool::load_config(config)?;
            match config.auth(true)?.credentials {
                Some(c @ Credentials::Cluster(_)) => {
                    c.role_key(pfs_common::wire::PeerRole::Client).expect("the secret derives every role key")
                }
                _ => return Err(pfs_cli::Error::Usage("the config names no cluster secret to derive from".into())),
            }
        }
    };
    write_new_key(file, &key)?;
    println!("wrote {} (32 bytes, mode 0400)", file.display());
    Ok(())
}

fn config_path(arg: &Option<PathBuf>) -> PathBuf {
    arg.clone().unwrap_or_else(|| PathBuf::from(tool::DEFAULT_CONFIG))
}

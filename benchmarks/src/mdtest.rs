//! `pfs-mdtest`: mdtest's command line, tree layout, phases and summary, over pfs or POSIX.
//!
//! Layout as mdtest: `<-d>/test-dir.0-<iteration>/mdtest_tree.0/` shared by all ranks, or with
//! `-u` one `mdtest_tree.<rank>` per rank; items are `file.mdtest.<rank>.<i>` and
//! `dir.mdtest.<rank>.<i>`. Each phase (creation, stat, read, removal) starts at a barrier; its
//! rate is all ranks' items over the time from the first rank's start to the last rank's end.

use crate::comm::{now, Comm};
use crate::error::OptionError;
use crate::launch;
use crate::pattern;
use crate::store::{self, Api, Backend};
use crate::Error;
use clap::{Parser, ValueEnum};
use std::path::Path;

/// mdtest presets (io500's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// Empty files, a directory per rank (-F -u), --size files per rank.
    MdtestEasy,
    /// 3901-byte files written and read back, in one shared directory (-F -w 3901 -e 3901).
    MdtestHard,
}

pub const EASY_ITEMS_DEFAULT: u64 = 5000;
pub const HARD_ITEMS_DEFAULT: u64 = 2000;
/// io500's mdtest-hard file size.
pub const HARD_BYTES: u64 = 3901;

/// Metadata benchmark with mdtest's options, over pfs (-a PFS) or local files (-a POSIX).
/// Without --config, runs against an embedded cluster (1 pfs-meta + 4 pfs-storage on loopback).
#[derive(Parser, Debug, Clone)]
#[command(name = "pfs-mdtest", version)]
pub struct MdtestArgs {
    /// API: PFS, POSIX, or PFS,POSIX (both in turn).
    #[arg(short = 'a', value_parser = parse_api)]
    pub api: Option<crate::ior::ApiList>,
    /// Items (files and/or directories) per rank.
    #[arg(short = 'n', value_parser = parse_count)]
    pub items: Option<u64>,
    /// Files only.
    #[arg(short = 'F')]
    pub files_only: bool,
    /// Directories only.
    #[arg(short = 'D')]
    pub dirs_only: bool,
    /// A unique working directory per rank.
    #[arg(short = 'u')]
    pub unique: bool,
    /// Test directory: a pfs path for PFS; for POSIX a local path (relative: under --posix-dir).
    #[arg(short = 'd')]
    pub dir: Option<String>,
    /// Iterations.
    #[arg(short = 'i')]
    pub iterations: Option<u32>,
    /// Bytes written to each file at creation (k/m suffixes).
    #[arg(short = 'w', value_parser = parse_count)]
    pub write_bytes: Option<u64>,
    /// Bytes read from each file in the read phase (k/m suffixes).
    #[arg(short = 'e', value_parser = parse_count)]
    pub read_bytes: Option<u64>,
    #[command(flatten)]
    pub launch: launch::LaunchArgs,
    /// io500-style preset; explicit options override its values.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Items per rank for a preset (k suffix: 10k = 10240).
    #[arg(long, value_parser = parse_count)]
    pub size: Option<u64>,
}

fn parse_api(s: &str) -> Result<crate::ior::ApiList, OptionError> {
    Api::parse_list(s).map(crate::ior::ApiList)
}

fn parse_count(s: &str) -> Result<u64, OptionError> {
    Ok(pfs_common::units::parse_size(s)?)
}

/// Resolved parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub apis: Vec<Api>,
    pub items: u64,
    pub files: bool,
    pub dirs: bool,
    pub unique: bool,
    pub dir: String,
    pub iterations: u32,
    pub write_bytes: u64,
    pub read_bytes: u64,
}

impl MdtestArgs {
    pub fn params(&self) -> Result<Params, OptionError> {
        let (mut items, mut files_only, mut unique, mut w, mut e) = (1000, false, false, 0, 0);
        match self.preset {
            Some(Preset::MdtestEasy) => {
                items = self.size.unwrap_or(EASY_ITEMS_DEFAULT);
                files_only = true;
                unique = true;
            }
            Some(Preset::MdtestHard) => {
                items = self.size.unwrap_or(HARD_ITEMS_DEFAULT);
                files_only = true;
                w = HARD_BYTES;
                e = HARD_BYTES;
            }
            None => {
                if self.size.is_some() {
                    return Err(OptionError::SizeWithoutPreset);
                }
            }
        }
        let files_only = files_only || self.files_only;
        if files_only && self.dirs_only {
            return Err(OptionError::Exclusive("-F", "-D"));
        }
        let p = Params {
            apis: self.api.clone().map(|a| a.0).unwrap_or_else(|| vec![Api::Pfs]),
            items: self.items.unwrap_or(items),
            files: !self.dirs_only,
            dirs: !files_only,
            unique: unique || self.unique,
            dir: self.dir.clone().unwrap_or_else(|| "mdtest".into()),
            iterations: self.iterations.unwrap_or(1),
            write_bytes: self.write_bytes.unwrap_or(w),
            read_bytes: self.read_bytes.unwrap_or(e),
        };
        if p.items == 0 {
            return Err(OptionError::NotPositive("-n"));
        }
        if p.iterations == 0 {
            return Err(OptionError::NotPositive("-i"));
        }
        if p.write_bytes > 1 << 30 || p.read_bytes > 1 << 30 {
            return Err(OptionError::TooLarge { option: "-w and -e", limit: 1 << 30 });
        }
        Ok(p)
    }
}

/// Entry point of the `pfs-mdtest` binary; returns the exit status.
pub fn main() -> i32 {
    let args = MdtestArgs::parse();
    let params = match args.params() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pfs-mdtest: error: {e}");
            return 1;
        }
    };
    let (pfs, posix) = (params.apis.contains(&Api::Pfs), params.apis.contains(&Api::Posix));
    launch::main("pfs-mdtest", &args.launch, pfs, posix, |comm, config, posix_dir| {
        rank_job(comm, &params, config, posix_dir)
    })
}

/// One rank's job, whoever started it (the `--np` launcher or mpirun).
fn rank_job(comm: &mut Comm, p: &Params, config: Option<&Path>, posix_dir: &Path) -> i32 {
    let rank = comm.rank();
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pfs-mdtest: rank {rank}: error: {e}");
            return 1;
        }
    };
    match rt.block_on(run(comm, p, config, posix_dir)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("pfs-mdtest: rank {rank}: error: {e}");
            1
        }
    }
}

/// The phases, in mdtest's summary order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    DirCreate,
    DirStat,
    DirRemove,
    FileCreate,
    FileStat,
    FileRead,
    FileRemove,
    TreeCreate,
    TreeRemove,
}

impl Op {
    pub const ALL: [Op; 9] = [
        Op::DirCreate,
        Op::DirStat,
        Op::DirRemove,
        Op::FileCreate,
        Op::FileStat,
        Op::FileRead,
        Op::FileRemove,
        Op::TreeCreate,
        Op::TreeRemove,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Op::DirCreate => "Directory creation",
            Op::DirStat => "Directory stat",
            Op::DirRemove => "Directory removal",
            Op::FileCreate => "File creation",
            Op::FileStat => "File stat",
            Op::FileRead => "File read",
            Op::FileRemove => "File removal",
            Op::TreeCreate => "Tree creation",
            Op::TreeRemove => "Tree removal",
        }
    }
}

async fn item_op(store: &Backend, op: Op, path: &str, wbuf: &[u8], rbuf: &mut [u8]) -> crate::Result<()> {
    match op {
        Op::DirCreate | Op::TreeCreate => store.mkdir(path).await?,
        Op::DirStat | Op::FileStat => {
            store.stat(path).await?;
        }
        Op::DirRemove | Op::TreeRemove => store.rmdir(path).await?,
        Op::FileCreate => {
            let h = store.create(path).await?;
            if !wbuf.is_empty() {
                h.write_at(0, wbuf).await?;
            }
            h.close().await?;
        }
        Op::FileRead => {
            let h = store.open(path).await?;
            if !rbuf.is_empty() {
                let n = h.read_at(0, rbuf).await?;
                if n < rbuf.len() {
                    return Err(Error::Check(format!("{path}: read {n} of {} bytes", rbuf.len())));
                }
            }
            h.close().await?;
        }
        Op::FileRemove => store.unlink(path).await?,
    }
    Ok(())
}

/// Runs one timed phase of `paths` on every rank; returns the aggregate rate (ops/s).
async fn phase(
    comm: &mut Comm,
    store: &Backend,
    op: Op,
    paths: &[String],
    wbuf: &[u8],
    rbuf: &mut [u8],
) -> crate::Result<f64> {
    comm.barrier()?;
    let t0 = now();
    for path in paths {
        item_op(store, op, path, wbuf, rbuf).await.map_err(|e| Error::Check(format!("{}: {e}", op.label())))?;
    }
    let t1 = now();
    let all = comm.allgather(&[t0, t1, paths.len() as f64])?;
    let start = all.iter().map(|v| v[0]).fold(f64::INFINITY, f64::min);
    let end = all.iter().map(|v| v[1]).fold(f64::NEG_INFINITY, f64::max);
    let ops: f64 = all.iter().map(|v| v[2]).sum();
    Ok(if end > start { ops / (end - start) } else { 0.0 })
}

/// mdtest's summary statistics over iterations: max, min, mean, population standard deviation.
pub fn stats(v: &[f64]) -> (f64, f64, f64, f64) {
    let n = v.len().max(1) as f64;
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (max, min, mean, var.sqrt())
}

/// The summary table.
pub fn summary(rates: &[(Op, Vec<f64>)], iterations: u32) -> String {
    let mut s = format!("\nSUMMARY rate (in ops/sec): (of {iterations} iterations)\n");
    s.push_str(&format!("   {:<27}{:>15}{:>15}{:>15}{:>15}\n", "Operation", "Max", "Min", "Mean", "Std Dev"));
    s.push_str(&format!("   {:<27}{:>15}{:>15}{:>15}{:>15}\n", "---------", "---", "---", "----", "-------"));
    for op in Op::ALL {
        if let Some((_, v)) = rates.iter().find(|(o, v)| *o == op && !v.is_empty()) {
            let (max, min, mean, sd) = stats(v);
            s.push_str(&format!("   {:<26}:{max:>15.3}{min:>15.3}{mean:>15.3}{sd:>15.3}\n", op.label()));
        }
    }
    s
}

async fn run(comm: &mut Comm, p: &Params, config: Option<&Path>, posix_dir: &Path) -> crate::Result<()> {
    let (rank, ranks) = (comm.rank(), comm.size());
    let lead = rank == 0;
    let wbuf = {
        let mut b = vec![0u8; p.write_bytes as usize];
        pattern::fill(&mut b, rank, 0);
        b
    };
    let mut rbuf = vec![0u8; p.read_bytes as usize];
    for &api in &p.apis {
        let (store, top) = match api {
            Api::Pfs => {
                let path =
                    config.ok_or_else(|| Error::Invalid("no cluster configuration passed to the rank".into()))?;
                (Backend::Pfs(crate::connect(path).await?), store::pfs_path(&p.dir)?)
            }
            Api::Posix => (Backend::Posix { odirect: false }, store::posix_path(&p.dir, posix_dir)),
        };
        if lead {
            let cmd: Vec<String> = std::env::args().take_while(|a| a != "--rank").collect();
            println!("-- started at {:.0} (unix seconds) --\n", now());
            println!("pfs-mdtest was launched with {ranks} total task(s) on {} node(s)", comm.nodes());
            println!("Command line used: {}", cmd.join(" "));
            println!("Path: {top}");
            println!("API: {}", api.name());
            let what = match (p.files, p.dirs) {
                (true, true) => "files/directories",
                (true, false) => "files",
                _ => "directories",
            };
            println!("{ranks} tasks, {} {what}", p.items * ranks as u64);
        }
        let mut rates: Vec<(Op, Vec<f64>)> = Op::ALL.iter().map(|o| (*o, Vec::new())).collect();
        let mut record = |op: Op, r: f64| rates.iter_mut().find(|(o, _)| *o == op).unwrap().1.push(r);
        for iter in 0..p.iterations {
            let base = format!("{top}/test-dir.0-{iter}");
            let tree = |r: usize| format!("{base}/mdtest_tree.{}", if p.unique { r } else { 0 });
            if lead {
                store.mkdir_all(&base).await?;
            }
            let my_tree: Vec<String> = if p.unique || lead { vec![tree(rank)] } else { vec![] };
            record(Op::TreeCreate, phase(comm, &store, Op::TreeCreate, &my_tree, &[], &mut []).await?);
            let mine = tree(rank);
            if p.dirs {
                let dirs: Vec<String> = (0..p.items).map(|i| format!("{mine}/dir.mdtest.{rank}.{i}")).collect();
                for op in [Op::DirCreate, Op::DirStat, Op::DirRemove] {
                    record(op, phase(comm, &store, op, &dirs, &[], &mut []).await?);
                }
            }
            if p.files {
                let files: Vec<String> = (0..p.items).map(|i| format!("{mine}/file.mdtest.{rank}.{i}")).collect();
                for op in [Op::FileCreate, Op::FileStat, Op::FileRead, Op::FileRemove] {
                    record(op, phase(comm, &store, op, &files, &wbuf, &mut rbuf).await?);
                }
            }
            record(Op::TreeRemove, phase(comm, &store, Op::TreeRemove, &my_tree, &[], &mut []).await?);
            comm.barrier()?;
            if lead {
                store.rmdir(&base).await?;
            }
        }
        comm.barrier()?;
        store.close().await?;
        if lead {
            print!("{}", summary(&rates, p.iterations));
            println!("-- finished at {:.0} (unix seconds) --", now());
        }
    }
    Ok(())
}

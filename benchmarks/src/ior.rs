//! `pfs-ior`: IOR's command line, access pattern, timing and output, over pfs or POSIX.
//!
//! Offsets as in IOR: in a shared file, rank r's block of segment s starts at
//! `(s × ranks + r) × blockSize`; with `-F` (file per process) at `s × blockSize` of the rank's
//! own file `testFile.%08d`. A block is written in `blockSize / transferSize` transfers.
//!
//! Timing as IOR under MPI, with barriers between the stages (IOR's `-g`): every rank records
//! the open, transfer and close stages; an iteration's bandwidth is the bytes moved by all ranks
//! over the time from the first rank's open to the last rank's close.

use crate::comm::{now, Comm};
use crate::cpu::{self, CpuTimes, CpuUse};
use crate::error::OptionError;
use crate::launch;
use crate::pattern;
use crate::store::{self, AlignedBuf, Api, Backend, Handle};
use crate::Error;
use clap::{Parser, ValueEnum};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const MIB: f64 = 1048576.0;
const MB: f64 = 1_000_000.0;

/// The `-a` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiList(pub Vec<Api>);

fn parse_api(s: &str) -> Result<ApiList, OptionError> {
    Api::parse_list(s).map(ApiList)
}

fn parse_size(s: &str) -> Result<u64, OptionError> {
    Ok(pfs_common::units::parse_size(s)?)
}

/// IOR presets (io500's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// File per process, 2 MiB transfers, one block of --size per rank, fsync.
    IorEasy,
    /// One shared file, 47008-byte transfers and blocks, strided (--size / 47008 segments), fsync.
    IorHard,
}

/// Default bytes per rank of the presets (--size).
pub const EASY_SIZE_DEFAULT: u64 = 256 << 20;
pub const HARD_SIZE_DEFAULT: u64 = 32 << 20;
/// io500's ior-hard transfer size.
pub const HARD_XFER: u64 = 47008;

/// Parallel I/O benchmark with IOR's options, over pfs (-a PFS) or local files (-a POSIX).
/// Without --config, runs against an embedded cluster (1 pfs-meta + 4 pfs-storage on loopback).
#[derive(Parser, Debug, Clone)]
#[command(name = "pfs-ior", version)]
pub struct IorArgs {
    /// API: PFS, POSIX, or PFS,POSIX (both in turn, same job, with the ratio).
    #[arg(short = 'a', value_parser = parse_api)]
    pub api: Option<ApiList>,
    /// blockSize: contiguous bytes per rank per segment (k/m/g suffixes).
    #[arg(short = 'b', value_parser = parse_size)]
    pub block: Option<u64>,
    /// transferSize: bytes per write/read call (k/m/g suffixes).
    #[arg(short = 't', value_parser = parse_size)]
    pub transfer: Option<u64>,
    /// segmentCount.
    #[arg(short = 's')]
    pub segments: Option<u64>,
    /// filePerProc: one file per rank instead of one shared file.
    #[arg(short = 'F')]
    pub file_per_proc: bool,
    /// writeFile (with neither -w nor -r, both).
    #[arg(short = 'w')]
    pub write: bool,
    /// readFile (with neither -w nor -r, both).
    #[arg(short = 'r')]
    pub read: bool,
    /// checkWrite: read back after writing and count wrong bytes.
    #[arg(short = 'W')]
    pub check_write: bool,
    /// checkRead: read again after reading and count wrong bytes.
    #[arg(short = 'R')]
    pub check_read: bool,
    /// reorderTasks: read (and check) what the neighbouring rank (rank + 1) wrote.
    #[arg(short = 'C')]
    pub reorder: bool,
    /// fsync after the write stage (inside the timed write).
    #[arg(short = 'e')]
    pub fsync: bool,
    /// repetitions.
    #[arg(short = 'i')]
    pub reps: Option<u32>,
    /// testFile: a pfs path for PFS; for POSIX, a local path (relative: under --posix-dir).
    #[arg(short = 'o')]
    pub test_file: Option<String>,
    /// randomOffset: transfers of each rank in a random order.
    #[arg(short = 'z')]
    pub random: bool,
    /// keepFile: do not remove the test file(s) at the end.
    #[arg(short = 'k')]
    pub keep: bool,
    /// deadlineForStonewalling: stop a write or read stage after this many seconds.
    #[arg(short = 'D')]
    pub stonewall: Option<u64>,
    /// POSIX API: open the test files with O_DIRECT (bypassing the page cache); -t and -b must
    /// then be multiples of 4096 bytes. The PFS API ignores it.
    #[arg(long = "posix.odirect")]
    pub odirect: bool,
    /// Report the host's CPU time per GiB moved in each write and read stage (from /proc/stat:
    /// every process of the host, the pfs servers included when they run here).
    #[arg(long)]
    pub cpu: bool,
    #[command(flatten)]
    pub launch: launch::LaunchArgs,
    /// io500-style preset; explicit options override its values.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Bytes per rank for a preset (k/m/g suffixes).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The resolved test parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub apis: Vec<Api>,
    pub block: u64,
    pub transfer: u64,
    pub segments: u64,
    pub file_per_proc: bool,
    pub write: bool,
    pub read: bool,
    pub check_write: bool,
    pub check_read: bool,
    pub reorder: bool,
    pub fsync: bool,
    pub reps: u32,
    pub test_file: String,
    pub random: bool,
    pub keep: bool,
    /// Seconds; 0 = no stonewall.
    pub stonewall: u64,
    /// POSIX files opened with O_DIRECT (`--posix.odirect`).
    pub odirect: bool,
    /// Measure the host's CPU time per stage (`--cpu`).
    pub cpu: bool,
}

impl IorArgs {
    /// Applies the preset and IOR's defaults (-b 1m -t 256k -s 1 -i 1 -o testFile) and checks.
    pub fn params(&self) -> Result<Params, OptionError> {
        let (mut block, mut transfer, mut segments, mut fpp, mut fsync) = (1 << 20, 256 << 10, 1, false, false);
        match self.preset {
            Some(Preset::IorEasy) => {
                transfer = 2 << 20;
                block = self.size.unwrap_or(EASY_SIZE_DEFAULT);
                fpp = true;
                fsync = true;
            }
            Some(Preset::IorHard) => {
                transfer = HARD_XFER;
                block = HARD_XFER;
                segments = (self.size.unwrap_or(HARD_SIZE_DEFAULT) / HARD_XFER).max(1);
                fsync = true;
            }
            None => {
                if self.size.is_some() {
                    return Err(OptionError::SizeWithoutPreset);
                }
            }
        }
        let p = Params {
            apis: self.api.clone().map(|a| a.0).unwrap_or_else(|| vec![Api::Pfs]),
            block: self.block.unwrap_or(block),
            transfer: self.transfer.unwrap_or(transfer),
            segments: self.segments.unwrap_or(segments),
            file_per_proc: fpp || self.file_per_proc,
            // IOR: with neither -w nor -r, both.
            write: self.write || !self.read,
            read: self.read || !self.write,
            check_write: self.check_write,
            check_read: self.check_read,
            reorder: self.reorder,
            fsync: fsync || self.fsync,
            reps: self.reps.unwrap_or(1),
            test_file: self.test_file.clone().unwrap_or_else(|| "testFile".into()),
            random: self.random,
            keep: self.keep,
            stonewall: self.stonewall.unwrap_or(0),
            odirect: self.odirect,
            cpu: self.cpu,
        };
        if p.transfer == 0 || p.block == 0 || p.segments == 0 {
            return Err(OptionError::NotPositive("-b, -t and -s"));
        }
        if p.block / p.transfer * p.transfer != p.block {
            return Err(OptionError::BlockNotMultiple { block: p.block, transfer: p.transfer });
        }
        if p.transfer > 1 << 30 {
            return Err(OptionError::TooLarge { option: "transfer size (-t)", limit: 1 << 30 });
        }
        // As IOR: O_DIRECT fails on unaligned transfers, so refuse them before starting. Every
        // offset is a multiple of the transfer size, so aligned sizes give aligned offsets.
        let align = store::DIRECT_ALIGN as u64;
        if p.odirect
            && p.apis.contains(&Api::Posix)
            && (!p.transfer.is_multiple_of(align) || !p.block.is_multiple_of(align))
        {
            let hard_records = (self.preset == Some(Preset::IorHard)).then_some(HARD_XFER);
            return Err(OptionError::Unaligned { align, transfer: p.transfer, block: p.block, hard_records });
        }
        if p.reps == 0 {
            return Err(OptionError::NotPositive("-i"));
        }
        if p.test_file.is_empty() {
            return Err(OptionError::NoFile);
        }
        Ok(p)
    }
}

/// Entry point of the `pfs-ior` binary; returns the exit status.
pub fn main() -> i32 {
    let args = IorArgs::parse();
    let params = match args.params() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pfs-ior: error: {e}");
            return 1;
        }
    };
    // Before any cluster or rank starts: a host without /proc/stat cannot give --cpu figures.
    if params.cpu {
        if let Err(e) = cpu::sample().and_then(|_| cpu::ticks_per_second()) {
            eprintln!("pfs-ior: error: --cpu: {e}");
            return 1;
        }
    }
    let (pfs, posix) = (params.apis.contains(&Api::Pfs), params.apis.contains(&Api::Posix));
    launch::main("pfs-ior", &args.launch, pfs, posix, |comm, config, posix_dir| {
        rank_job(comm, &args, &params, config, posix_dir)
    })
}

/// One rank's job, whoever started it (the `--np` launcher or mpirun).
fn rank_job(comm: &mut Comm, args: &IorArgs, p: &Params, config: Option<&Path>, posix_dir: &Path) -> i32 {
    let rank = comm.rank();
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pfs-ior: rank {rank}: error: {e}");
            return 1;
        }
    };
    match rt.block_on(run(comm, p, config, posix_dir, args.json.as_deref())) {
        Ok(0) => 0,
        Ok(_) => crate::comm::DATA_CHECK_FAILED,
        Err(e) => {
            eprintln!("pfs-ior: rank {rank}: error: {e}");
            1
        }
    }
}

/// Write or read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Write,
    Read,
}

impl Access {
    fn name(self) -> &'static str {
        match self {
            Access::Write => "write",
            Access::Read => "read",
        }
    }
}

/// One row of the results table (one access of one iteration), reduced over ranks.
#[derive(Clone, Debug)]
pub struct Row {
    pub access: &'static str,
    pub iter: u32,
    pub bytes: f64,
    pub bw_mib: f64,
    pub iops: f64,
    pub latency: f64,
    pub open: f64,
    pub wrrd: f64,
    pub close: f64,
    pub total: f64,
    /// The host's CPU use over the stage (`--cpu`; measured by rank 0 only, `None` elsewhere).
    pub cpu: Option<CpuUse>,
}

impl Row {
    /// Busy CPU-seconds of the host per GiB that all ranks moved in the stage (`--cpu`).
    pub fn cpu_per_gib(&self) -> Option<f64> {
        self.cpu.and_then(|c| c.per_gib(self.bytes))
    }
}

/// The byte offsets `owner` accesses, in order.
pub fn offsets(p: &Params, owner: usize, ranks: usize, iter: u32) -> Vec<u64> {
    let per_block = p.block / p.transfer;
    let mut v = Vec::with_capacity((p.segments * per_block) as usize);
    for s in 0..p.segments {
        let base = if p.file_per_proc { s * p.block } else { (s * ranks as u64 + owner as u64) * p.block };
        for j in 0..per_block {
            v.push(base + j * p.transfer);
        }
    }
    if p.random {
        // Fisher-Yates with a splitmix64 stream seeded by (owner, iteration): a reader regenerates
        // the writer's order, which matters for stonewalled runs.
        let mut state = ((owner as u64) << 32 | iter as u64) ^ 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        for i in (1..v.len()).rev() {
            let j = (next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
    v
}

/// The file `owner` accesses.
fn file_of(base: &str, p: &Params, owner: usize) -> String {
    if p.file_per_proc {
        format!("{base}.{owner:08}")
    } else {
        base.to_string()
    }
}

struct Moved {
    bytes: u64,
    count: u64,
    mismatches: u64,
}

/// Runs `owner`'s transfers on `h`: writes of the pattern, or reads (checked with `check`).
#[allow(clippy::too_many_arguments)]
async fn transfers(
    h: &Handle,
    p: &Params,
    access: Access,
    owner: usize,
    ranks: usize,
    iter: u32,
    buf: &mut [u8],
    limit: Option<u64>,
    deadline: Option<f64>,
    check: bool,
) -> crate::Result<Moved> {
    let mut m = Moved { bytes: 0, count: 0, mismatches: 0 };
    for (k, &off) in offsets(p, owner, ranks, iter).iter().enumerate() {
        if limit.is_some_and(|l| k as u64 >= l) || (k > 0 && deadline.is_some_and(|d| now() >= d)) {
            break;
        }
        match access {
            Access::Write => {
                pattern::fill(buf, owner, off);
                h.write_at(off, buf).await?;
            }
            Access::Read => {
                let n = h.read_at(off, buf).await?;
                if check {
                    m.mismatches += pattern::mismatches(&buf[..n], owner, off) + (buf.len() - n) as u64;
                }
            }
        }
        m.bytes += p.transfer;
        m.count += 1;
    }
    Ok(m)
}

fn reduce(all: &[Vec<f64>], access: Access, iter: u32) -> Row {
    let col = |i: usize| all.iter().map(move |v| v[i]);
    let min = |i: usize| col(i).fold(f64::INFINITY, f64::min);
    let max = |i: usize| col(i).fold(f64::NEG_INFINITY, f64::max);
    let bytes: f64 = col(6).sum();
    let count: f64 = col(7).sum();
    let total = max(5) - min(0);
    let wrrd = max(3) - min(2);
    // IOR: the latency of the best rank (its transfer time over its transfer count).
    let latency = all.iter().filter(|v| v[7] > 0.0).map(|v| (v[3] - v[2]) / v[7]).fold(f64::INFINITY, f64::min);
    Row {
        access: access.name(),
        iter,
        bytes,
        bw_mib: if total > 0.0 { bytes / total / MIB } else { 0.0 },
        iops: if wrrd > 0.0 { count / wrrd } else { 0.0 },
        latency: if latency.is_finite() { latency } else { 0.0 },
        open: max(1) - min(0),
        wrrd,
        close: max(5) - min(4),
        total,
        cpu: None,
    }
}

/// IOR's PPDouble: width 10, left-justified; 6 decimals below 1, 2 below 3600, else 0.
pub fn pp(x: f64) -> String {
    if x < 0.0 {
        return "   -      ".to_string();
    }
    let prec = if x < 1.0 {
        6
    } else if x < 3600.0 {
        2
    } else {
        0
    };
    format!("{x:<10.prec$}")
}

/// IOR's table header (two lines).
pub const TABLE_HEADER: &str = "access    bw(MiB/s)  IOPS       Latency(s)  block(KiB) xfer(KiB)  open(s)    wr/rd(s)   close(s)   total(s)   iter\n------    ---------  ----       ----------  ---------- ---------  --------   --------   --------   --------   ----";

/// IOR's table header, with a trailing `CPU-s/GiB` column under `--cpu` (IOR's columns stay
/// where they are).
fn table_header(p: &Params) -> String {
    if p.cpu {
        let (names, rules) = TABLE_HEADER.split_once('\n').unwrap_or((TABLE_HEADER, ""));
        format!("{names} CPU-s/GiB\n{rules} ---------")
    } else {
        TABLE_HEADER.to_string()
    }
}

fn row_line(r: &Row, p: &Params) -> String {
    let mut line = iors_row(r, p);
    if p.cpu {
        line.push(' ');
        line.push_str(pp(r.cpu_per_gib().unwrap_or(-1.0)).trim_end());
    }
    line
}

fn iors_row(r: &Row, p: &Params) -> String {
    format!(
        "{:<10}{} {} {}  {} {}  {} {} {} {} {:<4}",
        r.access,
        pp(r.bw_mib),
        pp(r.iops),
        pp(r.latency),
        pp(p.block as f64 / 1024.0),
        pp(p.transfer as f64 / 1024.0),
        pp(r.open),
        pp(r.wrrd),
        pp(r.close),
        pp(r.total),
        r.iter
    )
}

fn human(bytes: u64) -> String {
    for (unit, name) in [(1u64 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if bytes >= unit && bytes / unit * unit == bytes {
            return format!("{} {name}", bytes / unit);
        }
    }
    if bytes >= 1 << 20 {
        return format!("{:.2} MiB", bytes as f64 / MIB);
    }
    format!("{bytes} bytes")
}

fn stats(v: &[f64]) -> (f64, f64, f64, f64) {
    let n = v.len().max(1) as f64;
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (max, min, mean, var.sqrt())
}

/// The results of one API.
struct ApiResults {
    api: Api,
    path: String,
    rows: Vec<Row>,
}

impl ApiResults {
    fn of(&self, access: &str) -> Vec<&Row> {
        self.rows.iter().filter(|r| r.access == access).collect()
    }

    fn max_mib(&self, access: &str) -> Option<f64> {
        self.of(access).iter().map(|r| r.bw_mib).reduce(f64::max)
    }

    /// The host's CPU use summed over the iterations of `access`, and the bytes they moved.
    fn cpu_total(&self, access: &str) -> Option<(CpuUse, f64)> {
        let rows = self.of(access);
        let mut it = rows.iter().filter_map(|r| r.cpu.map(|c| (c, r.bytes)));
        let first = it.next()?;
        Some(it.fold(first, |(c, b), (c2, b2)| (c.add(&c2), b + b2)))
    }

    /// Busy CPU-seconds per GiB over all iterations of `access` (`--cpu`).
    fn cpu_per_gib(&self, access: &str) -> Option<f64> {
        self.cpu_total(access).and_then(|(c, bytes)| c.per_gib(bytes))
    }
}

/// The job on one rank. Returns the number of mismatched bytes found by checks, over all ranks.
async fn run(
    comm: &mut Comm,
    p: &Params,
    config: Option<&Path>,
    posix_dir: &Path,
    json: Option<&Path>,
) -> crate::Result<u64> {
    let (rank, ranks) = (comm.rank(), comm.size());
    let lead = rank == 0;
    let mut errors_total = 0u64;
    let mut results = Vec::new();
    // --cpu: rank 0 reads the host's counters around every stage (they cover the whole host,
    // so one reader is enough on one host).
    let hz = if p.cpu && lead { Some(cpu::ticks_per_second()?) } else { None };
    let cpu_mark = || -> crate::Result<Option<CpuTimes>> { hz.map(|_| cpu::sample()).transpose() };
    let cpu_use = |a: Option<CpuTimes>, b: Option<CpuTimes>| match (a, b, hz) {
        (Some(a), Some(b), Some(hz)) => Some(CpuUse::between(&a, &b, hz)),
        _ => None,
    };
    if lead {
        let cmd: Vec<String> = std::env::args().take_while(|a| a != "--rank").collect();
        if comm.is_mpi() {
            println!("pfs-ior: MPI coordinated test of parallel I/O ({ranks} MPI ranks on {} node(s))", comm.nodes());
        } else {
            println!("pfs-ior: MPI-style coordinated test of parallel I/O ({ranks} rank processes)");
        }
        println!("{:<20}: {}", "Command line", cmd.join(" "));
    }
    for &api in &p.apis {
        let (store, base) = match api {
            Api::Pfs => {
                let path =
                    config.ok_or_else(|| Error::Invalid("no cluster configuration passed to the rank".into()))?;
                (Backend::Pfs(crate::connect(path).await?), store::pfs_path(&p.test_file)?)
            }
            Api::Posix => (Backend::Posix { odirect: p.odirect }, store::posix_path(&p.test_file, posix_dir)),
        };
        if lead {
            print_options(p, api, &base, ranks, comm.nodes());
        }
        let mut res = ApiResults { api, path: base.clone(), rows: Vec::new() };
        // Aligned for O_DIRECT (--posix.odirect); costs nothing otherwise.
        let mut buf = AlignedBuf::new(p.transfer as usize);
        let reader_owner = if p.reorder { (rank + 1) % ranks } else { rank };
        let deadline = |t: f64| (p.stonewall > 0).then_some(t + p.stonewall as f64);
        for iter in 0..p.reps {
            // Transfers each rank completed in this iteration's write stage (stonewalling).
            let mut written: Option<Vec<u64>> = None;
            if p.write {
                let parent = store::parent(&base);
                if lead && !parent.is_empty() && parent != "/" {
                    store.mkdir_all(parent).await?;
                }
                comm.barrier()?;
                store.unlink_if_exists(&file_of(&base, p, rank)).await?;
                let c0 = cpu_mark()?;
                comm.barrier()?;
                let t0 = now();
                let h = store.create(&file_of(&base, p, rank)).await?;
                let t1 = now();
                comm.barrier()?;
                let t2 = now();
                let m = transfers(&h, p, Access::Write, rank, ranks, iter, &mut buf, None, deadline(t2), false).await?;
                if p.fsync {
                    h.fsync().await?;
                }
                let t3 = now();
                comm.barrier()?;
                let t4 = now();
                h.close().await?;
                let t5 = now();
                // Every rank has closed once the allgather returns: the stage's end.
                let all = comm.allgather(&[t0, t1, t2, t3, t4, t5, m.bytes as f64, m.count as f64])?;
                let c1 = cpu_mark()?;
                if p.stonewall > 0 {
                    written = Some(all.iter().map(|v| v[7] as u64).collect());
                }
                let mut row = reduce(&all, Access::Write, iter);
                row.cpu = cpu_use(c0, c1);
                if lead {
                    if iter == 0 {
                        println!("\nResults: \n\n{}", table_header(p));
                    }
                    println!("{}", row_line(&row, p));
                }
                res.rows.push(row);
                if p.check_write {
                    errors_total +=
                        check(comm, &store, p, &base, reader_owner, iter, &mut buf, &written, "write").await?;
                }
            }
            if p.read {
                let limit = written.as_ref().map(|w| w[reader_owner]);
                let c0 = cpu_mark()?;
                comm.barrier()?;
                let t0 = now();
                let h = store.open(&file_of(&base, p, reader_owner)).await?;
                let t1 = now();
                comm.barrier()?;
                let t2 = now();
                let m = transfers(&h, p, Access::Read, reader_owner, ranks, iter, &mut buf, limit, deadline(t2), false)
                    .await?;
                let t3 = now();
                comm.barrier()?;
                let t4 = now();
                h.close().await?;
                let t5 = now();
                let all = comm.allgather(&[t0, t1, t2, t3, t4, t5, m.bytes as f64, m.count as f64])?;
                let c1 = cpu_mark()?;
                let mut row = reduce(&all, Access::Read, iter);
                row.cpu = cpu_use(c0, c1);
                if lead {
                    if iter == 0 && !p.write {
                        println!("\nResults: \n\n{}", table_header(p));
                    }
                    println!("{}", row_line(&row, p));
                }
                res.rows.push(row);
                if p.check_read {
                    errors_total +=
                        check(comm, &store, p, &base, reader_owner, iter, &mut buf, &written, "read").await?;
                }
            }
            if !p.keep {
                comm.barrier()?;
                if p.file_per_proc || lead {
                    store.unlink_if_exists(&file_of(&base, p, rank)).await?;
                }
            }
        }
        comm.barrier()?;
        store.close().await?;
        if lead {
            print_summary(&res, p, ranks, comm.nodes());
        }
        results.push(res);
    }
    if lead {
        if results.len() > 1 {
            print_ratio(&results, p);
        }
        if p.check_write || p.check_read {
            if errors_total > 0 {
                println!("\nData check FAILED: {errors_total} mismatched bytes");
                eprintln!("pfs-ior: data check failed: {errors_total} mismatched bytes");
            } else {
                println!("\nData check passed: 0 mismatched bytes");
            }
        }
        if let Some(path) = json {
            std::fs::write(path, to_json(&results, p, ranks, errors_total))
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        }
        println!("Finished            : {} {}", ranks, if comm.is_mpi() { "MPI ranks" } else { "rank processes" });
    }
    Ok(errors_total)
}

/// Reads `owner`'s data again, untimed, and counts wrong bytes over all ranks.
#[allow(clippy::too_many_arguments)]
async fn check(
    comm: &mut Comm,
    store: &Backend,
    p: &Params,
    base: &str,
    owner: usize,
    iter: u32,
    buf: &mut [u8],
    written: &Option<Vec<u64>>,
    what: &str,
) -> crate::Result<u64> {
    comm.barrier()?;
    let h = store.open(&file_of(base, p, owner)).await?;
    let limit = written.as_ref().map(|w| w[owner]);
    let m = transfers(&h, p, Access::Read, owner, comm.size(), iter, buf, limit, None, true).await?;
    h.close().await?;
    let errors = comm.sum(m.mismatches as f64)? as u64;
    if comm.rank() == 0 && errors > 0 {
        println!("WARNING: incorrect data on {what} ({errors} errors found).");
    }
    Ok(errors)
}

fn print_options(p: &Params, api: Api, path: &str, ranks: usize, nodes: usize) {
    let line = |k: &str, v: String| println!("{k:<20}: {v}");
    println!("\nOptions: ");
    line("api", api.name().to_string());
    line("test filename", path.to_string());
    line("access", if p.file_per_proc { "file-per-process" } else { "single-shared-file" }.into());
    line("type", "independent".into());
    line("segments", p.segments.to_string());
    line("ordering in a file", if p.random { "random" } else { "sequential" }.into());
    line("ordering inter file", if p.reorder { "constant task offset" } else { "no tasks offsets" }.into());
    if p.reorder {
        line("task offset", "1".into());
    }
    line("nodes", nodes.to_string());
    line("tasks", ranks.to_string());
    line("clients per node", ranks.div_ceil(nodes.max(1)).to_string());
    line("repetitions", p.reps.to_string());
    line("xfersize", human(p.transfer));
    line("blocksize", human(p.block));
    line("aggregate filesize", human(p.block * p.segments * ranks as u64));
    if p.stonewall > 0 {
        line("stonewallingTime", p.stonewall.to_string());
    }
    if p.fsync {
        line("fsync", "1".into());
    }
    // IOR names the setting useO_DIRECT; it only applies to its POSIX back end.
    if p.odirect {
        match api {
            Api::Posix => {
                line("useO_DIRECT", format!("1 (--posix.odirect: O_DIRECT, {}-byte aligned)", store::DIRECT_ALIGN))
            }
            Api::Pfs => line("useO_DIRECT", "0 (--posix.odirect applies to -a POSIX only)".into()),
        }
    }
    if p.cpu {
        line("cpu", "CPU-s/GiB per stage: the whole host's busy CPU time (/proc/stat) over all ranks' bytes".into());
    }
}

fn print_summary(res: &ApiResults, p: &Params, ranks: usize, nodes: usize) {
    if let Some(m) = res.max_mib("write") {
        println!("Max Write: {:.2} MiB/sec ({:.2} MB/sec)", m, m * MIB / MB);
    }
    if let Some(m) = res.max_mib("read") {
        println!("Max Read:  {:.2} MiB/sec ({:.2} MB/sec)", m, m * MIB / MB);
    }
    for (access, label) in [("write", "CPU Write:"), ("read", "CPU Read: ")] {
        let Some((c, bytes)) = res.cpu_total(access) else { continue };
        let per_gib = c.per_gib(bytes).map_or("-".to_string(), |x| format!("{x:.3}"));
        // Across hosts rank 0 sees its own host only, while the bytes are every rank's.
        let host = if nodes > 1 { format!("rank 0's host only, of {nodes}") } else { "whole host".to_string() };
        // /proc/stat charges whole ticks (10 ms at USER_HZ 100) to the state a CPU is in when
        // the tick fires: under 1 CPU-s (100 ticks) the figure is off by several per cent.
        let coarse = if c.total_s < 1.0 { "; under 1 CPU-s: coarse, /proc/stat counts in ticks" } else { "" };
        println!(
            "{label} {per_gib} CPU-s/GiB ({host}, {} cpus: busy {:.2} of {:.2} CPU-s, {:.0} %, {} iteration(s){coarse})",
            c.cpus,
            c.busy_s,
            c.total_s,
            c.utilisation() * 100.0,
            res.of(access).len()
        );
    }
    println!("\nSummary of all tests:");
    println!("Operation   Max(MiB)   Min(MiB)  Mean(MiB)     StdDev   Max(OPs)   Min(OPs)  Mean(OPs)     StdDev    Mean(s) Test# #Tasks tPN reps fPP reord reordoff reordrand seed segcnt   blksiz    xsize aggs(MiB)   API RefNum");
    for access in ["write", "read"] {
        let rows = res.of(access);
        if rows.is_empty() {
            continue;
        }
        let bw: Vec<f64> = rows.iter().map(|r| r.bw_mib).collect();
        let ops: Vec<f64> = rows.iter().map(|r| r.bw_mib * MIB / p.transfer as f64).collect();
        let times: Vec<f64> = rows.iter().map(|r| r.total).collect();
        let (bmax, bmin, bmean, bsd) = stats(&bw);
        let (omax, omin, omean, osd) = stats(&ops);
        let (_, _, tmean, _) = stats(&times);
        let agg = rows[0].bytes / MIB;
        println!(
            "{access:<9} {bmax:10.2} {bmin:10.2} {bmean:10.2} {bsd:10.2} {omax:10.2} {omin:10.2} {omean:10.2} {osd:10.2} {tmean:10.5} 0 {ranks} {ranks} {} {} {} 1 0 0 {} {} {} {agg:.1} {} 0",
            p.reps,
            p.file_per_proc as u8,
            p.reorder as u8,
            p.segments,
            p.block,
            p.transfer,
            res.api.name(),
        );
    }
}

fn print_ratio(results: &[ApiResults], p: &Params) {
    let (Some(pfs), Some(posix)) =
        (results.iter().find(|r| r.api == Api::Pfs), results.iter().find(|r| r.api == Api::Posix))
    else {
        return;
    };
    println!("\nPFS / POSIX (max bandwidth, same run):");
    for access in ["write", "read"] {
        if let (Some(a), Some(b)) = (pfs.max_mib(access), posix.max_mib(access)) {
            let ratio = if b > 0.0 { a / b } else { 0.0 };
            println!("{access:<9} PFS {a:10.2} MiB/s   POSIX {b:10.2} MiB/s   ratio {ratio:.2}");
        }
    }
    if !p.cpu {
        return;
    }
    println!("PFS / POSIX (host CPU-s per GiB, all iterations):");
    for access in ["write", "read"] {
        if let (Some(a), Some(b)) = (pfs.cpu_per_gib(access), posix.cpu_per_gib(access)) {
            let ratio = if b > 0.0 { format!("{:.2}", a / b) } else { "-".to_string() };
            println!("{access:<9} PFS {a:10.3} CPU-s/GiB   POSIX {b:10.3} CPU-s/GiB   ratio {ratio}");
        }
    }
}

/// A JSON number, or null for none (or a value JSON cannot hold).
fn json_num(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => v.to_string(),
        _ => "null".to_string(),
    }
}

fn to_json(results: &[ApiResults], p: &Params, ranks: usize, errors: u64) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "{{\"tool\":\"pfs-ior\",\"ranks\":{ranks},\"blockSize\":{},\"transferSize\":{},\"segmentCount\":{},\"filePerProc\":{},\"reorderTasks\":{},\"fsync\":{},\"randomOffset\":{},\"repetitions\":{},\"odirect\":{},\"mismatchedBytes\":{errors},\"tests\":[",
        p.block, p.transfer, p.segments, p.file_per_proc, p.reorder, p.fsync, p.random, p.reps, p.odirect
    );
    for (i, r) in results.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{{\"api\":\"{}\",\"testFile\":{:?},\"results\":[", r.api.name(), r.path);
        for (j, row) in r.rows.iter().enumerate() {
            if j > 0 {
                s.push(',');
            }
            let _ = write!(
                s,
                "{{\"access\":\"{}\",\"iteration\":{},\"bytes\":{},\"bwMiB\":{},\"iops\":{},\"latency\":{},\"openTime\":{},\"wrRdTime\":{},\"closeTime\":{},\"totalTime\":{}",
                row.access, row.iter, row.bytes, row.bw_mib, row.iops, row.latency, row.open, row.wrrd, row.close, row.total
            );
            if let Some(c) = row.cpu {
                let _ = write!(
                    s,
                    ",\"cpuSecondsPerGiB\":{},\"cpuBusySeconds\":{},\"cpuTotalSeconds\":{},\"cpus\":{}",
                    json_num(row.cpu_per_gib()),
                    c.busy_s,
                    c.total_s,
                    c.cpus
                );
            }
            s.push('}');
        }
        s.push_str("],\"max\":{");
        let mut first = true;
        for access in ["write", "read"] {
            if let Some(m) = r.max_mib(access) {
                if !first {
                    s.push(',');
                }
                first = false;
                let _ = write!(s, "\"{access}MiB\":{m}");
            }
        }
        s.push('}');
        if p.cpu {
            let _ = write!(
                s,
                ",\"cpuSecondsPerGiB\":{{\"write\":{},\"read\":{}}}",
                json_num(r.cpu_per_gib("write")),
                json_num(r.cpu_per_gib("read"))
            );
        }
        s.push('}');
    }
    s.push_str("]}\n");
    s
}

//! `pfs-tokenbench`: measures the byte-range token manager of pfs-meta over real TCP.
//!
//! Starts an embedded cluster (1 pfs-meta + 4 pfs-storage processes on loopback, like
//! `pfs demo`) unless `--config` names a running one, and measures:
//!
//! 1. the uncontended acquire round trip (one client, a fresh 64-byte Write range per call,
//!    released after each acquire): p50/p99/p99.9/mean in µs;
//! 2. grants per second with `--clients` clients, each its own session and tokio task,
//!    acquiring and releasing disjoint 64-byte ranges of one shared file, and of one file per
//!    client, after a one-client baseline;
//! 3. the contended acquire round trip: two clients take turns acquiring Write on the same 64
//!    bytes, so every acquire includes a revoke pushed to the other client and its ack;
//! 4. token messages of four writers sharing one file through `File::write_at` with
//!    47008-byte records, interleaved (record k by writer k % 4) and in disjoint sequential
//!    segments: acquire round trips and revokes handled per writer.
//!
//! Latencies are measured with `Instant` around single awaited calls, collected in a `Vec` and
//! sorted; nothing is asserted about timing. Build the daemons in the same target directory:
//! `cargo build --release -p benchmarks -p pfs-client -p pfs-meta -p pfs-storage`.

use benchmarks::{Error, Result};
use clap::Parser;
use pfs_client::{ByteRange, Client, ClientOptions, File, Mode};
use pfs_common::config::Config;
use pfs_common::ids::FileId;
use pfs_testkit::LocalCluster;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Record size of the shared-file phase in bytes: the odd, unaligned record size of the
/// 4-writer test, so records straddle blocks and chunks.
const RECORD: u64 = 47008;
/// Bytes per token range in the acquire loops: small and unaligned to nothing in particular,
/// since tokens are byte-exact and not rounded to blocks.
const RANGE: u64 = 64;
/// Writers in the shared-file phase.
const WRITERS: usize = 4;

#[derive(Parser, Debug)]
#[command(name = "pfs-tokenbench", about = "Measure pfs's byte-range token manager over TCP")]
struct Args {
    /// Measured acquire calls per latency phase and per client in the grants phase (a warm-up
    /// of a tenth as many, at least 50, runs first and is not counted).
    #[arg(long, default_value_t = 10000)]
    iterations: usize,
    /// Concurrent clients (sessions) in the grants-per-second phase.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Records per writer in the shared-file phase (47008 bytes each).
    #[arg(long, default_value_t = 16)]
    records: u64,
    /// Configuration file of a running cluster to measure instead of starting an embedded one.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Sorted latencies of one phase.
struct Latency {
    sorted: Vec<Duration>,
}

impl Latency {
    fn new(mut samples: Vec<Duration>) -> Latency {
        samples.sort_unstable();
        Latency { sorted: samples }
    }

    /// Nearest-rank percentile `q` (0..=1) in µs.
    fn pct_us(&self, q: f64) -> f64 {
        if self.sorted.is_empty() {
            return 0.0;
        }
        let rank = ((q * self.sorted.len() as f64).ceil() as usize).clamp(1, self.sorted.len());
        us(self.sorted[rank - 1])
    }

    /// Mean in µs.
    fn mean_us(&self) -> f64 {
        if self.sorted.is_empty() {
            return 0.0;
        }
        us(self.sorted.iter().sum::<Duration>()) / self.sorted.len() as f64
    }

    fn row(&self, name: &str) -> String {
        format!(
            "  {name:<34} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            self.sorted.len(),
            self.pct_us(0.50),
            self.pct_us(0.99),
            self.pct_us(0.999),
            self.mean_us()
        )
    }

    fn json(&self) -> String {
        format!(
            "{{\"samples\": {}, \"p50_us\": {:.1}, \"p99_us\": {:.1}, \"p999_us\": {:.1}, \"mean_us\": {:.1}}}",
            self.sorted.len(),
            self.pct_us(0.50),
            self.pct_us(0.99),
            self.pct_us(0.999),
            self.mean_us()
        )
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Result of the grants-per-second phase.
struct Throughput {
    clients: usize,
    /// Acquire calls (each followed by a release) over all clients.
    grants: u64,
    elapsed: Duration,
}

impl Throughput {
    /// Grants per second of wall-clock time (each grant is one acquire + one release call).
    fn per_sec(&self) -> f64 {
        self.grants as f64 / self.elapsed.as_secs_f64()
    }
}

/// Token traffic of one writer in the shared-file phase.
#[derive(Clone, Copy)]
struct WriterStats {
    records: u64,
    /// Acquire round trips to pfs-meta.
    acquires: u64,
    /// Revokes this writer handled.
    revokes: u64,
}

/// One access pattern of the shared-file phase.
struct Pattern {
    name: &'static str,
    writers: Vec<WriterStats>,
    elapsed: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pfs-tokenbench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    if args.iterations == 0 || args.clients == 0 || args.records == 0 {
        return Err(Error::Invalid("--iterations, --clients and --records must be positive".into()));
    }
    // Kept alive until the end of `run`: dropping it kills the daemons.
    let (config, _cluster, where_) = match &args.config {
        Some(path) => (Arc::new(Config::load(path)?), None, format!("cluster of {}", path.display())),
        None => {
            let c = LocalCluster::start(4).await?;
            let where_ = format!("embedded cluster, 4 storage servers, in {}", c.dir().display());
            (c.config().clone(), Some(c), where_)
        }
    };
    let warmup = (args.iterations / 10).max(50);
    // A fresh directory per run so that runs against a long-lived cluster do not collide.
    let dir = format!(
        "/tokenbench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
    );
    let admin = Client::connect(ClientOptions::from_config(&config)?).await?;
    admin.mkdir_all(&dir).await?;
    println!("pfs-tokenbench: {where_}");
    println!(
        "  iterations {} (warm-up {warmup}), clients {}, shared-file records {} per writer of {RECORD} B",
        args.iterations, args.clients, args.records
    );

    let uncontended = uncontended(&config, &admin, &dir, warmup, args.iterations).await?;
    // One client first: the baseline that shows how far K clients scale.
    let single = grants(&config, &admin, &dir, 1, args.iterations, true, "grants-single").await?;
    let shared = grants(&config, &admin, &dir, args.clients, args.iterations, true, "grants-shared").await?;
    let separate = grants(&config, &admin, &dir, args.clients, args.iterations, false, "grants").await?;
    let (contended, contended_revokes) = contended(&config, &admin, &dir, warmup, args.iterations).await?;
    let interleaved = shared_file(&config, &admin, &dir, args.records, true).await?;
    let segmented = shared_file(&config, &admin, &dir, args.records, false).await?;

    println!();
    println!("Acquire latency (µs; Write, 64-byte range, required = desired)");
    println!("  {:<34} {:>7} {:>9} {:>9} {:>9} {:>9}", "", "samples", "p50", "p99", "p99.9", "mean");
    println!("{}", uncontended.row("uncontended (acquire, release)"));
    println!("{}", contended.row("contended (revoke + ack inside)"));
    println!(
        "  contended: {contended_revokes} revokes handled for {} acquires ({} measured + {warmup} warm-up)",
        contended.sorted.len() + warmup,
        contended.sorted.len()
    );
    println!();
    println!("Grants per second (clients x grants each; acquire + release per grant, disjoint ranges)");
    for (name, t) in [("one client", &single), ("one shared file", &shared), ("one file per client", &separate)] {
        println!(
            "  {name:<22} {} x {} grants in {:>7.1} ms: {:>9.0} grants/s",
            t.clients,
            t.grants / t.clients as u64,
            t.elapsed.as_secs_f64() * 1e3,
            t.per_sec()
        );
    }
    println!();
    println!("Token messages, {WRITERS} writers of one file, {RECORD}-byte records via File::write_at");
    println!("  {:<12} {:>6} {:>8} {:>9} {:>8}", "pattern", "writer", "records", "acquires", "revokes");
    for p in [&interleaved, &segmented] {
        for (i, w) in p.writers.iter().enumerate() {
            println!("  {:<12} {:>6} {:>8} {:>9} {:>8}", p.name, i, w.records, w.acquires, w.revokes);
        }
        let (r, a, v) = totals(p);
        println!(
            "  {:<12} {:>6} {:>8} {:>9} {:>8}   ({:.1} ms incl. fsync and close)",
            p.name,
            "total",
            r,
            a,
            v,
            p.elapsed.as_secs_f64() * 1e3
        );
    }

    if let Some(path) = &args.json {
        let grants =
            [("grants_one_client", &single), ("grants_shared_file", &shared), ("grants_file_per_client", &separate)];
        let json = to_json(&args, &uncontended, &contended, contended_revokes, &grants, &[&interleaved, &segmented]);
        std::fs::write(path, json).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    // Best effort: leave nothing behind on a long-lived cluster.
    for name in ["uncontended", "contended", "interleaved", "segmented", "grants-single", "grants-shared"] {
        let _ = admin.unlink(&format!("{dir}/{name}")).await;
    }
    for k in 0..args.clients {
        let _ = admin.unlink(&format!("{dir}/grants-{k}")).await;
    }
    let _ = admin.rmdir(&dir).await;
    let _ = admin.close().await;
    Ok(())
}

/// Creates an empty file and returns its id. The handle is closed at once so the creating
/// client holds no tokens and keeps no file state that a revoke would have to visit.
async fn make_file(client: &Client, path: &str) -> Result<FileId> {
    let f = client.create(path, &Default::default()).await?;
    let id = f.id();
    f.close().await?;
    Ok(id)
}

fn range(i: u64) -> ByteRange {
    ByteRange::new(i * RANGE, i * RANGE + RANGE)
}

/// Phase 1: one client, acquire then release a fresh range per iteration; only the acquire
/// is timed.
async fn uncontended(config: &Arc<Config>, admin: &Client, dir: &str, warmup: usize, n: usize) -> Result<Latency> {
    let file = make_file(admin, &format!("{dir}/uncontended")).await?;
    let c = Client::connect(ClientOptions::from_config(config)?).await?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..(warmup + n) as u64 {
        let r = range(i);
        let t = Instant::now();
        c.acquire_token(file, Mode::Write, r, r).await?;
        let d = t.elapsed();
        c.release_token(file, r).await?;
        if i >= warmup as u64 {
            samples.push(d);
        }
    }
    c.close().await?;
    Ok(Latency::new(samples))
}

/// Phase 2: `k` clients, each its own session in its own task, acquire and release `n`
/// disjoint ranges; timed from a common start to the last client's end. Warm-up: each client
/// does one pair before the barrier, so connection set-up is not counted.
async fn grants(
    config: &Arc<Config>,
    admin: &Client,
    dir: &str,
    k: usize,
    n: usize,
    shared: bool,
    name: &str,
) -> Result<Throughput> {
    let mut files = Vec::with_capacity(k);
    if shared {
        let f = make_file(admin, &format!("{dir}/{name}")).await?;
        files.resize(k, f);
    } else {
        for j in 0..k {
            files.push(make_file(admin, &format!("{dir}/{name}-{j}")).await?);
        }
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(k + 1));
    let mut tasks = Vec::with_capacity(k);
    for (j, file) in files.into_iter().enumerate() {
        let c = Client::connect(ClientOptions::from_config(config)?).await?;
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            // Client j owns ranges [j*n, (j+1)*n) (+1 for the warm-up pair), so no two
            // clients ever conflict, in the shared file or not.
            let base = j as u64 * (n as u64 + 1);
            let r = range(base + n as u64);
            let first = async {
                c.acquire_token(file, Mode::Write, r, r).await?;
                c.release_token(file, r).await
            }
            .await;
            barrier.wait().await;
            first?;
            for i in 0..n as u64 {
                let r = range(base + i);
                c.acquire_token(file, Mode::Write, r, r).await?;
                c.release_token(file, r).await?;
            }
            let end = Instant::now();
            c.close().await?;
            Ok::<Instant, Error>(end)
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut last = start;
    for t in tasks {
        let end = t.await.map_err(|e| Error::Check(format!("a grant task failed: {e}")))??;
        last = last.max(end);
    }
    Ok(Throughput { clients: k, grants: (k * n) as u64, elapsed: last - start })
}

/// Phase 3: two clients take turns acquiring Write on the same range, never releasing, so
/// each acquire makes pfs-meta revoke the other's token and wait for the ack. Returns the
/// acquire latencies and the revokes both clients handled (about one per acquire).
async fn contended(config: &Arc<Config>, admin: &Client, dir: &str, warmup: usize, n: usize) -> Result<(Latency, u64)> {
    let file = make_file(admin, &format!("{dir}/contended")).await?;
    let a = Client::connect(ClientOptions::from_config(config)?).await?;
    let b = Client::connect(ClientOptions::from_config(config)?).await?;
    let r = range(0);
    a.acquire_token(file, Mode::Write, r, r).await?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let c = if i % 2 == 0 { &b } else { &a };
        let t = Instant::now();
        c.acquire_token(file, Mode::Write, r, r).await?;
        let d = t.elapsed();
        if i >= warmup {
            samples.push(d);
        }
    }
    let revokes = a.stats().revokes + b.stats().revokes;
    a.close().await?;
    b.close().await?;
    Ok((Latency::new(samples), revokes))
}

/// Phase 4: four fresh clients open one file and write `per` records each, interleaved
/// (record k by writer k % 4, one write at a time in record order) or segmented (writer i
/// owns records i*per .. (i+1)*per and writes them in order; the writers take turns record
/// by record, as in the 4-writer test). Then each fsyncs and closes. Counts are read after
/// close, and the file is read back by another client and checked, so the counts come from
/// a run that wrote the right bytes.
async fn shared_file(config: &Arc<Config>, admin: &Client, dir: &str, per: u64, interleaved: bool) -> Result<Pattern> {
    let name = if interleaved { "interleaved" } else { "segmented" };
    let path = format!("{dir}/{name}");
    make_file(admin, &path).await?;
    let mut clients = Vec::with_capacity(WRITERS);
    let mut files: Vec<File> = Vec::with_capacity(WRITERS);
    for _ in 0..WRITERS {
        let c = Client::connect(ClientOptions::from_config(config)?).await?;
        files.push(c.open(&path).await?);
        clients.push(c);
    }
    let total = WRITERS as u64 * per;
    // (record, writer) in issue order.
    let order: Vec<(u64, usize)> = if interleaved {
        (0..total).map(|k| (k, (k % WRITERS as u64) as usize)).collect()
    } else {
        (0..per).flat_map(|r| (0..WRITERS).map(move |i| (i as u64 * per + r, i))).collect()
    };
    let mut records = [0u64; WRITERS];
    let start = Instant::now();
    for &(k, w) in &order {
        files[w].write_at(k * RECORD, &record_bytes(k)).await?;
        records[w] += 1;
    }
    for f in &files {
        f.fsync().await?;
    }
    for f in files {
        f.close().await?;
    }
    let elapsed = start.elapsed();
    let writers = clients
        .iter()
        .zip(records)
        .map(|(c, records)| {
            let s = c.stats();
            WriterStats { records, acquires: s.token_acquires, revokes: s.revokes }
        })
        .collect();
    for c in &clients {
        c.close().await?;
    }
    verify(config, &path, total).await?;
    Ok(Pattern { name, writers, elapsed })
}

/// Record k: `RECORD` bytes of value (k + 1) mod 256.
fn record_bytes(k: u64) -> Vec<u8> {
    vec![(k + 1) as u8; RECORD as usize]
}

async fn verify(config: &Arc<Config>, path: &str, total: u64) -> Result<()> {
    let c = Client::connect(ClientOptions::from_config(config)?).await?;
    let f = c.open(path).await?;
    let mut buf = vec![0u8; RECORD as usize];
    for k in 0..total {
        let n = f.read_at(k * RECORD, &mut buf).await?;
        if n != buf.len() || buf != record_bytes(k) {
            return Err(Error::Check(format!("{path}: record {k} read back wrong ({n} bytes)")));
        }
    }
    f.close().await?;
    Ok(c.close().await?)
}

fn totals(p: &Pattern) -> (u64, u64, u64) {
    p.writers.iter().fold((0, 0, 0), |(r, a, v), w| (r + w.records, a + w.acquires, v + w.revokes))
}

fn to_json(
    args: &Args,
    uncontended: &Latency,
    contended: &Latency,
    contended_revokes: u64,
    grants: &[(&str, &Throughput)],
    patterns: &[&Pattern],
) -> String {
    let mut s = String::from("{\n");
    let _ = writeln!(
        s,
        "  \"iterations\": {}, \"clients\": {}, \"record_bytes\": {RECORD},",
        args.iterations, args.clients
    );
    let _ = writeln!(s, "  \"uncontended_acquire\": {},", uncontended.json());
    let _ = writeln!(s, "  \"contended_acquire\": {},", contended.json());
    let _ = writeln!(s, "  \"contended_revokes\": {contended_revokes},");
    for (name, t) in grants {
        let _ = writeln!(
            s,
            "  \"{name}\": {{\"clients\": {}, \"grants\": {}, \"elapsed_ms\": {:.1}, \"grants_per_s\": {:.0}}},",
            t.clients,
            t.grants,
            t.elapsed.as_secs_f64() * 1e3,
            t.per_sec()
        );
    }
    s.push_str("  \"shared_file\": {\n");
    for (i, p) in patterns.iter().enumerate() {
        let writers: Vec<String> = p
            .writers
            .iter()
            .map(|w| {
                format!("{{\"records\": {}, \"acquires\": {}, \"revokes\": {}}}", w.records, w.acquires, w.revokes)
            })
            .collect();
        let (r, a, v) = totals(p);
        let _ = write!(
            s,
            "    \"{}\": {{\"records\": {r}, \"acquires\": {a}, \"revokes\": {v}, \"elapsed_ms\": {:.1}, \"writers\": [{}]}}",
            p.name,
            p.elapsed.as_secs_f64() * 1e3,
            writers.join(", ")
        );
        s.push_str(if i + 1 < patterns.len() { ",\n" } else { "\n" });
    }
    s.push_str("  }\n}\n");
    s
}

//! `pfs demo`: a throw-away cluster on loopback (3 meta nodes, a Raft group), one file
//! striped over it and read back; with `--kill-leader`, the meta leader is killed (SIGKILL)
//! half way through the copy, which must finish and verify all the same.

use pfs_cli::copy::{copy, sha256_of, CopyOptions, Endpoint};
use pfs_cli::{Error, Result};
use pfs_common::units::human;
use pfs_testkit::{wait_meta_leader, DaemonKind, LocalCluster};
use rand::{RngCore, SeedableRng};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Meta nodes of the demo cluster.
const META_NODES: u16 = 3;

pub async fn run(size: u64, servers: u32, replicas: u8, kill_leader: bool) -> Result<()> {
    // On Ctrl-C the demo future is dropped, and with it the cluster: daemons killed, the
    // temporary directory removed.
    tokio::select! {
        r = demo(size, servers, replicas, kill_leader) => r,
        _ = tokio::signal::ctrl_c() => Err(Error::Usage("interrupted; cluster stopped and removed".into())),
    }
}

async fn demo(size: u64, servers: u32, replicas: u8, kill_leader: bool) -> Result<()> {
    println!(
        "Starting an embedded cluster: {META_NODES} pfs-meta (a Raft group) + {servers} pfs-storage on 127.0.0.1, {replicas} replicas of every chunk ..."
    );
    if (replicas as u32) > servers {
        return Err(Error::Usage(format!("{replicas} replicas need at least {replicas} storage servers")));
    }
    let t = Instant::now();
    let mut cluster = LocalCluster::start_group(META_NODES, servers, |c| c.layout.replicas = replicas).await?;
    let leader = wait_meta_leader(cluster.config(), None, Duration::from_secs(30)).await?;
    println!(
        "  up in {:.2} s, meta-{leader} leads; everything under {}",
        t.elapsed().as_secs_f64(),
        cluster.dir().display()
    );
    let client = cluster.client().await?;

    let input = cluster.dir().join("input.bin");
    let output = cluster.dir().join("output.bin");
    println!("Writing {} of random bytes to {} ...", human(size), input.display());
    write_random(&input, size)?;

    let progress = indicatif::ProgressBar::hidden();
    let opts = CopyOptions { progress: Some(progress.clone()), ..CopyOptions::default() };
    let dst = Endpoint::Pfs("/demo/input.bin".to_string());
    client.mkdir_all("/demo").await?;
    let done = AtomicBool::new(false);
    let copy_in = async {
        let r = copy(&client, &Endpoint::Local(input.clone()), &dst, &opts).await;
        done.store(true, Ordering::Release);
        r
    };
    let killer = async {
        if !kill_leader {
            return Ok(None);
        }
        // Half way through (the copy advances the hidden progress bar); a tool's poll, not a
        // test's synchronisation.
        while progress.position() < size / 2 {
            if done.load(Ordering::Acquire) {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let at = progress.position();
        cluster.kill(DaemonKind::Meta(leader));
        let killed = Instant::now();
        let next = wait_meta_leader(cluster.config(), Some(leader), Duration::from_secs(30)).await?;
        Ok::<_, Error>(Some((at, next, killed.elapsed())))
    };
    let (w, killed) = tokio::join!(copy_in, killer);
    let w = w?;
    match killed? {
        Some((at, next, gap)) => println!(
            "Killed meta-{leader} (the leader, SIGKILL) with {} of {} copied: meta-{next} leads after {:.2} s without a leader",
            human(at),
            human(size),
            gap.as_secs_f64()
        ),
        None if kill_leader => println!("The copy finished before half of it was done? Not killed; try a larger --size"),
        None => {}
    }
    println!(
        "Copied in:   {} in {:.3} s = {:.0} MiB/s (fsync'd on every storage server)",
        human(w.bytes),
        w.elapsed.as_secs_f64(),
        w.mib_per_s()
    );

    let f = client.open("/demo/input.bin").await?;
    let l = f.layout().clone();
    let chunks = client.chunks(f.id(), l.chunk_count(size)).await?;
    println!(
        "Stripe layout of pfs:/demo/input.bin: {} chunks of {}, over {} chains of {} replicas",
        chunks.len(),
        human(l.chunk_size()),
        l.stripe_count(),
        l.replicas
    );
    for id in &l.chains {
        println!("  {}", client.chain(*id).await?.describe());
    }
    for c in chunks.iter().take(6) {
        for h in &c.holders {
            let sha = h.sha256.map(|s| s.to_string()).unwrap_or_else(|| "(not hashed yet)".into());
            println!("  chunk {:>4} on {:<10} {:>8} bytes  sha256 {}", c.chunk, h.server.to_string(), h.len, sha);
        }
    }
    if chunks.len() > 6 {
        println!("  ... ({} more; see `pfs getstripe`)", chunks.len() - 6);
    }
    let mut per_server = std::collections::BTreeMap::new();
    for h in chunks.iter().flat_map(|c| &c.holders) {
        *per_server.entry(h.server).or_insert(0) += 1;
    }
    for (server, n) in per_server {
        println!("  {server}: {n} chunk copies");
    }

    let r = copy(&client, &dst, &Endpoint::Local(output.clone()), &opts).await?;
    println!("Read back:   {} in {:.3} s = {:.0} MiB/s", human(r.bytes), r.elapsed.as_secs_f64(), r.mib_per_s());

    let a = sha256_of(&client, &Endpoint::Local(input)).await?;
    let b = sha256_of(&client, &Endpoint::Local(output)).await?;
    if a != b {
        return Err(Error::Mismatch(format!("MISMATCH: wrote sha256 {a}, read back {b}")));
    }
    println!("Verified:    sha256 {a} on both sides");
    client.close().await?;
    let dir = cluster.dir().to_path_buf();
    cluster.stop();
    println!("Stopped the cluster and removed {}", dir.display());
    Ok(())
}

fn write_random(path: &std::path::Path, size: u64) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path.display(), e))?;
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut buf = vec![0u8; 8 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n]).map_err(|e| Error::io(path.display(), e))?;
        left -= n as u64;
    }
    Ok(())
}

//! `pfs demo`: a throw-away cluster on loopback, one file striped over it and read back.

use pfs_cli::copy::{copy, sha256_of, CopyOptions, Endpoint};
use pfs_cli::{Error, Result};
use pfs_common::units::human;
use pfs_testkit::LocalCluster;
use rand::{RngCore, SeedableRng};
use std::io::Write;
use std::time::Instant;

pub async fn run(size: u64, servers: u32, replicas: u8) -> Result<()> {
    // On Ctrl-C the demo future is dropped, and with it the cluster: daemons killed, the
    // temporary directory removed.
    tokio::select! {
        r = demo(size, servers, replicas) => r,
        _ = tokio::signal::ctrl_c() => Err(Error::Usage("interrupted; cluster stopped and removed".into())),
    }
}

async fn demo(size: u64, servers: u32, replicas: u8) -> Result<()> {
    println!(
        "Starting an embedded cluster: 1 pfs-meta + {servers} pfs-storage on 127.0.0.1, {replicas} replicas of every chunk ..."
    );
    if (replicas as u32) > servers {
        return Err(Error::Usage(format!("{replicas} replicas need at least {replicas} storage servers")));
    }
    let t = Instant::now();
    let cluster = LocalCluster::start_with(servers, |c| c.layout.replicas = replicas).await?;
    println!("  up in {:.2} s, everything under {}", t.elapsed().as_secs_f64(), cluster.dir().display());
    let client = cluster.client().await?;

    let input = cluster.dir().join("input.bin");
    let output = cluster.dir().join("output.bin");
    println!("Writing {} of random bytes to {} ...", human(size), input.display());
    write_random(&input, size)?;

    let opts = CopyOptions::default();
    let dst = Endpoint::Pfs("/demo/input.bin".to_string());
    client.mkdir_all("/demo").await?;
    let w = copy(&client, &Endpoint::Local(input.clone()), &dst, &opts).await?;
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

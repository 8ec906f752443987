//! The namespace commands of `pfs`.

use crate::Cmd;
use pfs_cli::{out, Error, Result};
use pfs_client::path::pfs_path;
use pfs_client::{Client, FileKind};
use pfs_common::chain::ReplicaState;
use pfs_common::ids::Sha256Digest;
use pfs_common::pool;
use pfs_common::units::human;
use std::io::Write;

pub async fn run(client: &Client, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Ls { long, path } => ls(client, &pfs_path(&path)?, long).await,
        Cmd::Stat { path } => stat(client, &pfs_path(&path)?).await,
        Cmd::Mkdir { parents, path } => {
            let p = pfs_path(&path)?;
            if parents {
                Ok(client.mkdir_all(&p).await?)
            } else {
                Ok(client.mkdir(&p).await?)
            }
        }
        Cmd::Rm { recursive, path } => rm(client, &pfs_path(&path)?, recursive).await,
        Cmd::Rmdir { path } => Ok(client.rmdir(&pfs_path(&path)?).await?),
        Cmd::Mv { from, to } => Ok(client.rename(&pfs_path(&from)?, &pfs_path(&to)?).await?),
        Cmd::Cat { path } => cat(client, &pfs_path(&path)?).await,
        Cmd::Df => df(client).await,
        Cmd::Getstripe { path, verify } => getstripe(client, &pfs_path(&path)?, verify).await,
        Cmd::Fsck { repair, quick } => crate::fsck::run(client, repair, !quick).await,
        Cmd::Scrub => scrub(client).await,
        Cmd::Up
        | Cmd::Down
        | Cmd::Meta { .. }
        | Cmd::Demo { .. }
        | Cmd::Serve { .. }
        | Cmd::Keygen { .. }
        | Cmd::Mount { .. }
        | Cmd::Umount { .. } => {
            unreachable!("handled in main")
        }
    }
}

/// `ls -l`'s letter for a kind.
fn kind_letter(kind: FileKind) -> char {
    match kind {
        FileKind::File => '-',
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::Fifo => 'p',
        FileKind::Socket => 's',
        FileKind::CharDevice => 'c',
        FileKind::BlockDevice => 'b',
    }
}

fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::File => "file",
        FileKind::Dir => "directory",
        FileKind::Symlink => "symbolic link",
        FileKind::Fifo => "named pipe",
        FileKind::Socket => "socket",
        FileKind::CharDevice => "character device",
        FileKind::BlockDevice => "block device",
    }
}

/// A time in ns since the Unix epoch as a UTC date and time (to the second).
fn mtime(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's days_from_civil inverse).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

async fn ls(client: &Client, path: &str, long: bool) -> Result<()> {
    let attr = client.stat(path).await?;
    let entries = if attr.kind == FileKind::Dir {
        client.readdir(path).await?
    } else {
        vec![pfs_client::DirEntry {
            name: path.to_string(),
            id: attr.id,
            kind: attr.kind,
            size: attr.size,
            generation: attr.generation,
        }]
    };
    let mut out = std::io::stdout().lock();
    for e in entries {
        let name = if e.kind == FileKind::Dir { format!("{}/", e.name) } else { e.name.clone() };
        let line = if long {
            let kind = kind_letter(e.kind);
            format!("{kind} {:>14} gen {:>6}  id {}  {name}", e.size, e.generation, e.id)
        } else {
            name
        };
        if writeln!(out, "{line}").is_err() {
            break; // stdout closed (| head): stop quietly
        }
    }
    Ok(())
}

async fn stat(client: &Client, path: &str) -> Result<()> {
    let a = client.stat(path).await?;
    out!("path        {path}");
    out!("id          {}", a.id);
    out!("kind        {}", kind_name(a.kind));
    out!("mode        {:04o}  uid {}  gid {}  links {}", a.mode, a.uid, a.gid, a.nlink);
    if let Some(link) = &a.symlink {
        out!("link to     {link}");
    }
    if a.kind == FileKind::Dir {
        out!("entries     {}", a.entries);
    } else {
        out!("size        {} bytes ({})", a.size, human(a.size));
    }
    out!("generation  {}", a.generation);
    out!("atime       {} UTC", mtime(a.atime_ns));
    out!("mtime       {} UTC", mtime(a.mtime_ns));
    out!("ctime       {} UTC", mtime(a.ctime_ns));
    if let Some(l) = &a.layout {
        out!("chunk size  {} bytes ({} blocks of {})", l.chunk_size(), l.stripe_blocks, human(l.block_size as u64));
        out!("replicas    {}", l.replicas);
        out!("stripe      {} chain(s):", l.stripe_count());
        for id in &l.chains {
            out!("              {}", client.chain(*id).await?.describe());
        }
    }
    Ok(())
}

async fn rm(client: &Client, path: &str, recursive: bool) -> Result<()> {
    let a = client.stat(path).await?;
    if a.kind != FileKind::Dir {
        return Ok(client.unlink(path).await?);
    }
    if !recursive {
        return Err(Error::Usage(format!("{path} is a directory (use -r)")));
    }
    // Post-order without recursion: collect directories top-down, remove bottom-up.
    let mut dirs = vec![path.to_string()];
    let mut i = 0;
    while i < dirs.len() {
        let d = dirs[i].clone();
        for e in client.readdir(&d).await? {
            let p = pfs_client::path::join(&d, &e.name);
            if e.kind == FileKind::Dir {
                dirs.push(p);
            } else {
                client.unlink(&p).await?;
            }
        }
        i += 1;
    }
    for d in dirs.iter().rev() {
        client.rmdir(d).await?;
    }
    Ok(())
}

async fn cat(client: &Client, path: &str) -> Result<()> {
    let f = client.open(path).await?;
    let mut buf = pool::global().get(f.layout().chunk_size() as usize * f.layout().stripe_count().max(1));
    let mut off = 0;
    let mut out = std::io::stdout().lock();
    loop {
        let n = f.read_at(off, &mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if out.write_all(&buf[..n]).is_err() {
            return Ok(()); // reader went away (| head)
        }
        off += n as u64;
    }
}

async fn df(client: &Client) -> Result<()> {
    let servers = client.servers().await?;
    out!(
        "{:<12} {:<22} {:<9} {:>10} {:>10} {:>10} {:>5} {:>8}",
        "server",
        "address",
        "state",
        "size",
        "used",
        "free",
        "use%",
        "chunks"
    );
    let (mut cap, mut free) = (0u64, 0u64);
    for s in &servers {
        let used = s.capacity_bytes.saturating_sub(s.free_bytes);
        let pct = (used * 100).checked_div(s.capacity_bytes).unwrap_or(0);
        let state = match (s.up, s.syncing_chains) {
            (false, _) => "DOWN",
            (true, 0) => "up",
            (true, _) => "resyncing",
        };
        out!(
            "{:<12} {:<22} {:<9} {:>10} {:>10} {:>10} {:>4}% {:>8}",
            s.id.to_string(),
            s.address.to_string(),
            state,
            human(s.capacity_bytes),
            human(used),
            human(s.free_bytes),
            pct,
            s.chunks
        );
        if s.up {
            cap += s.capacity_bytes;
            free += s.free_bytes;
        }
    }
    out!(
        "{} of {} servers up; {} free of {}",
        servers.iter().filter(|s| s.up).count(),
        servers.len(),
        human(free),
        human(cap)
    );
    let h = client.health().await?;
    out!(
        "{} of {} chains degraded; {} under-replicated chunks",
        h.degraded_chains,
        h.chains,
        h.under_replicated_chunks
    );
    Ok(())
}

/// Starts a scrub pass on every server that is up, waits for all and reports.
async fn scrub(client: &Client) -> Result<()> {
    let servers = client.servers().await?;
    let mut problems = Vec::new();
    let mut started = Vec::new();
    for s in &servers {
        if !s.up {
            problems.push(format!("{}: down, not scrubbed", s.id));
            continue;
        }
        started.push((s.id, client.scrub(s.id, true).await?.passes));
    }
    let (mut chunks, mut bytes, mut damaged, mut repaired) = (0, 0, 0, 0);
    for (id, before) in started {
        let status = loop {
            let st = client.scrub(id, false).await?;
            if !st.running && st.passes > before {
                break st;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        out!(
            "{id}: {} chunks ({}) checked, {} damaged, {} repaired from a replica",
            status.chunks,
            human(status.bytes),
            status.damaged,
            status.repaired
        );
        problems.extend(status.failures.iter().map(|f| format!("{id}: {f}")));
        chunks += status.chunks;
        bytes += status.bytes;
        damaged += status.damaged;
        repaired += status.repaired;
    }
    for p in &problems {
        out!("{p}");
    }
    out!(
        "scrubbed {chunks} chunks ({}): {damaged} damaged, {repaired} repaired; {} problems",
        human(bytes),
        problems.len()
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Mismatch(format!("scrub left {} problems", problems.len())))
    }
}

async fn getstripe(client: &Client, path: &str, verify: bool) -> Result<()> {
    let f = client.open(path).await?;
    let l = f.layout().clone();
    let size = f.size();
    out!("{path}");
    out!("  file id       {}", f.id());
    out!("  size          {size} bytes ({})", human(size));
    out!("  chunk size    {} bytes ({} x {} byte blocks)", l.chunk_size(), l.stripe_blocks, l.block_size);
    out!("  stripe count  {}", l.stripe_count());
    out!("  replicas      {}", l.replicas);
    let mut chains = std::collections::HashMap::new();
    for (i, id) in l.chains.iter().enumerate() {
        let c = client.refresh_chain(*id).await?;
        let label = if i == 0 { "chains" } else { "" };
        let degraded = if c.degraded() { "  DEGRADED" } else { "" };
        out!("  {label:<12}  {}{degraded}", c.describe());
        chains.insert(*id, c);
    }
    let count = l.chunk_count(size);
    let chunks = client.chunks(f.id(), count).await?;
    out!(
        "  {:>7}  {:>14}  {:>9}  {:<11}  {:<8}  {:<64}{}",
        "chunk",
        "offset",
        "length",
        "replica",
        "state",
        "sha256",
        if verify { "  check" } else { "" }
    );
    let mut buf = pool::global().get(l.chunk_size() as usize);
    let mut bad = Vec::new();
    for x in 0..count {
        let info = chunks.iter().find(|c| c.chunk == x);
        let holders = info.map(|c| c.holders.as_slice()).unwrap_or(&[]);
        let committed = info.and_then(|c| c.committed.as_ref());
        let chain = &chains[&l.chain(x)];
        let offset = l.file_offset(x, 0);
        if holders.is_empty() && committed.is_none() {
            let v = if verify { "  ok" } else { "" };
            out!(
                "  {x:>7}  {offset:>14}  {:>9}  {:<11}  {:<8}  {:<64}{v}",
                "-",
                "(none)",
                "-",
                "(hole: never written)"
            );
            continue;
        }
        for m in &chain.members {
            let held = holders.iter().find(|h| h.server == m.server);
            let len = held.map_or("-".to_string(), |h| h.len.to_string());
            let sha = match held {
                Some(h) => h.sha256.map(|s| s.to_string()).unwrap_or_else(|| "(not hashed yet)".to_string()),
                None => "(holds nothing)".to_string(),
            };
            let mut verdict = |what: &str, problem: Option<String>| -> String {
                if let Some(p) = problem {
                    bad.push(format!("chunk {x} on {}: {p}", m.server));
                }
                if verify {
                    format!("  {what}")
                } else {
                    String::new()
                }
            };
            let v = if !verify {
                String::new()
            } else if m.state != ReplicaState::Serving {
                verdict("NOT VERIFIED", Some(format!("the replica is {}", m.state.as_str())))
            } else {
                // The bytes this replica serves now, hashed; a read error (a lost or corrupt
                // chunk) is the verdict itself.
                let want = l.chunk_len(x, size) as usize;
                match f.read_replica(x, m.server, &mut buf[..want]).await {
                    Err(e) => verdict("UNREADABLE", Some(e.to_string())),
                    Ok(n) => {
                        let read = Sha256Digest::of(&buf[..n]);
                        match committed {
                            Some(c) if c.len > held.map_or(0, |h| h.len) => verdict(
                                "LOST",
                                Some(format!("holds {} of {} committed bytes", held.map_or(0, |h| h.len), c.len)),
                            ),
                            Some(c) if c.sha256.is_some_and(|s| s != read) => verdict(
                                "MISMATCH",
                                Some(format!(
                                    "the bytes read differ from the committed SHA-256 {}",
                                    c.sha256.unwrap_or(read)
                                )),
                            ),
                            _ if held.and_then(|h| h.sha256).is_some_and(|s| s != read) => {
                                verdict("MISMATCH", Some("the bytes read differ from its own SHA-256".into()))
                            }
                            _ => verdict("ok", None),
                        }
                    }
                }
            };
            out!(
                "  {x:>7}  {offset:>14}  {len:>9}  {:<11}  {:<8}  {sha:<64}{v}",
                m.server.to_string(),
                m.state.as_str()
            );
        }
    }
    if verify {
        if !bad.is_empty() {
            for b in &bad {
                eprintln!("pfs getstripe: {path}: {b}");
            }
            return Err(Error::Mismatch(format!("{path}: {} of {count} chunks lost or damaged", bad.len())));
        }
        out!("  all {count} chunks match their committed SHA-256 on every replica");
    }
    Ok(())
}

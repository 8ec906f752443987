//! `pfs fsck`: the namespace and pfs-meta's chunk map against what the storage servers hold.
//!
//! 1. Walk the tree from `/`: every file with its size and layout, and its committed chunks
//!    (pfs-meta's chunk map).
//! 2. List every storage server's chunks (reading each against its block checksums unless
//!    `--quick`).
//! 3. Compare: a committed chunk its holder lacks or holds shorter is **lost**; a chunk that
//!    fails its checksums is **corrupt**; a chunk of no file, past its file's end, or on a
//!    server outside its chain is an **orphan**; a committed chunk past its file's end means
//!    the **size** disagrees with the chunks.
//! 4. With `--repair`: lost and corrupt copies are rewritten from a serving replica of their
//!    chain (by the server holding the bad copy), orphans removed.
//!
//! Files unlinked while open are not in the tree but still exist: their chunks are looked up
//! by id before being called orphans. Run it on a quiet cluster: a file being written has
//! chunks past the size pfs-meta recorded until its writer's next fsync or close.

use pfs_cli::{out, Error, Result};
use pfs_client::{Client, FileKind, ListedState, OrphanCopy};
use pfs_common::chain::{Chain, ChainId};
use pfs_common::layout::Layout;
use pfs_common::{ChunkIndex, ErrorCode, FileId, ServerId};
use std::collections::{BTreeMap, HashMap};

/// A regular file as the walk found it.
struct Found {
    path: String,
    size: u64,
    layout: Layout,
}

/// Chunks per listing page (the servers cap verifying pages lower).
const PAGE: u32 = 4096;

pub async fn run(client: &Client, repair: bool, verify: bool) -> Result<()> {
    let files = walk(client).await?;
    let mut problems: Vec<String> = Vec::new();
    // Committed chunks: (file, chunk) -> (committed length, holders).
    let mut committed: BTreeMap<(FileId, ChunkIndex), (u64, Vec<ServerId>)> = BTreeMap::new();
    for (id, f) in &files {
        // A few chunks past the end too: committed chunks there mean the size is wrong.
        let count = f.layout.chunk_count(f.size) + 8;
        for info in client.chunks(*id, count).await? {
            if let Some(c) = info.committed {
                if f.layout.file_offset(info.chunk, 0) >= f.size {
                    problems.push(format!(
                        "size: {} is {} bytes, but chunk {} ({} bytes) is committed past its end",
                        f.path, f.size, info.chunk, c.len
                    ));
                }
                committed.insert((*id, info.chunk), (c.len, c.holders.iter().map(|h| h.0).collect()));
            }
        }
    }
    let chains: HashMap<ChainId, Chain> = client.all_chains().await?.into_iter().map(|c| (c.id, c)).collect();
    let on_chain = |f: &Found, chunk: ChunkIndex, server: ServerId| {
        chains.get(&f.layout.chain(chunk)).is_some_and(|c| c.state_of(server).is_some())
    };
    let mut orphans: Vec<(ServerId, FileId, OrphanCopy, String)> = Vec::new();
    // Lost or corrupt copies: (server, file, chunk, what).
    let mut damaged: Vec<(ServerId, FileId, ChunkIndex, String)> = Vec::new();
    let mut exists: HashMap<FileId, bool> = HashMap::new();
    let mut listed = 0u64;
    for server in client.servers().await? {
        let id = server.id;
        if !server.up {
            problems.push(format!("down: {id} is not up; its chunks were not checked"));
            continue;
        }
        let mut held: BTreeMap<(FileId, ChunkIndex), u64> = BTreeMap::new();
        let mut after = None;
        loop {
            let page = client.storage_chunks(id, after, PAGE, verify).await?;
            for c in &page.chunks {
                listed += 1;
                held.insert((c.file, c.chunk), c.len);
                if let Some(damage) = &c.damage {
                    let name = files.get(&c.file).map_or_else(|| format!("file {}", c.file), |f| f.path.clone());
                    damaged.push((id, c.file, c.chunk, format!("corrupt: {name} chunk {} on {id}: {damage}", c.chunk)));
                }
                let chunk_copy =
                    OrphanCopy::Chunk { chunk: c.chunk, listed: ListedState { boot: page.boot, change: c.change } };
                match files.get(&c.file) {
                    Some(f) if !on_chain(f, c.chunk, id) => orphans.push((
                        id,
                        c.file,
                        chunk_copy,
                        format!("{} chunk {} is not on a replica of its chain", f.path, c.chunk),
                    )),
                    Some(f) if f.layout.file_offset(c.chunk, 0) >= f.size && c.len > 0 => orphans.push((
                        id,
                        c.file,
                        chunk_copy,
                        format!("{} chunk {} lies past its end ({} bytes)", f.path, c.chunk, f.size),
                    )),
                    Some(_) => {}
                    None => {
                        if !*exists.entry(c.file).or_insert(still_exists(client, c.file).await?) {
                            orphans.push((id, c.file, OrphanCopy::File, format!("file {} does not exist", c.file)));
                        }
                    }
                }
            }
            after = page.chunks.last().map(|c| (c.file, c.chunk));
            if !page.more || after.is_none() {
                break;
            }
        }
        for ((file, chunk), (len, holders)) in committed.iter() {
            // A server that left the chunk's chain (replaced after a long outage) owes nothing.
            if !holders.contains(&id) || !on_chain(&files[file], *chunk, id) {
                continue;
            }
            let path = &files[file].path;
            let found = match held.get(&(*file, *chunk)) {
                None => "missing".to_string(),
                Some(have) if have < len => format!("{have} present"),
                Some(_) => continue,
            };
            damaged.push((
                id,
                *file,
                *chunk,
                format!("lost: {path} chunk {chunk} on {id}: {len} committed bytes, {found}"),
            ));
        }
    }
    let mut rewritten = 0;
    for (server, file, chunk, what) in damaged {
        if !repair {
            problems.push(what);
            continue;
        }
        match client.repair_chunk(server, file, chunk).await {
            Ok(()) => {
                rewritten += 1;
                out!("repaired from a replica: {what}");
            }
            Err(e) => problems.push(format!("{what}; not repaired: {e}")),
        }
    }
    let key = |o: &(ServerId, FileId, OrphanCopy, String)| {
        (
            o.0,
            o.1,
            match o.2 {
                OrphanCopy::File => None,
                OrphanCopy::Chunk { chunk, .. } => Some(chunk),
            },
        )
    };
    orphans.sort_by_key(key);
    orphans.dedup_by_key(|o| key(o));
    let mut repaired = 0;
    for (server, file, copy, why) in &orphans {
        if !repair {
            problems.push(format!("orphan on {server}: {why}"));
            continue;
        }
        // pfs-meta has the last word: a chunk written or opened since the listing is kept.
        match client.remove_orphan(*server, *file, *copy).await {
            Ok(()) => {
                repaired += 1;
                out!("removed orphan on {server}: {why}");
            }
            Err(e) if matches!(e.code(), ErrorCode::Denied | ErrorCode::Conflict) => {
                problems.push(format!("orphan on {server}: {why}; not removed: {e}"))
            }
            Err(e) => return Err(e.into()),
        }
    }
    for p in &problems {
        out!("{p}");
    }
    out!(
        "{} files, {} committed chunks, {listed} chunks listed{}; {} problems{}",
        files.len(),
        committed.len(),
        if verify { " and verified" } else { "" },
        problems.len(),
        match (rewritten, repaired) {
            (0, 0) => String::new(),
            (w, r) => format!(", {w} copies rewritten from replicas, {r} orphans removed"),
        }
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Mismatch(format!("fsck found {} problems", problems.len())))
    }
}

/// Every regular file under `/`, by id.
async fn walk(client: &Client) -> Result<BTreeMap<FileId, Found>> {
    let mut files = BTreeMap::new();
    let mut dirs = vec!["/".to_string()];
    while let Some(dir) = dirs.pop() {
        for e in client.readdir(&dir).await? {
            let path = if dir == "/" { format!("/{}", e.name) } else { format!("{dir}/{}", e.name) };
            match e.kind {
                FileKind::Dir => dirs.push(path),
                FileKind::File => {
                    let attr = client.stat_id(e.id).await?;
                    let layout = attr.layout.ok_or_else(|| Error::Mismatch(format!("{path} has no layout")))?;
                    files.insert(e.id, Found { path, size: attr.size, layout });
                }
                // Links, pipes and devices hold no chunks.
                _ => {}
            }
        }
    }
    Ok(files)
}

/// Whether file `id` exists though no path names it (unlinked while open).
async fn still_exists(client: &Client, id: FileId) -> Result<bool> {
    match client.stat_id(id).await {
        Ok(_) => Ok(true),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

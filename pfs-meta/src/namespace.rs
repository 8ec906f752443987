//! The namespace: inodes and directory entries as a pure state machine, no I/O.
//!
//! Every change runs in two steps. [`Namespace::prepare`] validates an [`Op`] against the
//! current state and decides everything that could vary (new ids, timestamps, chosen chains
//! and the chains created for them), producing a fully determined [`Mutation`]. The caller logs that record to the
//! WAL and applies it with [`Namespace::apply`]. Replaying the same records into a namespace
//! restored from the same checkpoint therefore reaches the same state: a logged operation
//! never decides differently on replay. `apply` still checks that a record fits the state
//! and refuses one that does not (leaving the state untouched), so a damaged or misordered
//! log stops recovery with an error instead of being skipped silently.
//!
//! Queries ([`Namespace::resolve`], [`Namespace::get`], [`Namespace::readdir`]) read the
//! state directly.

use crate::error::{MetaError, Result};
use pfs_common::chain::Chain;
use pfs_common::config::Config;
use pfs_common::layout::{check_replicas, Layout, LayoutChoice, LayoutPolicy, MAX_FILE_SIZE};
use pfs_common::{FileId, ServerId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub mod chains;
pub mod chunk_map;
pub mod path;
pub use chains::{ChainTable, ServerView};
pub use chunk_map::{ChunkMap, ChunkRecord, Commit};
pub use path::split_path;

/// Longest file or directory name, bytes (over it: NameTooLong).
pub const NAME_MAX_BYTES: usize = pfs_common::wire::namespace::NAME_MAX;
/// Longest path, bytes (over it: NameTooLong).
pub const PATH_MAX_BYTES: usize = pfs_common::wire::namespace::PATH_MAX;
/// Most entries one [`Namespace::readdir`] returns.
pub const READDIR_LIMIT_MAX: usize = 4096;

/// File or directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InodeKind {
    File,
    Dir,
}

/// One file or directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub id: FileId,
    pub kind: InodeKind,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Last data or size change, ms since the Unix epoch.
    pub mtime_ms: u64,
    /// Last attribute change, ms since the Unix epoch.
    pub ctime_ms: u64,
    /// Bumped on every change of this inode (for directories: also when entries change).
    pub generation: u64,
    /// The stripe layout (files only).
    pub layout: Option<Layout>,
    /// Layout defaults inherited by children created in it (directories only).
    pub policy: Option<LayoutPolicy>,
    /// Entries by name, in name order (directories only).
    pub entries: BTreeMap<String, FileId>,
}

impl Inode {
    fn touch(&mut self, time_ms: u64) {
        self.generation += 1;
        self.ctime_ms = time_ms;
    }

    /// A copy without the directory entries (what an answer about the inode needs).
    pub fn summary(&self) -> Inode {
        Inode { entries: BTreeMap::new(), ..self.clone() }
    }
}

/// A change a client asks for, before [`Namespace::prepare`] decides it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Make directory `path`. Errors: Exists, NotFound (parent), NotDir.
    Mkdir { path: String },
    /// Create file `path`; without `exclusive` an existing file is answered as it is.
    Create { path: String, layout: LayoutChoice, exclusive: bool },
    /// Move `from` to `to`, replacing a file or an empty directory there.
    Rename { from: String, to: String, expected_generation: Option<u64> },
    /// Remove file `path`.
    Unlink { path: String, expected_generation: Option<u64> },
    /// Remove empty directory `path`.
    Rmdir { path: String, expected_generation: Option<u64> },
    /// Set `file`'s size to `size` bytes exactly (at most [`MAX_FILE_SIZE`]).
    Truncate { file: FileId, size: u64, expected_generation: Option<u64> },
    /// Raise `file`'s size to at least `size` bytes (at most [`MAX_FILE_SIZE`]).
    SetSize { file: FileId, size: u64 },
    /// Storage server `server` made these chunk states durable.
    CommitChunks { server: ServerId, chunks: Vec<(FileId, Commit)> },
    /// Drop `file` if it is an orphan (unlinked while open) that nobody has open any more.
    Reap { file: FileId },
    /// Replace these chains by their next versions (the chain keeper's plan, a `SyncDone`).
    SetChains { chains: Vec<Chain> },
    /// Storage server `server` registered from the process with boot id `boot`.
    Boot { server: ServerId, boot: u64 },
}

/// A fully determined change of the namespace, as logged in the WAL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mutation {
    /// New directory `id` named `name` in `parent`, with the layout policy it inherits.
    Mkdir { parent: FileId, name: String, id: FileId, policy: LayoutPolicy, time_ms: u64 },
    /// New file `id` named `name` in `parent`, with its chosen layout and the chains it
    /// created for it.
    Create { parent: FileId, name: String, id: FileId, layout: Layout, new_chains: Vec<Chain>, time_ms: u64 },
    /// Move an entry; whatever `to_name` named in `to_parent` is dropped, or kept as an
    /// orphan with `orphan` (a file some session has open).
    Rename { from_parent: FileId, from_name: String, to_parent: FileId, to_name: String, time_ms: u64, orphan: bool },
    /// Remove the entry `name` of `parent` (a file or an empty directory) and its inode, or
    /// keep the inode as an orphan with `orphan` (a file some session has open).
    Remove { parent: FileId, name: String, time_ms: u64, orphan: bool },
    /// Set a file's size exactly.
    Truncate { file: FileId, size: u64, time_ms: u64 },
    /// Raise a file's size to at least `size` and set its mtime.
    SetSize { file: FileId, size: u64, time_ms: u64 },
    /// Chunk states `server` made durable become the committed ones.
    CommitChunks { server: ServerId, chunks: Vec<(FileId, Commit)> },
    /// Drop orphan `file` (unlinked while open; the last open is gone).
    Reap { file: FileId },
    /// These chains, each at the version after the current one, replace the current ones.
    SetChains { chains: Vec<Chain> },
    /// The boot id of a storage server's process, kept so that a restart is known even across
    /// a restart of pfs-meta.
    Boot { server: ServerId, boot: u64 },
}

/// What [`Namespace::prepare`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to change (a non-exclusive create of an existing file, a rename onto
    /// itself); the inode the operation is about, if any.
    Unchanged(Option<Inode>),
    /// Log this mutation, then apply it.
    Mutate(Mutation),
}

/// The outcome of [`Namespace::apply`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The file the mutation created or resized, as it is now (without entries).
    pub inode: Option<Inode>,
    /// Files whose inodes were dropped, with the storage targets holding their chunks.
    pub removed_files: Vec<(FileId, Vec<ServerId>)>,
    /// Chains created or changed, as they are now.
    pub chains: Vec<Chain>,
}

/// What `prepare` needs from outside the namespace.
#[derive(Clone)]
pub struct Context<'a> {
    /// Wall-clock time, ms since the Unix epoch; recorded in the mutation.
    pub now_ms: u64,
    /// Storage servers that are up, for the layouts of new files.
    pub up_servers: &'a [ServerId],
    /// Whether some session has the file open (a removed open file becomes an orphan).
    pub is_open: &'a dyn Fn(FileId) -> bool,
}

/// The whole namespace: every inode, the id counter and the placement counter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    inodes: BTreeMap<FileId, Inode>,
    /// The next file id to hand out; ids are never reused.
    next_id: u64,
    /// Round-robin counter choosing the first target of new files (balances load).
    next_first: u64,
    /// Files unlinked (or replaced by a rename) while a session had them open: inodes without
    /// a name, kept readable until the last close ([`Mutation::Reap`]).
    orphans: BTreeSet<FileId>,
    /// Committed chunks of every file.
    chunks: ChunkMap,
    /// Every replication chain.
    chains: ChainTable,
    /// Each storage server's boot id at its last registration.
    boots: BTreeMap<ServerId, u64>,
}

impl Namespace {
    /// An empty namespace: just the root directory, with `root_policy` for new files.
    pub fn new(root_policy: LayoutPolicy) -> Namespace {
        let root = Inode {
            id: FileId::ROOT,
            kind: InodeKind::Dir,
            size: 0,
            mtime_ms: 0,
            ctime_ms: 0,
            generation: 1,
            layout: None,
            policy: Some(root_policy),
            entries: BTreeMap::new(),
        };
        Namespace {
            inodes: BTreeMap::from([(FileId::ROOT, root)]),
            next_id: FileId::ROOT.0 + 1,
            next_first: 0,
            orphans: BTreeSet::new(),
            chunks: ChunkMap::default(),
            chains: ChainTable::default(),
            boots: BTreeMap::new(),
        }
    }

    /// Storage server `server`'s boot id at its last registration, if it ever registered.
    pub fn boot_of(&self, server: ServerId) -> Option<u64> {
        self.boots.get(&server).copied()
    }

    /// The chain table.
    pub fn chains(&self) -> &ChainTable {
        &self.chains
    }

    /// Committed chunks whose chain has fewer serving replicas than it should (a scan).
    pub fn under_replicated(&self) -> u64 {
        let mut layout: Option<(FileId, &Layout)> = None;
        let mut n = 0;
        for ((file, chunk), _) in self.chunks.iter() {
            if layout.is_none_or(|(f, _)| f != file) {
                layout = self.inodes.get(&file).and_then(|i| i.layout.as_ref()).map(|l| (file, l));
            }
            if let Some((_, l)) = layout {
                if self.chains.get(l.chain(chunk)).is_some_and(|c| c.degraded()) {
                    n += 1;
                }
            }
        }
        n
    }

    /// The committed chunk map.
    pub fn chunks(&self) -> &ChunkMap {
        &self.chunks
    }

    /// Files unlinked while open, kept until their last close.
    pub fn orphans(&self) -> &BTreeSet<FileId> {
        &self.orphans
    }

    /// An empty namespace whose root carries the cluster's layout defaults.
    pub fn for_config(config: &Config) -> Namespace {
        Namespace::new(config.layout)
    }

    /// The inode `id`, if it exists.
    pub fn get(&self, id: FileId) -> Option<&Inode> {
        self.inodes.get(&id)
    }

    /// True if `id` names an existing file or directory.
    pub fn exists(&self, id: FileId) -> bool {
        self.inodes.contains_key(&id)
    }

    /// Number of inodes, the root included.
    pub fn len(&self) -> usize {
        self.inodes.len()
    }

    /// Always false: the root exists.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Resolves an absolute path to its inode, as Linux does (see [`path`]: `.`, `..`,
    /// repeated and trailing slashes).
    ///
    /// Errors: BadPath, NameTooLong, NotFound, NotDir (a middle component is a file, or a
    /// trailing slash follows one).
    pub fn resolve(&self, path: &str) -> Result<&Inode> {
        self.resolve_path(path)
    }

    /// The inode `id`. Errors: NoSuchFile.
    pub fn inode(&self, id: FileId) -> Result<&Inode> {
        self.inodes.get(&id).ok_or(MetaError::NoSuchFile { file: id })
    }

    /// The regular file `id`. Errors: NoSuchFile, IsDir.
    pub fn file(&self, id: FileId) -> Result<&Inode> {
        let inode = self.inode(id)?;
        if inode.kind == InodeKind::Dir {
            return Err(MetaError::IsDir { path: format!("file {id}") });
        }
        Ok(inode)
    }

    /// Up to `limit` (at most [`READDIR_LIMIT_MAX`]) entries of directory `path` in name
    /// order after `after`, and whether more follow.
    ///
    /// Errors: BadPath, NotFound, NotDir; NameTooLong for an `after` longer than a name.
    pub fn readdir(&self, path: &str, after: Option<&str>, limit: usize) -> Result<(Vec<(&str, &Inode)>, bool)> {
        after.map_or(Ok(()), |a| path::check_readdir_after(path, a))?;
        let dir = self.resolve(path)?;
        if dir.kind != InodeKind::Dir {
            return Err(MetaError::NotDir { path: path.to_string() });
        }
        let limit = limit.clamp(1, READDIR_LIMIT_MAX);
        let range = match after {
            Some(a) => dir.entries.range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => dir.entries.range::<str, _>(..),
        };
        let mut entries = Vec::new();
        let mut more = false;
        for (name, id) in range {
            if entries.len() == limit {
                more = true;
                break;
            }
            // Entries always name existing inodes (checked by `check_invariants`).
            if let Some(inode) = self.inodes.get(id) {
                entries.push((name.as_str(), inode));
            }
        }
        Ok((entries, more))
    }

    fn entry<'s>(&'s self, parent: &'s Inode, name: &str, path: &str) -> Result<&'s Inode> {
        let id = *parent.entries.get(name).ok_or_else(|| MetaError::NotFound { path: path.to_string() })?;
        self.inode(id)
    }

    /// Validates `op` against the current state and decides its outcome.
    ///
    /// Errors: NotFound, NoSuchFile, Exists, NotDir, IsDir, NotEmpty, BadPath, NameTooLong,
    /// Busy, Invalid, Conflict, NoServers (no storage server up for a new file); each names
    /// the path or file. Paths ending in `.`, `..` or `/` get Linux's errors ([`path`]).
    pub fn prepare(&self, op: &Op, ctx: &Context<'_>) -> Result<Decision> {
        self.check_path_rules(op)?;
        let now = ctx.now_ms;
        match op {
            Op::Mkdir { path } => {
                let (parent, name) = self.parent_of(path)?;
                if parent.entries.contains_key(name) {
                    return Err(MetaError::Exists { path: path.clone() });
                }
                let policy = parent.policy.unwrap_or_default();
                Ok(Decision::Mutate(Mutation::Mkdir {
                    parent: parent.id,
                    name: name.to_string(),
                    id: FileId(self.next_id),
                    policy,
                    time_ms: now,
                }))
            }
            Op::Create { path, layout, exclusive } => {
                let (parent, name) = self.parent_of(path)?;
                if let Some(&id) = parent.entries.get(name) {
                    let existing = self.inode(id)?;
                    if *exclusive {
                        return Err(MetaError::Exists { path: path.clone() });
                    }
                    if existing.kind == InodeKind::Dir {
                        return Err(MetaError::IsDir { path: path.clone() });
                    }
                    return Ok(Decision::Unchanged(Some(existing.summary())));
                }
                let policy = parent.policy.unwrap_or_default();
                let (layout, new_chains) = self.choose_layout(path, layout, &policy, ctx.up_servers)?;
                Ok(Decision::Mutate(Mutation::Create {
                    parent: parent.id,
                    name: name.to_string(),
                    id: FileId(self.next_id),
                    layout,
                    new_chains,
                    time_ms: now,
                }))
            }
            Op::Rename { from, to, expected_generation } => self.prepare_rename(from, to, *expected_generation, ctx),
            Op::Unlink { path, expected_generation } => {
                let (parent, name) = self.parent_of(path)?;
                let target = self.entry(parent, name, path)?;
                if target.kind == InodeKind::Dir {
                    return Err(MetaError::IsDir { path: path.clone() });
                }
                check_generation(path, target, *expected_generation)?;
                let orphan = (ctx.is_open)(target.id);
                Ok(Decision::Mutate(Mutation::Remove {
                    parent: parent.id,
                    name: name.to_string(),
                    time_ms: now,
                    orphan,
                }))
            }
            Op::Rmdir { path, expected_generation } => {
                let (parent, name) = self.parent_of(path)?;
                let target = self.entry(parent, name, path)?;
                if target.kind != InodeKind::Dir {
                    return Err(MetaError::NotDir { path: path.clone() });
                }
                if !target.entries.is_empty() {
                    return Err(MetaError::NotEmpty { path: path.clone(), entries: target.entries.len() as u64 });
                }
                check_generation(path, target, *expected_generation)?;
                let remove =
                    Mutation::Remove { parent: parent.id, name: name.to_string(), time_ms: now, orphan: false };
                Ok(Decision::Mutate(remove))
            }
            Op::Truncate { file, size, expected_generation } => {
                let inode = self.file(*file)?;
                check_size(*file, *size)?;
                check_generation(&format!("file {file}"), inode, *expected_generation)?;
                Ok(Decision::Mutate(Mutation::Truncate { file: *file, size: *size, time_ms: now }))
            }
            Op::SetSize { file, size } => {
                self.file(*file)?;
                check_size(*file, *size)?;
                Ok(Decision::Mutate(Mutation::SetSize { file: *file, size: *size, time_ms: now }))
            }
            Op::CommitChunks { server, chunks } => {
                // Chunks of a removed file are orphaned data, not commits; a state committed
                // already is not logged again.
                let new: Vec<(FileId, Commit)> = chunks
                    .iter()
                    .filter(|(f, c)| {
                        self.inodes.get(f).is_some_and(|i| i.kind == InodeKind::File)
                            && !self.chunks.is_committed(*f, *server, c)
                    })
                    .copied()
                    .collect();
                if new.is_empty() {
                    return Ok(Decision::Unchanged(None));
                }
                Ok(Decision::Mutate(Mutation::CommitChunks { server: *server, chunks: new }))
            }
            Op::Reap { file } => {
                if self.orphans.contains(file) && !(ctx.is_open)(*file) {
                    Ok(Decision::Mutate(Mutation::Reap { file: *file }))
                } else {
                    Ok(Decision::Unchanged(None))
                }
            }
            Op::Boot { server, boot } => match self.boots.get(server) {
                Some(b) if b == boot => Ok(Decision::Unchanged(None)),
                _ => Ok(Decision::Mutate(Mutation::Boot { server: *server, boot: *boot })),
            },
            Op::SetChains { chains } => {
                if chains.is_empty() {
                    return Ok(Decision::Unchanged(None));
                }
                self.chains.check_update(chains).map_err(|why| MetaError::Stale { what: why })?;
                Ok(Decision::Mutate(Mutation::SetChains { chains: chains.clone() }))
            }
        }
    }

    /// The layout of a new file and the chains to create for it.
    fn choose_layout(
        &self,
        path: &str,
        req: &LayoutChoice,
        policy: &LayoutPolicy,
        up: &[ServerId],
    ) -> Result<(Layout, Vec<Chain>)> {
        let block_size = req.block_size.unwrap_or(policy.block_size);
        let chunk_size = req.chunk_size.unwrap_or(policy.chunk_size());
        let stripe_blocks = match chunk_size.checked_div(block_size as u64) {
            Some(n) if n > 0 && chunk_size.is_multiple_of(block_size as u64) => u32::try_from(n).unwrap_or(u32::MAX),
            _ => {
                return Err(MetaError::Invalid(format!(
                    "{path}: chunk size {chunk_size} bytes is not a positive multiple of the block size {block_size}"
                )))
            }
        };
        let mut servers = up.to_vec();
        servers.sort();
        servers.dedup();
        if servers.is_empty() {
            return Err(MetaError::NoServers { path: path.to_string(), why: "no storage server is up".into() });
        }
        let n = servers.len();
        let count = match req.stripe_count.unwrap_or(policy.stripe_count) {
            0 => n,
            c => (c as usize).min(n),
        };
        let replicas = req.replicas.unwrap_or(policy.replicas);
        check_replicas(replicas).map_err(|e| MetaError::Invalid(format!("{path}: {e}")))?;
        let (chains, created) = self
            .chains
            .place(replicas, &servers, count, self.next_first)
            .map_err(|why| MetaError::NoServers { path: path.to_string(), why })?;
        let layout = Layout::new(block_size, stripe_blocks, replicas, chains)
            .map_err(|e| MetaError::Invalid(format!("{path}: {e}")))?;
        Ok((layout, created))
    }

    fn prepare_rename(&self, from: &str, to: &str, expected: Option<u64>, ctx: &Context<'_>) -> Result<Decision> {
        let from_parts = split_path(from)?;
        let to_parts = split_path(to)?;
        let (from_parent, from_name) = self.parent_of(from)?;
        let source = self.entry(from_parent, from_name, from)?;
        check_generation(from, source, expected)?;
        let (to_parent, to_name) = self.parent_of(to)?;
        if from_parts == to_parts {
            // POSIX: renaming a name onto itself does nothing.
            return Ok(Decision::Unchanged(None));
        }
        if source.kind == InodeKind::Dir && to_parts.len() > from_parts.len() && to_parts.starts_with(&from_parts) {
            return Err(MetaError::Invalid(format!("cannot move directory {from} into its own subtree ({to})")));
        }
        let mut orphan = false;
        if let Some(&target_id) = to_parent.entries.get(to_name) {
            let target = self.inode(target_id)?;
            orphan = target.kind == InodeKind::File && (ctx.is_open)(target_id);
            match (source.kind, target.kind) {
                (InodeKind::File, InodeKind::Dir) => return Err(MetaError::IsDir { path: to.to_string() }),
                (InodeKind::Dir, InodeKind::File) => return Err(MetaError::NotDir { path: to.to_string() }),
                (InodeKind::Dir, InodeKind::Dir) if !target.entries.is_empty() => {
                    return Err(MetaError::NotEmpty { path: to.to_string(), entries: target.entries.len() as u64 })
                }
                _ => {}
            }
        }
        Ok(Decision::Mutate(Mutation::Rename {
            from_parent: from_parent.id,
            from_name: from_name.to_string(),
            to_parent: to_parent.id,
            to_name: to_name.to_string(),
            time_ms: ctx.now_ms,
            orphan,
        }))
    }

    /// Applies a mutation made by [`Namespace::prepare`] on this state (or replayed from the
    /// WAL).
    ///
    /// Errors: Invalid naming what does not fit when the record does not apply to this state
    /// (a parent or entry that is missing, a name or id already taken, a size change of a
    /// directory); the state is then unchanged. Records made by `prepare` on the same state
    /// always apply.
    pub fn apply(&mut self, m: &Mutation) -> Result<Applied> {
        self.check_applies(m).map_err(|why| MetaError::Invalid(format!("{m:?} does not apply: {why}")))?;
        let mut applied = Applied::default();
        match m {
            Mutation::Mkdir { parent, name, id, policy, time_ms } => {
                self.next_id = self.next_id.max(id.0 + 1);
                let inode = Inode {
                    id: *id,
                    kind: InodeKind::Dir,
                    size: 0,
                    mtime_ms: *time_ms,
                    ctime_ms: *time_ms,
                    generation: 1,
                    layout: None,
                    policy: Some(*policy),
                    entries: BTreeMap::new(),
                };
                self.link(*parent, name, inode, *time_ms);
            }
            Mutation::Create { parent, name, id, layout, new_chains, time_ms } => {
                self.next_id = self.next_id.max(id.0 + 1);
                self.next_first = self.next_first.wrapping_add(1);
                self.chains.insert(new_chains);
                applied.chains = new_chains.clone();
                let inode = Inode {
                    id: *id,
                    kind: InodeKind::File,
                    size: 0,
                    mtime_ms: *time_ms,
                    ctime_ms: *time_ms,
                    generation: 1,
                    layout: Some(layout.clone()),
                    policy: None,
                    entries: BTreeMap::new(),
                };
                applied.inode = Some(inode.clone());
                self.link(*parent, name, inode, *time_ms);
            }
            Mutation::Rename { from_parent, from_name, to_parent, to_name, time_ms, orphan } => {
                let p = self.dir_mut(*from_parent);
                let moved = p.entries.remove(from_name).expect("checked: the source entry exists");
                p.touch(*time_ms);
                p.mtime_ms = *time_ms;
                let p = self.dir_mut(*to_parent);
                let replaced = p.entries.insert(to_name.clone(), moved);
                p.touch(*time_ms);
                p.mtime_ms = *time_ms;
                if let Some(m) = self.inodes.get_mut(&moved) {
                    m.touch(*time_ms);
                }
                match replaced {
                    Some(old) if old != moved && *orphan => {
                        self.orphans.insert(old);
                    }
                    Some(old) if old != moved => self.drop_inode(old, &mut applied.removed_files),
                    _ => {}
                }
            }
            Mutation::Remove { parent, name, time_ms, orphan } => {
                let p = self.dir_mut(*parent);
                let id = p.entries.remove(name).expect("checked: the entry exists");
                p.touch(*time_ms);
                p.mtime_ms = *time_ms;
                if *orphan {
                    self.orphans.insert(id);
                } else {
                    self.drop_inode(id, &mut applied.removed_files);
                }
            }
            Mutation::Truncate { file, size, time_ms } => {
                let inode = self.resize(*file, *time_ms, |_| *size);
                if let Some(layout) = &inode.layout {
                    self.chunks.truncate(*file, *size, layout.chunk_size());
                }
                applied.inode = Some(inode);
            }
            Mutation::SetSize { file, size, time_ms } => {
                self.resize(*file, *time_ms, |old| old.max(*size));
            }
            Mutation::CommitChunks { server, chunks } => {
                for (file, c) in chunks {
                    self.chunks.commit(*file, *server, c);
                }
            }
            Mutation::Reap { file } => {
                self.orphans.remove(file);
                self.drop_inode(*file, &mut applied.removed_files);
            }
            Mutation::SetChains { chains } => {
                self.chains.insert(chains);
                applied.chains = chains.clone();
            }
            Mutation::Boot { server, boot } => {
                self.boots.insert(*server, *boot);
            }
        }
        Ok(applied)
    }

    /// Why `m` does not fit the current state, if it does not.
    fn check_applies(&self, m: &Mutation) -> std::result::Result<(), String> {
        let dir = |id: &FileId| match self.inodes.get(id) {
            Some(d) if d.kind == InodeKind::Dir => Ok(d),
            Some(_) => Err(format!("{id} is not a directory")),
            None => Err(format!("directory {id} does not exist")),
        };
        match m {
            Mutation::Create { new_chains, .. } if new_chains.iter().any(|c| self.chains.get(c.id).is_some()) => {
                Err("it creates a chain that exists".into())
            }
            Mutation::Mkdir { parent, name, id, .. } | Mutation::Create { parent, name, id, .. } => {
                if dir(parent)?.entries.contains_key(name) {
                    return Err(format!("{name:?} already exists in {parent}"));
                }
                if self.inodes.contains_key(id) || id.0 < self.next_id {
                    return Err(format!("file id {id} was already handed out"));
                }
                Ok(())
            }
            Mutation::Rename { from_parent, from_name, to_parent, to_name, .. } => {
                let moved = *dir(from_parent)?
                    .entries
                    .get(from_name)
                    .ok_or_else(|| format!("{from_name:?} is not in {from_parent}"))?;
                if let Some(old) = dir(to_parent)?.entries.get(to_name) {
                    if *old != moved && self.inodes.get(old).is_some_and(|o| !o.entries.is_empty()) {
                        return Err(format!("{to_name:?} in {to_parent} is a directory that is not empty"));
                    }
                }
                Ok(())
            }
            Mutation::Remove { parent, name, orphan, .. } => {
                let id = dir(parent)?.entries.get(name).ok_or_else(|| format!("{name:?} is not in {parent}"))?;
                match self.inodes.get(id) {
                    Some(i) if !i.entries.is_empty() => Err(format!("{name:?} in {parent} is not empty")),
                    Some(i) if *orphan && i.kind != InodeKind::File => {
                        Err(format!("{name:?} in {parent} is a directory, which cannot be an orphan"))
                    }
                    _ => Ok(()),
                }
            }
            Mutation::Reap { file } => match self.orphans.contains(file) {
                true => Ok(()),
                false => Err(format!("{file} is not an orphan")),
            },
            Mutation::CommitChunks { chunks, .. } => chunks.iter().try_for_each(|(file, _)| self.check_file(*file)),
            Mutation::Truncate { file, .. } | Mutation::SetSize { file, .. } => self.check_file(*file),
            Mutation::SetChains { chains } => self.chains.check_update(chains),
            Mutation::Boot { .. } => Ok(()),
        }
    }

    fn check_file(&self, file: FileId) -> std::result::Result<(), String> {
        match self.inodes.get(&file) {
            Some(i) if i.kind == InodeKind::File => Ok(()),
            Some(_) => Err(format!("{file} is a directory")),
            None => Err(format!("file {file} does not exist")),
        }
    }

    /// Directory `id`, known to exist (checked before mutating).
    fn dir_mut(&mut self, id: FileId) -> &mut Inode {
        self.inodes.get_mut(&id).expect("checked: the directory exists")
    }

    fn link(&mut self, parent: FileId, name: &str, inode: Inode, time_ms: u64) {
        let p = self.dir_mut(parent);
        p.entries.insert(name.to_string(), inode.id);
        p.touch(time_ms);
        p.mtime_ms = time_ms;
        self.inodes.insert(inode.id, inode);
    }

    fn drop_inode(&mut self, id: FileId, removed: &mut Vec<(FileId, Vec<ServerId>)>) {
        self.chunks.remove_file(id);
        if let Some(inode) = self.inodes.remove(&id) {
            if let Some(layout) = inode.layout {
                removed.push((id, self.chains.members_of(&layout.chains)));
            }
        }
    }

    fn resize(&mut self, file: FileId, time_ms: u64, new_size: impl FnOnce(u64) -> u64) -> Inode {
        let inode = self.inodes.get_mut(&file).expect("checked: the file exists");
        inode.size = new_size(inode.size);
        inode.mtime_ms = time_ms;
        inode.touch(time_ms);
        inode.summary()
    }

    /// Checks the tree's invariants; the error names the first broken one. Every entry names
    /// an existing inode, every inode but the root and the orphans is named exactly once (the
    /// orphans never), orphans are files, directories have no layout and files no entries, no
    /// id reaches `next_id`, and committed chunks belong to existing files.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let mut named: BTreeMap<FileId, usize> = BTreeMap::new();
        for inode in self.inodes.values() {
            if inode.id.0 >= self.next_id {
                return Err(format!("{} is not below the next id {}", inode.id, self.next_id));
            }
            match inode.kind {
                InodeKind::File if !inode.entries.is_empty() || inode.layout.is_none() => {
                    return Err(format!("file {} has entries or no layout", inode.id))
                }
                InodeKind::Dir if inode.layout.is_some() || inode.size != 0 => {
                    return Err(format!("directory {} has a layout or a size", inode.id))
                }
                _ => {}
            }
            for (name, id) in &inode.entries {
                if !self.inodes.contains_key(id) {
                    return Err(format!("entry {name:?} of {} names missing {id}", inode.id));
                }
                *named.entry(*id).or_default() += 1;
            }
        }
        for id in &self.orphans {
            if !self.inodes.get(id).is_some_and(|i| i.kind == InodeKind::File) {
                return Err(format!("orphan {id} is not a file"));
            }
        }
        if let Some(f) = self.chunks.files().find(|f| !self.inodes.get(f).is_some_and(|i| i.kind == InodeKind::File)) {
            return Err(format!("committed chunks of {f}, which is not a file"));
        }
        for id in self.inodes.keys() {
            let n = named.get(id).copied().unwrap_or(0);
            let want = usize::from(*id != FileId::ROOT && !self.orphans.contains(id));
            if n != want {
                return Err(format!("{id} is named {n} times"));
            }
        }
        Ok(())
    }
}

/// Refuses a size past the largest file (checked by `prepare`, not `apply`: a record logged
/// before the limit existed still replays).
fn check_size(file: FileId, size: u64) -> Result<()> {
    if size > MAX_FILE_SIZE {
        return Err(MetaError::Invalid(format!(
            "file {file}: a size of {size} bytes is past the largest file size, {MAX_FILE_SIZE} bytes (2^63 - 1)"
        )));
    }
    Ok(())
}

fn check_generation(what: &str, inode: &Inode, expected: Option<u64>) -> Result<()> {
    match expected {
        Some(g) if g != inode.generation => {
            Err(MetaError::Conflict { what: what.to_string(), expected: g, found: inode.generation })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;

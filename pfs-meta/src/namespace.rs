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

use crate::error::{InvariantBroken, MetaError, Result};
use chains::ChainUpdateError;
use pfs_common::chain::{Chain, ChainId};
use pfs_common::config::Config;
use pfs_common::layout::{check_replicas, Layout, LayoutChoice, LayoutPolicy, MAX_FILE_SIZE};
use pfs_common::token::SessionId;
use pfs_common::wire::namespace::RequestId;
pub use pfs_common::wire::namespace::{FileKind as InodeKind, NewAttrs, SetTime, Target, LINK_MAX};
use pfs_common::{FileId, ServerId};
use serde::{Deserialize, Serialize};
use sessions::Replay;
use std::collections::{BTreeMap, BTreeSet};

pub mod chains;
pub mod chunk_map;
pub mod path;
pub mod sessions;
pub use chains::{ChainTable, ServerView};
pub use chunk_map::{ChunkMap, ChunkRecord, Commit};
pub use path::split_path;

/// Longest file or directory name, bytes (over it: NameTooLong).
pub const NAME_MAX_BYTES: usize = pfs_common::wire::namespace::NAME_MAX;
/// Longest path, bytes (over it: NameTooLong).
pub const PATH_MAX_BYTES: usize = pfs_common::wire::namespace::PATH_MAX;
/// Most entries one [`Namespace::readdir`] returns.
pub const READDIR_LIMIT_MAX: usize = 4096;

/// Permission bits an inode's mode may carry: rwx for user, group and others, set-user-ID,
/// set-group-ID and sticky.
pub const MODE_BITS: u32 = 0o7777;
const S_ISGID: u32 = 0o2000;

/// One inode: a file, directory, symbolic link, named pipe, socket or device node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub id: FileId,
    pub kind: InodeKind,
    /// Size in bytes: the data of a file, the contents of a symbolic link, else 0.
    pub size: u64,
    /// Permission bits ([`MODE_BITS`]).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Names of this inode; a directory has 2 plus one per subdirectory (its `.` and its
    /// subdirectories' `..`), as on Linux; an orphan has 0.
    pub nlink: u32,
    /// Device number (device nodes only).
    pub rdev: u64,
    /// Last access (set at creation and by `SetAttr` only), ns since the Unix epoch.
    pub atime_ns: i64,
    /// Last data or size change, ns since the Unix epoch.
    pub mtime_ns: i64,
    /// Last change of the inode, ns since the Unix epoch.
    pub ctime_ns: i64,
    /// Bumped on every change of this inode (for directories: also when entries change).
    pub generation: u64,
    /// The stripe layout (files only).
    pub layout: Option<Layout>,
    /// Layout defaults inherited by children created in it (directories only).
    pub policy: Option<LayoutPolicy>,
    /// Contents of a symbolic link.
    pub symlink: Option<String>,
    /// The directory holding this directory and its name there (directories but the root:
    /// a directory has exactly one name, so its path can be rebuilt from its id).
    pub parent: Option<(FileId, String)>,
    /// Entries by name, in name order (directories only).
    pub entries: BTreeMap<String, FileId>,
}

impl Inode {
    /// A new inode with owner and mode from `attrs` and every time `time_ns`.
    fn new(id: FileId, kind: InodeKind, attrs: &NewAttrs, time_ns: i64) -> Inode {
        Inode {
            id,
            kind,
            size: 0,
            mode: attrs.mode & MODE_BITS,
            uid: attrs.uid,
            gid: attrs.gid,
            nlink: if kind == InodeKind::Dir { 2 } else { 1 },
            rdev: 0,
            atime_ns: time_ns,
            mtime_ns: time_ns,
            ctime_ns: time_ns,
            generation: 1,
            layout: None,
            policy: None,
            symlink: None,
            parent: None,
            entries: BTreeMap::new(),
        }
    }

    fn touch(&mut self, time_ns: i64) {
        self.generation += 1;
        self.ctime_ns = time_ns;
    }

    /// A directory's entries changed: its mtime and ctime move (POSIX).
    fn touch_dir(&mut self, time_ns: i64) {
        self.touch(time_ns);
        self.mtime_ns = time_ns;
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
    Mkdir { path: String, attrs: NewAttrs },
    /// Create file `path`; without `exclusive` an existing file is answered as it is.
    Create { path: String, layout: LayoutChoice, exclusive: bool, attrs: NewAttrs },
    /// Make a symbolic link (`symlink` its contents) or a named pipe, socket or device node
    /// at `path`.
    MakeNode { path: String, kind: InodeKind, rdev: u64, symlink: Option<String>, attrs: NewAttrs },
    /// Give `file` (not a directory) the further name `path`.
    Link { file: FileId, path: String },
    /// Change mode, owner, group or times of `file`; `None` leaves one as it is.
    SetAttr {
        file: FileId,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        atime: Option<SetTime>,
        mtime: Option<SetTime>,
    },
    /// Move `from` to `to`, replacing what is there (unless `no_replace`) as rename(2) does.
    Rename { from: String, to: String, expected_generation: Option<u64>, no_replace: bool },
    /// Remove the name `path` of anything but a directory.
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
    /// A new client session `session` (its id unused so far), whose key has this SHA-256.
    /// Errors: Exists when the id is taken.
    OpenSession { session: SessionId, key_sha256: [u8; 32] },
    /// Session `session` ended: `evicted` (storage servers must refuse it) or closed.
    EndSession { session: SessionId, evicted: bool },
    /// `op` (a client's namespace change) named by `request`: done once however often it
    /// comes (see [`sessions::SessionTable::replay`]). Errors: Evicted (the session is not
    /// open), Invalid (a request overtaken by a later one of its slot), NoSuchFile (done
    /// before, and the file it made is gone since).
    Request { request: RequestId, op: Box<Op> },
}

/// A fully determined change of the namespace, as logged in the WAL. Times are ns since the
/// Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mutation {
    /// New directory `id` named `name` in `parent`, with the layout policy it inherits and
    /// its owner and mode as decided (set-group-ID inheritance applied).
    Mkdir { parent: FileId, name: String, id: FileId, policy: LayoutPolicy, attrs: NewAttrs, time_ns: i64 },
    /// New file `id` named `name` in `parent`, with its chosen layout and the chains it
    /// created for it.
    Create {
        parent: FileId,
        name: String,
        id: FileId,
        layout: Layout,
        new_chains: Vec<Chain>,
        attrs: NewAttrs,
        time_ns: i64,
    },
    /// New symbolic link, named pipe, socket or device node `id` named `name` in `parent`.
    MakeNode {
        parent: FileId,
        name: String,
        id: FileId,
        kind: InodeKind,
        rdev: u64,
        symlink: Option<String>,
        attrs: NewAttrs,
        time_ns: i64,
    },
    /// `file` gets the further name `name` in `parent`.
    Link { file: FileId, parent: FileId, name: String, time_ns: i64 },
    /// New mode, owner, group or times of `file` (its ctime becomes `time_ns`).
    SetAttr {
        file: FileId,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        atime_ns: Option<i64>,
        mtime_ns: Option<i64>,
        time_ns: i64,
    },
    /// Move an entry; whatever `to_name` named in `to_parent` loses that name (and goes with
    /// its last one, or is kept as an orphan with `orphan`: a file some session has open).
    Rename { from_parent: FileId, from_name: String, to_parent: FileId, to_name: String, time_ns: i64, orphan: bool },
    /// Remove the entry `name` of `parent`; its inode goes with its last name, or is kept as
    /// an orphan with `orphan` (a file some session has open).
    Remove { parent: FileId, name: String, time_ns: i64, orphan: bool },
    /// Set a file's size exactly.
    Truncate { file: FileId, size: u64, time_ns: i64 },
    /// Raise a file's size to at least `size` and set its mtime.
    SetSize { file: FileId, size: u64, time_ns: i64 },
    /// Chunk states `server` made durable become the committed ones.
    CommitChunks { server: ServerId, chunks: Vec<(FileId, Commit)> },
    /// Drop orphan `file` (unlinked while open; the last open is gone).
    Reap { file: FileId },
    /// These chains, each at the version after the current one, replace the current ones.
    SetChains { chains: Vec<Chain> },
    /// The boot id of a storage server's process, kept so that a restart is known even across
    /// a restart of pfs-meta.
    Boot { server: ServerId, boot: u64 },
    /// A client session was opened (see [`sessions::SessionTable`]).
    OpenSession { session: SessionId, key_sha256: [u8; 32], time_ns: i64 },
    /// A client session ended, evicted or closed.
    EndSession { session: SessionId, evicted: bool },
    /// A client's change named by `request`, recorded as the last one of its slot with the
    /// file it answers (the table Lustre calls last_rcvd).
    Request { request: RequestId, mutation: Box<Mutation> },
}

/// What [`Namespace::prepare`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to change (a non-exclusive create of an existing file, a rename onto
    /// itself); the inode the operation is about, if any.
    Unchanged(Option<Inode>),
    /// Log this mutation, then apply it.
    Mutate(Mutation),
    /// The request was done before (a repeat of an [`Op::Request`]): the inode it answered
    /// with, as it is now, if it answered one.
    Replayed(Option<Inode>),
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
    /// Inodes created, changed or dropped (a directory also when its entries or link count
    /// change): what an answer read through [`Namespace::lookup_traced`] or by id could
    /// reveal of this mutation. The chunk map, chains, orphan set and boot ids are not
    /// tracked here.
    pub touched: Vec<FileId>,
}

/// What `prepare` needs from outside the namespace.
#[derive(Clone)]
pub struct Context<'a> {
    /// Wall-clock time, ns since the Unix epoch; recorded in the mutation.
    pub now_ns: i64,
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
    /// Client sessions, open and evicted.
    sessions: sessions::SessionTable,
}

impl Namespace {
    /// An empty namespace: just the root directory, with `root_policy` for new files.
    /// The root is owned by this process's effective user and group, mode `0o755`, as mkfs
    /// makes it; change it with [`Op::SetAttr`] (through a mount: chown and chmod).
    pub fn new(root_policy: LayoutPolicy) -> Namespace {
        let mut root = Inode::new(FileId::ROOT, InodeKind::Dir, &NewAttrs::for_process(InodeKind::Dir), 0);
        root.policy = Some(root_policy);
        Namespace {
            inodes: BTreeMap::from([(FileId::ROOT, root)]),
            next_id: FileId::ROOT.0 + 1,
            next_first: 0,
            orphans: BTreeSet::new(),
            chunks: ChunkMap::default(),
            chains: ChainTable::default(),
            boots: BTreeMap::new(),
            sessions: sessions::SessionTable::default(),
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
    pub fn sessions(&self) -> &sessions::SessionTable {
        &self.sessions
    }

    /// Files unlinked while open, not reaped yet.
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
        self.resolve_path(path, None)
    }

    /// The inode `id`. Errors: NoSuchFile.
    pub fn inode(&self, id: FileId) -> Result<&Inode> {
        self.inodes.get(&id).ok_or(MetaError::NoSuchFile { file: id })
    }

    /// The regular file `id`. Errors: NoSuchFile, IsDir, Invalid (a link, pipe or device).
    pub fn file(&self, id: FileId) -> Result<&Inode> {
        let inode = self.inode(id)?;
        match inode.kind {
            InodeKind::File => Ok(inode),
            InodeKind::Dir => Err(MetaError::IsDir { path: format!("file {id}") }),
            k => Err(MetaError::Invalid(format!("{id} is a {k:?}, not a regular file"))),
        }
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

    /// The absolute path of directory `dir`, rebuilt from the directories' parent links.
    /// Errors: NoSuchFile; NotDir (`dir` is not a directory).
    pub fn dir_path(&self, dir: FileId) -> Result<String> {
        let mut names = Vec::new();
        let mut cur = self.inode(dir)?;
        if cur.kind != InodeKind::Dir {
            return Err(MetaError::NotDir { path: format!("file {dir}") });
        }
        while let Some((parent, name)) = &cur.parent {
            names.push(name.as_str());
            // Parent links never loop (rename refuses to move a directory into itself), and a
            // directory's depth is below the number of inodes.
            if names.len() > self.inodes.len() {
                return Err(MetaError::Invalid(format!("directory {dir}: its parent links loop")));
            }
            cur = self.inode(*parent)?;
        }
        let mut path = String::new();
        for name in names.iter().rev() {
            path.push('/');
            path.push_str(name);
        }
        if path.is_empty() {
            path.push('/');
        }
        Ok(path)
    }

    /// The absolute path `target` names now: an entry of a directory given by id becomes the
    /// directory's path and the name.
    ///
    /// Errors: BadPath (an entry name that is empty, `.`, `..`, or holds `/` or NUL; or an
    /// inode id, which names no path); NoSuchFile and NotDir for the directory.
    pub fn target_path(&self, target: &Target) -> Result<String> {
        match target {
            Target::Path(p) => Ok(p.clone()),
            Target::Entry { dir, name } => {
                if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
                    return Err(MetaError::BadPath {
                        path: target.to_string(),
                        reason: "an entry name must be one component: not empty, `.` or `..`, no `/` or NUL".into(),
                    });
                }
                let dir = self.dir_path(*dir)?;
                Ok(if dir == "/" { format!("/{name}") } else { format!("{dir}/{name}") })
            }
            Target::Id(_) => Err(MetaError::BadPath {
                path: target.to_string(),
                reason: "this request needs a path or a directory entry, not an inode id".into(),
            }),
        }
    }

    /// The inode `target` names. Errors: as [`Namespace::resolve`] and
    /// [`Namespace::target_path`]; NoSuchFile for an id.
    pub fn lookup(&self, target: &Target) -> Result<&Inode> {
        match target {
            Target::Id(id) => self.inode(*id),
            t => self.resolve(&self.target_path(t)?),
        }
    }

    /// [`Namespace::lookup`], adding to `read` the id of every inode whose state the answer
    /// depends on (the directories walked, the inode found), whatever the outcome. With the
    /// ids in [`Applied::touched`], this says which changes an answer could reveal.
    pub fn lookup_traced(&self, target: &Target, read: &mut Vec<FileId>) -> Result<&Inode> {
        match target {
            Target::Id(id) => {
                read.push(*id);
                self.inode(*id)
            }
            Target::Path(p) => self.resolve_path(p, Some(read)),
            Target::Entry { dir, .. } => {
                // The directory's path comes from its ancestors' parent links; the walk below
                // reads those same ancestors (and a missing `dir` is a change of `dir`).
                read.push(*dir);
                let path = self.target_path(target)?;
                self.resolve_path(&path, Some(read))
            }
        }
    }

    /// The owner and mode a new inode gets in directory `parent`: as asked, except that a
    /// set-group-ID directory gives its group, and to a new directory also the bit (Linux's
    /// `inode_init_owner`).
    fn inherit(parent: &Inode, attrs: &NewAttrs, kind: InodeKind) -> Result<NewAttrs> {
        if attrs.mode & !MODE_BITS != 0 {
            return Err(MetaError::Invalid(format!("mode {:o} has bits beyond {MODE_BITS:o}", attrs.mode)));
        }
        let mut attrs = *attrs;
        if parent.mode & S_ISGID != 0 {
            attrs.gid = parent.gid;
            if kind == InodeKind::Dir {
                attrs.mode |= S_ISGID;
            }
        }
        Ok(attrs)
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
        let now = ctx.now_ns;
        match op {
            Op::Mkdir { path, attrs } => {
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
                    attrs: Self::inherit(parent, attrs, InodeKind::Dir)?,
                    time_ns: now,
                }))
            }
            Op::MakeNode { path, kind, rdev, symlink, attrs } => {
                let (parent, name) = self.parent_of(path)?;
                if parent.entries.contains_key(name) {
                    return Err(MetaError::Exists { path: path.clone() });
                }
                match (kind, symlink) {
                    (InodeKind::Symlink, Some(s)) if !s.is_empty() && s.len() <= PATH_MAX_BYTES => {}
                    (InodeKind::Symlink, _) => {
                        return Err(MetaError::Invalid(format!(
                            "{path}: a symbolic link's contents must be 1 to {PATH_MAX_BYTES} bytes"
                        )))
                    }
                    (InodeKind::Fifo | InodeKind::Socket | InodeKind::CharDevice | InodeKind::BlockDevice, None) => {}
                    _ => {
                        return Err(MetaError::Invalid(format!("{path}: cannot make a node of kind {kind:?} this way")))
                    }
                }
                Ok(Decision::Mutate(Mutation::MakeNode {
                    parent: parent.id,
                    name: name.to_string(),
                    id: FileId(self.next_id),
                    kind: *kind,
                    rdev: *rdev,
                    symlink: symlink.clone(),
                    attrs: Self::inherit(parent, attrs, *kind)?,
                    time_ns: now,
                }))
            }
            Op::Link { file, path } => {
                let inode = self.inode(*file)?;
                if inode.kind == InodeKind::Dir {
                    return Err(MetaError::IsDir { path: format!("{path} (a hard link to directory {file})") });
                }
                if inode.nlink == 0 {
                    return Err(MetaError::NoSuchFile { file: *file });
                }
                if inode.nlink >= LINK_MAX {
                    return Err(MetaError::Invalid(format!("{path}: {file} has {LINK_MAX} links, the most allowed")));
                }
                let (parent, name) = self.parent_of(path)?;
                if parent.entries.contains_key(name) {
                    return Err(MetaError::Exists { path: path.clone() });
                }
                Ok(Decision::Mutate(Mutation::Link {
                    file: *file,
                    parent: parent.id,
                    name: name.to_string(),
                    time_ns: now,
                }))
            }
            Op::SetAttr { file, mode, uid, gid, atime, mtime } => {
                self.inode(*file)?;
                if let Some(m) = mode.filter(|m| m & !MODE_BITS != 0) {
                    return Err(MetaError::Invalid(format!("file {file}: mode {m:o} has bits beyond {MODE_BITS:o}")));
                }
                let at = |t: &Option<SetTime>| {
                    t.map(|t| match t {
                        SetTime::Now => now,
                        SetTime::At(ns) => ns,
                    })
                };
                Ok(Decision::Mutate(Mutation::SetAttr {
                    file: *file,
                    mode: *mode,
                    uid: *uid,
                    gid: *gid,
                    atime_ns: at(atime),
                    mtime_ns: at(mtime),
                    time_ns: now,
                }))
            }
            Op::Create { path, layout, exclusive, attrs } => {
                let (parent, name) = self.parent_of(path)?;
                if let Some(&id) = parent.entries.get(name) {
                    let existing = self.inode(id)?;
                    if *exclusive {
                        return Err(MetaError::Exists { path: path.clone() });
                    }
                    if existing.kind == InodeKind::Dir {
                        return Err(MetaError::IsDir { path: path.clone() });
                    }
                    if existing.kind != InodeKind::File {
                        return Err(MetaError::Exists { path: path.clone() });
                    }
                    return Ok(Decision::Unchanged(Some(existing.summary())));
                }
                let attrs = Self::inherit(parent, attrs, InodeKind::File)?;
                let policy = parent.policy.unwrap_or_default();
                let (layout, new_chains) = self.choose_layout(path, layout, &policy, ctx.up_servers)?;
                Ok(Decision::Mutate(Mutation::Create {
                    parent: parent.id,
                    name: name.to_string(),
                    id: FileId(self.next_id),
                    layout,
                    new_chains,
                    attrs,
                    time_ns: now,
                }))
            }
            Op::Rename { from, to, expected_generation, no_replace } => {
                self.prepare_rename(from, to, *expected_generation, *no_replace, ctx)
            }
            Op::Unlink { path, expected_generation } => {
                let (parent, name) = self.parent_of(path)?;
                let target = self.entry(parent, name, path)?;
                if target.kind == InodeKind::Dir {
                    return Err(MetaError::IsDir { path: path.clone() });
                }
                check_generation(path, target, *expected_generation)?;
                Ok(Decision::Mutate(Mutation::Remove {
                    parent: parent.id,
                    name: name.to_string(),
                    time_ns: now,
                    orphan: last_name_of_open_file(target, ctx),
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
                    Mutation::Remove { parent: parent.id, name: name.to_string(), time_ns: now, orphan: false };
                Ok(Decision::Mutate(remove))
            }
            Op::Truncate { file, size, expected_generation } => {
                let inode = self.file(*file)?;
                check_size(*file, *size)?;
                check_generation(&format!("file {file}"), inode, *expected_generation)?;
                Ok(Decision::Mutate(Mutation::Truncate { file: *file, size: *size, time_ns: now }))
            }
            Op::SetSize { file, size } => {
                self.file(*file)?;
                check_size(*file, *size)?;
                Ok(Decision::Mutate(Mutation::SetSize { file: *file, size: *size, time_ns: now }))
            }
            Op::CommitChunks { server, chunks } => {
                // Chunks of a removed file are orphaned data, not commits; a state committed
                // already is not logged again. A chunk wholly past the file's size is a
                // commit only while the file is open (a writer that has not recorded its
                // size yet): otherwise it is a late report of a state a truncate has cut
                // (from a replica that was out of the write path then), which must not come
                // back as a chunk that must exist.
                let new: Vec<(FileId, Commit)> = chunks
                    .iter()
                    .filter(|(f, c)| {
                        let Some(i) = self.inodes.get(f).filter(|i| i.kind == InodeKind::File) else { return false };
                        let within = i.layout.as_ref().is_some_and(|l| l.file_offset(c.chunk, 0) < i.size);
                        (within || (ctx.is_open)(*f)) && !self.chunks.is_committed(*f, *server, c)
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
            Op::OpenSession { session, key_sha256 } => {
                if self.sessions.knows(*session) || *session < self.sessions.fence_below() {
                    return Err(MetaError::Exists { path: format!("session {session:x}") });
                }
                Ok(Decision::Mutate(Mutation::OpenSession {
                    session: *session,
                    key_sha256: *key_sha256,
                    time_ns: ctx.now_ns,
                }))
            }
            Op::Request { request, op } => {
                if matches!(**op, Op::Request { .. }) {
                    return Err(MetaError::Invalid("a request inside a request".into()));
                }
                match self.sessions.replay(request) {
                    Replay::NotOpen => {
                        Err(MetaError::Evicted { session: request.session, state: crate::error::SessionState::NotOpen })
                    }
                    Replay::Overtaken { last } => Err(MetaError::Invalid(format!(
                        "request {} of slot {} of session {:x}: the slot is at request {last} already",
                        request.seq, request.slot, request.session
                    ))),
                    Replay::Done(None) => Ok(Decision::Replayed(None)),
                    Replay::Done(Some(file)) => match self.inodes.get(&file) {
                        Some(inode) => Ok(Decision::Replayed(Some(inode.summary()))),
                        None => Err(MetaError::NoSuchFile { file }),
                    },
                    Replay::New => Ok(match self.prepare(op, ctx)? {
                        Decision::Mutate(m) => {
                            Decision::Mutate(Mutation::Request { request: *request, mutation: Box::new(m) })
                        }
                        d => d,
                    }),
                }
            }
            Op::EndSession { session, evicted } => match self.sessions.get(*session) {
                Some(_) => Ok(Decision::Mutate(Mutation::EndSession { session: *session, evicted: *evicted })),
                None => Ok(Decision::Unchanged(None)),
            },
            Op::Boot { server, boot } => match self.boots.get(server) {
                Some(b) if b == boot => Ok(Decision::Unchanged(None)),
                _ => Ok(Decision::Mutate(Mutation::Boot { server: *server, boot: *boot })),
            },
            Op::SetChains { chains } => {
                if chains.is_empty() {
                    return Ok(Decision::Unchanged(None));
                }
                self.chains.check_update(chains)?;
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

    fn prepare_rename(
        &self,
        from: &str,
        to: &str,
        expected: Option<u64>,
        no_replace: bool,
        ctx: &Context<'_>,
    ) -> Result<Decision> {
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
            if no_replace {
                return Err(MetaError::Exists { path: to.to_string() });
            }
            if target_id == source.id {
                // POSIX: two names of the same file stay as they are.
                return Ok(Decision::Unchanged(None));
            }
            let target = self.inode(target_id)?;
            orphan = last_name_of_open_file(target, ctx);
            let dir = |k: InodeKind| k == InodeKind::Dir;
            match (dir(source.kind), dir(target.kind)) {
                (false, true) => return Err(MetaError::IsDir { path: to.to_string() }),
                (true, false) => return Err(MetaError::NotDir { path: to.to_string() }),
                (true, true) if !target.entries.is_empty() => {
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
            time_ns: ctx.now_ns,
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
        self.check_applies(m).map_err(|why| MetaError::DoesNotApply { mutation: format!("{m:?}"), why })?;
        let mut applied = Applied::default();
        match m {
            Mutation::Mkdir { parent, name, id, policy, attrs, time_ns } => {
                self.next_id = self.next_id.max(id.0 + 1);
                let mut inode = Inode::new(*id, InodeKind::Dir, attrs, *time_ns);
                inode.policy = Some(*policy);
                inode.parent = Some((*parent, name.clone()));
                applied.inode = Some(inode.clone());
                applied.touched = vec![*parent, *id];
                self.link(*parent, name, inode, *time_ns);
                self.dir_mut(*parent).nlink += 1;
            }
            Mutation::Create { parent, name, id, layout, new_chains, attrs, time_ns } => {
                self.next_id = self.next_id.max(id.0 + 1);
                self.next_first = self.next_first.wrapping_add(1);
                self.chains.insert(new_chains);
                applied.chains = new_chains.clone();
                let mut inode = Inode::new(*id, InodeKind::File, attrs, *time_ns);
                inode.layout = Some(layout.clone());
                applied.inode = Some(inode.clone());
                applied.touched = vec![*parent, *id];
                self.link(*parent, name, inode, *time_ns);
            }
            Mutation::MakeNode { parent, name, id, kind, rdev, symlink, attrs, time_ns } => {
                self.next_id = self.next_id.max(id.0 + 1);
                let mut inode = Inode::new(*id, *kind, attrs, *time_ns);
                inode.rdev = *rdev;
                inode.size = symlink.as_ref().map_or(0, |s| s.len() as u64);
                inode.symlink = symlink.clone();
                if *kind == InodeKind::Symlink {
                    inode.mode = 0o777;
                }
                applied.inode = Some(inode.clone());
                applied.touched = vec![*parent, *id];
                self.link(*parent, name, inode, *time_ns);
            }
            Mutation::Link { file, parent, name, time_ns } => {
                let p = self.dir_mut(*parent);
                p.entries.insert(name.clone(), *file);
                p.touch_dir(*time_ns);
                let inode = self.inodes.get_mut(file).expect("checked: the file exists");
                inode.nlink += 1;
                inode.touch(*time_ns);
                applied.inode = Some(inode.summary());
                applied.touched = vec![*parent, *file];
            }
            Mutation::SetAttr { file, mode, uid, gid, atime_ns, mtime_ns, time_ns } => {
                let inode = self.inodes.get_mut(file).expect("checked: the inode exists");
                if let Some(m) = mode {
                    inode.mode = m & MODE_BITS;
                }
                inode.uid = uid.unwrap_or(inode.uid);
                inode.gid = gid.unwrap_or(inode.gid);
                inode.atime_ns = atime_ns.unwrap_or(inode.atime_ns);
                inode.mtime_ns = mtime_ns.unwrap_or(inode.mtime_ns);
                inode.touch(*time_ns);
                applied.inode = Some(inode.summary());
                applied.touched = vec![*file];
            }
            Mutation::Rename { from_parent, from_name, to_parent, to_name, time_ns, orphan } => {
                let p = self.dir_mut(*from_parent);
                let moved = p.entries.remove(from_name).expect("checked: the source entry exists");
                p.touch_dir(*time_ns);
                let p = self.dir_mut(*to_parent);
                let replaced = p.entries.insert(to_name.clone(), moved);
                p.touch_dir(*time_ns);
                applied.touched = vec![*from_parent, *to_parent, moved];
                applied.touched.extend(replaced);
                let m = self.inodes.get_mut(&moved).expect("checked: entries name inodes");
                m.touch(*time_ns);
                if m.kind == InodeKind::Dir {
                    m.parent = Some((*to_parent, to_name.clone()));
                    // Its `..` now counts in the new parent.
                    self.dir_mut(*from_parent).nlink -= 1;
                    self.dir_mut(*to_parent).nlink += 1;
                }
                if let Some(old) = replaced.filter(|old| *old != moved) {
                    self.unname(*to_parent, old, *orphan, *time_ns, &mut applied.removed_files);
                }
            }
            Mutation::Remove { parent, name, time_ns, orphan } => {
                let p = self.dir_mut(*parent);
                let id = p.entries.remove(name).expect("checked: the entry exists");
                p.touch_dir(*time_ns);
                applied.touched = vec![*parent, id];
                self.unname(*parent, id, *orphan, *time_ns, &mut applied.removed_files);
            }
            Mutation::Truncate { file, size, time_ns } => {
                let inode = self.resize(*file, *time_ns, |_| *size);
                if let Some(layout) = &inode.layout {
                    self.chunks.truncate(*file, *size, layout.chunk_size());
                }
                applied.inode = Some(inode);
                applied.touched = vec![*file];
            }
            Mutation::SetSize { file, size, time_ns } => {
                self.resize(*file, *time_ns, |old| old.max(*size));
                applied.touched = vec![*file];
            }
            Mutation::CommitChunks { server, chunks } => {
                for (file, c) in chunks {
                    self.chunks.commit(*file, *server, c);
                }
            }
            Mutation::Reap { file } => {
                self.orphans.remove(file);
                self.drop_inode(*file, &mut applied.removed_files);
                applied.touched = vec![*file];
            }
            Mutation::SetChains { chains } => {
                self.chains.insert(chains);
                applied.chains = chains.clone();
            }
            Mutation::Boot { server, boot } => {
                self.boots.insert(*server, *boot);
            }
            Mutation::OpenSession { session, key_sha256, time_ns } => {
                let record =
                    sessions::SessionRecord { key_sha256: *key_sha256, opened_ns: *time_ns, done: BTreeMap::new() };
                self.sessions.insert(*session, record);
            }
            Mutation::EndSession { session, evicted } => self.sessions.end(*session, *evicted),
            Mutation::Request { request, mutation } => {
                applied = self.apply(mutation)?;
                self.sessions.record(request, applied.inode.as_ref().map(|i| i.id));
            }
        }
        Ok(applied)
    }

    /// Why `m` does not fit the current state, if it does not.
    fn check_applies(&self, m: &Mutation) -> std::result::Result<(), Misfit> {
        let dir = |id: &FileId| match self.inodes.get(id) {
            Some(d) if d.kind == InodeKind::Dir => Ok(d),
            Some(_) => Err(Misfit::NotDir(*id)),
            None => Err(Misfit::NoDir(*id)),
        };
        let named = |parent: &FileId, name: &str| Misfit::NoEntry { parent: *parent, name: name.to_string() };
        match m {
            Mutation::Create { new_chains, .. } => {
                if let Some(c) = new_chains.iter().find(|c| self.chains.get(c.id).is_some()) {
                    return Err(Misfit::ChainExists(c.id));
                }
                self.check_new_entry(m)
            }
            Mutation::Mkdir { .. } | Mutation::MakeNode { .. } => self.check_new_entry(m),
            Mutation::Rename { from_parent, from_name, to_parent, to_name, .. } => {
                let moved = *dir(from_parent)?.entries.get(from_name).ok_or_else(|| named(from_parent, from_name))?;
                if let Some(old) = dir(to_parent)?.entries.get(to_name) {
                    if *old != moved && self.inodes.get(old).is_some_and(|o| !o.entries.is_empty()) {
                        return Err(Misfit::NotEmpty { parent: *to_parent, name: to_name.clone() });
                    }
                }
                Ok(())
            }
            Mutation::Remove { parent, name, orphan, .. } => {
                let id = dir(parent)?.entries.get(name).ok_or_else(|| named(parent, name))?;
                match self.inodes.get(id) {
                    Some(i) if !i.entries.is_empty() => Err(Misfit::NotEmpty { parent: *parent, name: name.clone() }),
                    Some(i) if *orphan && i.kind != InodeKind::File => {
                        Err(Misfit::DirOrphan { parent: *parent, name: name.clone() })
                    }
                    _ => Ok(()),
                }
            }
            Mutation::Link { file, parent, name, .. } => {
                if dir(parent)?.entries.contains_key(name) {
                    return Err(Misfit::NameTaken { parent: *parent, name: name.clone() });
                }
                match self.inodes.get(file) {
                    Some(i) if i.kind != InodeKind::Dir && i.nlink > 0 => Ok(()),
                    Some(_) => Err(Misfit::NotLinkable(*file)),
                    None => Err(Misfit::NoFile(*file)),
                }
            }
            Mutation::SetAttr { file, .. } => match self.inodes.contains_key(file) {
                true => Ok(()),
                false => Err(Misfit::NoFile(*file)),
            },
            Mutation::Reap { file } => match self.orphans.contains(file) {
                true => Ok(()),
                false => Err(Misfit::NotOrphan(*file)),
            },
            Mutation::CommitChunks { chunks, .. } => chunks.iter().try_for_each(|(file, _)| self.check_file(*file)),
            Mutation::Truncate { file, .. } | Mutation::SetSize { file, .. } => self.check_file(*file),
            Mutation::SetChains { chains } => Ok(self.chains.check_update(chains)?),
            Mutation::Boot { .. } | Mutation::EndSession { .. } => Ok(()),
            Mutation::Request { request, mutation } => match self.sessions.replay(request) {
                Replay::New if !matches!(**mutation, Mutation::Request { .. }) => self.check_applies(mutation),
                Replay::New => Err(Misfit::NestedRequest),
                Replay::NotOpen => Err(Misfit::NoSession(request.session)),
                Replay::Done(_) | Replay::Overtaken { .. } => {
                    Err(Misfit::RequestDone { session: request.session, slot: request.slot, seq: request.seq })
                }
            },
            Mutation::OpenSession { session, .. } => match self.sessions.knows(*session) {
                true => Err(Misfit::SessionTaken(*session)),
                false => Ok(()),
            },
        }
    }

    /// Why a mutation making a new entry (`Mkdir`, `Create`, `MakeNode`) does not fit: its
    /// parent is not a directory, its name is taken, or its id was handed out.
    fn check_new_entry(&self, m: &Mutation) -> std::result::Result<(), Misfit> {
        let (Mutation::Mkdir { parent, name, id, .. }
        | Mutation::Create { parent, name, id, .. }
        | Mutation::MakeNode { parent, name, id, .. }) = m
        else {
            return Ok(());
        };
        match self.inodes.get(parent) {
            Some(d) if d.kind == InodeKind::Dir => {
                if d.entries.contains_key(name) {
                    return Err(Misfit::NameTaken { parent: *parent, name: name.clone() });
                }
            }
            Some(_) => return Err(Misfit::NotDir(*parent)),
            None => return Err(Misfit::NoDir(*parent)),
        }
        if self.inodes.contains_key(id) || id.0 < self.next_id {
            return Err(Misfit::IdTaken(*id));
        }
        Ok(())
    }

    fn check_file(&self, file: FileId) -> std::result::Result<(), Misfit> {
        match self.inodes.get(&file) {
            Some(i) if i.kind == InodeKind::File => Ok(()),
            Some(_) => Err(Misfit::NotAFile(file)),
            None => Err(Misfit::NoFile(file)),
        }
    }

    /// Directory `id`, known to exist (checked before mutating).
    fn dir_mut(&mut self, id: FileId) -> &mut Inode {
        self.inodes.get_mut(&id).expect("checked: the directory exists")
    }

    fn link(&mut self, parent: FileId, name: &str, inode: Inode, time_ns: i64) {
        let p = self.dir_mut(parent);
        p.entries.insert(name.to_string(), inode.id);
        p.touch_dir(time_ns);
        self.inodes.insert(inode.id, inode);
    }

    /// Inode `id` lost a name in `parent` (already taken out of its entries): a directory
    /// goes (and its `..` from the parent's count); anything else goes with its last name, or
    /// becomes an orphan with `orphan`.
    fn unname(
        &mut self,
        parent: FileId,
        id: FileId,
        orphan: bool,
        time_ns: i64,
        removed: &mut Vec<(FileId, Vec<ServerId>)>,
    ) {
        let inode = self.inodes.get_mut(&id).expect("checked: entries name inodes");
        if inode.kind == InodeKind::Dir {
            self.dir_mut(parent).nlink -= 1;
            self.drop_inode(id, removed);
            return;
        }
        inode.nlink = inode.nlink.saturating_sub(1);
        inode.touch(time_ns);
        if inode.nlink > 0 {
            return;
        }
        if orphan {
            self.orphans.insert(id);
        } else {
            self.drop_inode(id, removed);
        }
    }

    fn drop_inode(&mut self, id: FileId, removed: &mut Vec<(FileId, Vec<ServerId>)>) {
        self.chunks.remove_file(id);
        if let Some(inode) = self.inodes.remove(&id) {
            if let Some(layout) = inode.layout {
                removed.push((id, self.chains.members_of(&layout.chains)));
            }
        }
    }

    fn resize(&mut self, file: FileId, time_ns: i64, new_size: impl FnOnce(u64) -> u64) -> Inode {
        let inode = self.inodes.get_mut(&file).expect("checked: the file exists");
        inode.size = new_size(inode.size);
        inode.mtime_ns = time_ns;
        inode.touch(time_ns);
        inode.summary()
    }

    /// Checks the tree's invariants; the error names the first broken one. Every entry names
    /// an existing inode; every inode is named as often as its link count says (a directory
    /// once, the root and the orphans never); a directory's link count is 2 plus its
    /// subdirectories and its parent link names the entry naming it; orphans are files; only
    /// files have a layout and only directories entries; no id reaches `next_id`; committed
    /// chunks belong to existing files.
    pub fn check_invariants(&self) -> std::result::Result<(), InvariantBroken> {
        let mut named: BTreeMap<FileId, usize> = BTreeMap::new();
        for inode in self.inodes.values() {
            if inode.id.0 >= self.next_id {
                return Err(format!("{} is not below the next id {}", inode.id, self.next_id).into());
            }
            match inode.kind {
                InodeKind::File if !inode.entries.is_empty() || inode.layout.is_none() => {
                    return Err(format!("file {} has entries or no layout", inode.id).into())
                }
                InodeKind::File => {}
                InodeKind::Dir if inode.layout.is_some() || inode.size != 0 => {
                    return Err(format!("directory {} has a layout or a size", inode.id).into())
                }
                InodeKind::Dir => {
                    let subdirs = inode
                        .entries
                        .values()
                        .filter(|id| self.inodes.get(id).is_some_and(|c| c.kind == InodeKind::Dir));
                    if inode.nlink as usize != 2 + subdirs.count() {
                        return Err(format!("directory {} has link count {}", inode.id, inode.nlink).into());
                    }
                    let named_there = inode.parent.as_ref().is_some_and(|(p, name)| {
                        self.inodes.get(p).is_some_and(|p| p.entries.get(name) == Some(&inode.id))
                    });
                    if named_there != (inode.id != FileId::ROOT) {
                        return Err(format!("directory {} has parent link {:?}", inode.id, inode.parent).into());
                    }
                }
                _ if !inode.entries.is_empty() || inode.layout.is_some() => {
                    return Err(format!("{} is not a file or directory but has entries or a layout", inode.id).into())
                }
                _ => {}
            }
            for (name, id) in &inode.entries {
                if !self.inodes.contains_key(id) {
                    return Err(format!("entry {name:?} of {} names missing {id}", inode.id).into());
                }
                *named.entry(*id).or_default() += 1;
            }
        }
        for id in &self.orphans {
            if !self.inodes.get(id).is_some_and(|i| i.kind == InodeKind::File) {
                return Err(format!("orphan {id} is not a file").into());
            }
        }
        if let Some(f) = self.chunks.files().find(|f| !self.inodes.get(f).is_some_and(|i| i.kind == InodeKind::File)) {
            return Err(format!("committed chunks of {f}, which is not a file").into());
        }
        for (id, inode) in &self.inodes {
            let n = named.get(id).copied().unwrap_or(0);
            let want = match inode.kind {
                InodeKind::Dir => usize::from(*id != FileId::ROOT),
                _ => inode.nlink as usize,
            };
            if n != want || (self.orphans.contains(id) && n != 0) {
                return Err(format!("{id} is named {n} times, its link count is {}", inode.nlink).into());
            }
        }
        Ok(())
    }
}

/// Why a mutation does not fit the namespace's state (`apply` refuses it as
/// [`MetaError::DoesNotApply`] and changes nothing): a WAL that does not match its
/// checkpoint, or a bug. Each variant names the file ids and names involved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Misfit {
    /// The parent is not a directory.
    #[error("{0} is not a directory")]
    NotDir(FileId),
    /// The parent directory does not exist.
    #[error("directory {0} does not exist")]
    NoDir(FileId),
    /// A create makes a chain that exists.
    #[error("it creates {0}, which exists")]
    ChainExists(ChainId),
    /// The name is taken in `parent`.
    #[error("{name:?} already exists in {parent}")]
    NameTaken { parent: FileId, name: String },
    /// The new file's id was handed out before.
    #[error("file id {0} was already handed out")]
    IdTaken(FileId),
    /// `name` is not an entry of `parent`.
    #[error("{name:?} is not in {parent}")]
    NoEntry { parent: FileId, name: String },
    /// `name` in `parent` is a directory with entries (to remove or replace).
    #[error("{name:?} in {parent} is a directory that is not empty")]
    NotEmpty { parent: FileId, name: String },
    /// A directory removed as an orphan (only files can be).
    #[error("{name:?} in {parent} is a directory, which cannot be an orphan")]
    DirOrphan { parent: FileId, name: String },
    /// A link to a directory, or to a file with no name left.
    #[error("{0} is a directory or has no name left")]
    NotLinkable(FileId),
    /// The file does not exist.
    #[error("file {0} does not exist")]
    NoFile(FileId),
    /// A new session's id is open or was evicted.
    #[error("session {0:x} exists")]
    SessionTaken(SessionId),
    /// A request of a session that is not open.
    #[error("session {0:x} is not open")]
    NoSession(SessionId),
    /// A request done already (its slot is at its sequence number or past it).
    #[error("request {seq} of slot {slot} of session {session:x} was done already")]
    RequestDone { session: SessionId, slot: u16, seq: u64 },
    /// A request that carries a request.
    #[error("a request inside a request")]
    NestedRequest,
    /// A file is not a regular file (a size, truncate or chunk commit of a directory).
    #[error("{0} is not a regular file")]
    NotAFile(FileId),
    /// A reap of a file that is not an orphan.
    #[error("{0} is not an orphan")]
    NotOrphan(FileId),
    /// A chain change that does not follow the chain table.
    #[error(transparent)]
    Chains(#[from] ChainUpdateError),
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

/// Whether removing a name of `inode` leaves an orphan: its last name, of a file some session
/// has open.
fn last_name_of_open_file(inode: &Inode, ctx: &Context<'_>) -> bool {
    inode.kind == InodeKind::File && inode.nlink <= 1 && (ctx.is_open)(inode.id)
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

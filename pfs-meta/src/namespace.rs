//! The namespace: inodes and directory entries as a pure state machine, no I/O.
//!
//! Every mutating operation runs in two steps. [`Namespace::prepare`] validates a request
//! against the current state and decides everything that could vary (new ids, timestamps,
//! chosen storage targets), producing a fully determined [`Mutation`]. The caller logs that
//! record to the WAL and then calls [`Namespace::apply`], which cannot fail. Replaying the
//! same records into a namespace restored from the same checkpoint therefore reaches the
//! same state: a logged operation never fails or decides differently on replay.

use pfs_common::config::Config;
use pfs_common::layout::{Layout, LayoutPolicy};
use pfs_common::wire::meta::{Attr, DirEntry, FileKind, LayoutRequest, MetaRequest, MetaResponse, READDIR_PAGE_MAX};
use pfs_common::{ErrorCode, FileId, PfsError, Result, ServerId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest file or directory name, bytes.
pub const NAME_MAX_BYTES: usize = 255;
/// Longest path, bytes.
pub const PATH_MAX_BYTES: usize = 4096;

/// One file or directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub id: FileId,
    pub kind: FileKind,
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
    /// The attributes as sent on the wire.
    pub fn attr(&self) -> Attr {
        Attr {
            id: self.id,
            kind: self.kind,
            size: self.size,
            mtime_ms: self.mtime_ms,
            ctime_ms: self.ctime_ms,
            generation: self.generation,
            layout: self.layout.clone(),
            entries: self.entries.len() as u64,
        }
    }

    fn touch(&mut self, time_ms: u64) {
        self.generation += 1;
        self.ctime_ms = time_ms;
    }
}

/// A fully determined change of the namespace, as logged in the WAL. Applying it cannot fail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mutation {
    /// New directory `id` named `name` in `parent`, with the layout policy it inherits.
    Mkdir { parent: FileId, name: String, id: FileId, policy: LayoutPolicy, time_ms: u64 },
    /// New file `id` named `name` in `parent`, with its chosen layout.
    Create { parent: FileId, name: String, id: FileId, layout: Layout, time_ms: u64 },
    /// Move an entry; whatever `to_name` named in `to_parent` is dropped.
    Rename { from_parent: FileId, from_name: String, to_parent: FileId, to_name: String, time_ms: u64 },
    /// Remove the entry `name` of `parent` (a file or an empty directory) and its inode.
    Remove { parent: FileId, name: String, time_ms: u64 },
    /// Set a file's size exactly.
    Truncate { file: FileId, size: u64, time_ms: u64 },
    /// Raise a file's size to at least `size` and set its mtime.
    SetSize { file: FileId, size: u64, time_ms: u64 },
}

/// What [`Namespace::prepare`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to change: answer with this.
    Reply(MetaResponse),
    /// Log this mutation, then apply it.
    Mutate(Mutation),
}

/// The outcome of [`Namespace::apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The answer to the request.
    pub response: MetaResponse,
    /// Files whose inodes were dropped, with the storage targets holding their chunks.
    pub removed_files: Vec<(FileId, Vec<ServerId>)>,
}

/// What `prepare` needs from outside the namespace.
#[derive(Clone, Debug)]
pub struct Context<'a> {
    /// Wall-clock time, ms since the Unix epoch; recorded in the mutation.
    pub now_ms: u64,
    /// Storage servers that are up, for the layouts of new files.
    pub up_servers: &'a [ServerId],
}

/// The whole namespace: every inode, the id counter and the placement counter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    inodes: BTreeMap<FileId, Inode>,
    /// The next file id to hand out; ids are never reused.
    next_id: u64,
    /// Round-robin counter choosing the first target of new files (balances load).
    next_first: u64,
}

impl Namespace {
    /// An empty namespace: just the root directory, with `root_policy` for new files.
    pub fn new(root_policy: LayoutPolicy) -> Namespace {
        let root = Inode {
            id: FileId::ROOT,
            kind: FileKind::Dir,
            size: 0,
            mtime_ms: 0,
            ctime_ms: 0,
            generation: 1,
            layout: None,
            policy: Some(root_policy),
            entries: BTreeMap::new(),
        };
        Namespace { inodes: BTreeMap::from([(FileId::ROOT, root)]), next_id: FileId::ROOT.0 + 1, next_first: 0 }
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

    /// Resolves an absolute path to its inode.
    ///
    /// Errors: Invalid (bad path), NotFound, NotDir (a middle component is a file).
    pub fn resolve(&self, path: &str) -> Result<&Inode> {
        let parts = split_path(path)?;
        self.walk(path, &parts)
    }

    fn walk(&self, path: &str, parts: &[&str]) -> Result<&Inode> {
        let mut cur = self.inode(FileId::ROOT, path)?;
        for (i, name) in parts.iter().enumerate() {
            if cur.kind != FileKind::Dir {
                let prefix = format!("/{}", parts[..i].join("/"));
                return Err(PfsError::new(ErrorCode::NotDir, format!("{prefix} (in {path}) is not a directory")));
            }
            let id = *cur
                .entries
                .get(*name)
                .ok_or_else(|| PfsError::new(ErrorCode::NotFound, format!("{path}: no such file or directory")))?;
            cur = self.inode(id, path)?;
        }
        Ok(cur)
    }

    /// The parent directory of `path` and the last component's name.
    fn parent_of<'p>(&self, path: &'p str) -> Result<(&Inode, &'p str)> {
        let parts = split_path(path)?;
        let Some((name, dirs)) = parts.split_last() else {
            return Err(PfsError::new(ErrorCode::Invalid, format!("{path}: the root directory cannot be used here")));
        };
        let parent = self.walk(path, dirs)?;
        if parent.kind != FileKind::Dir {
            return Err(PfsError::new(ErrorCode::NotDir, format!("parent of {path} is not a directory")));
        }
        Ok((parent, name))
    }

    fn inode(&self, id: FileId, what: &str) -> Result<&Inode> {
        self.inodes
            .get(&id)
            .ok_or_else(|| PfsError::new(ErrorCode::NotFound, format!("{what}: file {id} does not exist")))
    }

    fn file(&self, id: FileId) -> Result<&Inode> {
        let inode = self.inode(id, "stat")?;
        if inode.kind == FileKind::Dir {
            return Err(PfsError::new(ErrorCode::IsDir, format!("file {id} is a directory")));
        }
        Ok(inode)
    }

    /// Validates `req` against the current state and decides its outcome. Requests that are
    /// not namespace operations (registry, chunk holders) are Invalid here.
    ///
    /// Errors: NotFound, Exists, NotDir, IsDir, NotEmpty, Invalid, Conflict, Unavailable (no
    /// storage server up for a new file); every message names the path or file id.
    pub fn prepare(&self, req: &MetaRequest, ctx: &Context<'_>) -> Result<Decision> {
        let now = ctx.now_ms;
        match req {
            MetaRequest::Lookup { path } => Ok(Decision::Reply(MetaResponse::Attr(self.resolve(path)?.attr()))),
            MetaRequest::Stat { file } => Ok(Decision::Reply(MetaResponse::Attr(self.inode(*file, "stat")?.attr()))),
            MetaRequest::Readdir { path, after, limit } => self.readdir(path, after.as_deref(), *limit),
            MetaRequest::Mkdir { path } => {
                let (parent, name) = self.parent_of(path)?;
                if parent.entries.contains_key(name) {
                    return Err(PfsError::new(ErrorCode::Exists, format!("{path} already exists")));
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
            MetaRequest::Create { path, layout, exclusive } => {
                let (parent, name) = self.parent_of(path)?;
                if let Some(&id) = parent.entries.get(name) {
                    let existing = self.inode(id, path)?;
                    if *exclusive {
                        return Err(PfsError::new(ErrorCode::Exists, format!("{path} already exists")));
                    }
                    if existing.kind == FileKind::Dir {
                        return Err(PfsError::new(ErrorCode::IsDir, format!("{path} is a directory")));
                    }
                    return Ok(Decision::Reply(MetaResponse::Attr(existing.attr())));
                }
                let policy = parent.policy.unwrap_or_default();
                let layout = self.choose_layout(path, layout, &policy, ctx.up_servers)?;
                Ok(Decision::Mutate(Mutation::Create {
                    parent: parent.id,
                    name: name.to_string(),
                    id: FileId(self.next_id),
                    layout,
                    time_ms: now,
                }))
            }
            MetaRequest::Rename { from, to, expected_generation } => {
                self.prepare_rename(from, to, *expected_generation, now)
            }
            MetaRequest::Unlink { path, expected_generation } => {
                let (parent, name) = self.parent_of(path)?;
                let target = self.entry(parent, name, path)?;
                if target.kind == FileKind::Dir {
                    return Err(PfsError::new(ErrorCode::IsDir, format!("{path} is a directory (use rmdir)")));
                }
                check_generation(path, target, *expected_generation)?;
                Ok(Decision::Mutate(Mutation::Remove { parent: parent.id, name: name.to_string(), time_ms: now }))
            }
            MetaRequest::Rmdir { path, expected_generation } => {
                let (parent, name) = self.parent_of(path)?;
                let target = self.entry(parent, name, path)?;
                if target.kind != FileKind::Dir {
                    return Err(PfsError::new(ErrorCode::NotDir, format!("{path} is not a directory")));
                }
                if !target.entries.is_empty() {
                    return Err(PfsError::new(
                        ErrorCode::NotEmpty,
                        format!("{path} is not empty ({} entries)", target.entries.len()),
                    ));
                }
                check_generation(path, target, *expected_generation)?;
                Ok(Decision::Mutate(Mutation::Remove { parent: parent.id, name: name.to_string(), time_ms: now }))
            }
            MetaRequest::Truncate { file, size, expected_generation } => {
                let inode = self.file(*file)?;
                check_generation(&format!("file {file}"), inode, *expected_generation)?;
                Ok(Decision::Mutate(Mutation::Truncate { file: *file, size: *size, time_ms: now }))
            }
            MetaRequest::SetSize { file, size } => {
                self.file(*file)?;
                Ok(Decision::Mutate(Mutation::SetSize { file: *file, size: *size, time_ms: now }))
            }
            MetaRequest::GetChunks { .. }
            | MetaRequest::ListServers
            | MetaRequest::Register { .. }
            | MetaRequest::Heartbeat { .. }
            | MetaRequest::ChunkReport { .. }
            | MetaRequest::OpenSession
            | MetaRequest::KeepAlive { .. }
            | MetaRequest::Acquire { .. }
            | MetaRequest::RevokeDone { .. }
            | MetaRequest::Release { .. }
            | MetaRequest::CloseSession { .. }
            | MetaRequest::Fenced { .. } => {
                Err(PfsError::new(ErrorCode::Invalid, "not a namespace operation".to_string()))
            }
        }
    }

    fn entry<'s>(&'s self, parent: &'s Inode, name: &str, path: &str) -> Result<&'s Inode> {
        let id = *parent
            .entries
            .get(name)
            .ok_or_else(|| PfsError::new(ErrorCode::NotFound, format!("{path}: no such file or directory")))?;
        self.inode(id, path)
    }

    fn readdir(&self, path: &str, after: Option<&str>, limit: u32) -> Result<Decision> {
        let dir = self.resolve(path)?;
        if dir.kind != FileKind::Dir {
            return Err(PfsError::new(ErrorCode::NotDir, format!("{path} is not a directory")));
        }
        let limit = limit.clamp(1, READDIR_PAGE_MAX) as usize;
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
            // Entries always name existing inodes; skip defensively rather than fail a listing.
            if let Some(inode) = self.inodes.get(id) {
                entries.push(DirEntry {
                    name: name.clone(),
                    id: *id,
                    kind: inode.kind,
                    size: inode.size,
                    generation: inode.generation,
                });
            }
        }
        Ok(Decision::Reply(MetaResponse::Entries { entries, more }))
    }

    fn choose_layout(&self, path: &str, req: &LayoutRequest, policy: &LayoutPolicy, up: &[ServerId]) -> Result<Layout> {
        let block_size = req.block_size.unwrap_or(policy.block_size);
        let chunk_size = req.chunk_size.unwrap_or(policy.chunk_size());
        let stripe_blocks = match chunk_size.checked_div(block_size as u64) {
            Some(n) if n > 0 && chunk_size % block_size as u64 == 0 => u32::try_from(n).unwrap_or(u32::MAX),
            _ => return Err(PfsError::new(
                ErrorCode::Invalid,
                format!(
                    "{path}: chunk size {chunk_size} bytes is not a positive multiple of the block size {block_size}"
                ),
            )),
        };
        let mut servers = up.to_vec();
        servers.sort();
        servers.dedup();
        if servers.is_empty() {
            return Err(PfsError::new(ErrorCode::Unavailable, format!("{path}: no storage server is up")));
        }
        let n = servers.len();
        let count = match req.stripe_count.unwrap_or(policy.stripe_count) {
            0 => n,
            c => (c as usize).min(n),
        };
        let first = (self.next_first % n as u64) as usize;
        let targets = (0..count).map(|i| servers[(first + i) % n]).collect();
        Layout::new(block_size, stripe_blocks, targets).map_err(|e| e.context(path))
    }

    fn prepare_rename(&self, from: &str, to: &str, expected: Option<u64>, now: u64) -> Result<Decision> {
        let from_parts = split_path(from)?;
        let to_parts = split_path(to)?;
        let (from_parent, from_name) = self.parent_of(from)?;
        let source = self.entry(from_parent, from_name, from)?;
        check_generation(from, source, expected)?;
        let (to_parent, to_name) = self.parent_of(to)?;
        if from_parts == to_parts {
            // POSIX: renaming a name onto itself does nothing.
            return Ok(Decision::Reply(MetaResponse::Done));
        }
        if source.kind == FileKind::Dir && to_parts.len() > from_parts.len() && to_parts.starts_with(&from_parts) {
            return Err(PfsError::new(
                ErrorCode::Invalid,
                format!("cannot move directory {from} into its own subtree ({to})"),
            ));
        }
        if let Some(&target_id) = to_parent.entries.get(to_name) {
            let target = self.inode(target_id, to)?;
            match (source.kind, target.kind) {
                (FileKind::File, FileKind::Dir) => {
                    return Err(PfsError::new(ErrorCode::IsDir, format!("rename {from} to {to}: {to} is a directory")))
                }
                (FileKind::Dir, FileKind::File) => {
                    return Err(PfsError::new(
                        ErrorCode::NotDir,
                        format!("rename {from} to {to}: {to} is not a directory"),
                    ))
                }
                (FileKind::Dir, FileKind::Dir) if !target.entries.is_empty() => {
                    return Err(PfsError::new(
                        ErrorCode::Exists,
                        format!("rename {from} to {to}: {to} is a directory that is not empty"),
                    ))
                }
                _ => {}
            }
        }
        Ok(Decision::Mutate(Mutation::Rename {
            from_parent: from_parent.id,
            from_name: from_name.to_string(),
            to_parent: to_parent.id,
            to_name: to_name.to_string(),
            time_ms: now,
        }))
    }

    /// Applies a mutation made by [`Namespace::prepare`] on this state (or replayed from the
    /// WAL). Never fails: a record that does not fit the state (impossible for records made
    /// by `prepare` on the same state) leaves the state as it is.
    pub fn apply(&mut self, m: &Mutation) -> Applied {
        let mut removed_files = Vec::new();
        let response = match m {
            Mutation::Mkdir { parent, name, id, policy, time_ms } => {
                self.next_id = self.next_id.max(id.0 + 1);
                let inode = Inode {
                    id: *id,
                    kind: FileKind::Dir,
                    size: 0,
                    mtime_ms: *time_ms,
                    ctime_ms: *time_ms,
                    generation: 1,
                    layout: None,
                    policy: Some(*policy),
                    entries: BTreeMap::new(),
                };
                self.link(*parent, name, inode, *time_ms);
                // Done, not Attr: what pfs-client expects of mkdir.
                MetaResponse::Done
            }
            Mutation::Create { parent, name, id, layout, time_ms } => {
                self.next_id = self.next_id.max(id.0 + 1);
                self.next_first = self.next_first.wrapping_add(1);
                let inode = Inode {
                    id: *id,
                    kind: FileKind::File,
                    size: 0,
                    mtime_ms: *time_ms,
                    ctime_ms: *time_ms,
                    generation: 1,
                    layout: Some(layout.clone()),
                    policy: None,
                    entries: BTreeMap::new(),
                };
                self.link(*parent, name, inode, *time_ms)
            }
            Mutation::Rename { from_parent, from_name, to_parent, to_name, time_ms } => {
                let moved = self.inodes.get_mut(from_parent).and_then(|p| p.entries.remove(from_name));
                if let Some(moved) = moved {
                    if let Some(p) = self.inodes.get_mut(from_parent) {
                        p.touch(*time_ms);
                        p.mtime_ms = *time_ms;
                    }
                    let replaced = self.inodes.get_mut(to_parent).and_then(|p| {
                        let old = p.entries.insert(to_name.clone(), moved);
                        p.touch(*time_ms);
                        p.mtime_ms = *time_ms;
                        old
                    });
                    if let Some(m) = self.inodes.get_mut(&moved) {
                        m.touch(*time_ms);
                    }
                    if let Some(old) = replaced {
                        self.drop_inode(old, &mut removed_files);
                    }
                }
                MetaResponse::Done
            }
            Mutation::Remove { parent, name, time_ms } => {
                let removed = self.inodes.get_mut(parent).and_then(|p| {
                    let id = p.entries.remove(name)?;
                    p.touch(*time_ms);
                    p.mtime_ms = *time_ms;
                    Some(id)
                });
                if let Some(id) = removed {
                    self.drop_inode(id, &mut removed_files);
                }
                MetaResponse::Done
            }
            Mutation::Truncate { file, size, time_ms } => self.resize(*file, *time_ms, |_| *size),
            Mutation::SetSize { file, size, time_ms } => {
                // Done, not Attr: writers only need to know the size is recorded.
                self.resize(*file, *time_ms, |old| old.max(*size));
                MetaResponse::Done
            }
        };
        Applied { response, removed_files }
    }

    fn link(&mut self, parent: FileId, name: &str, inode: Inode, time_ms: u64) -> MetaResponse {
        let attr = inode.attr();
        let Some(p) = self.inodes.get_mut(&parent) else { return MetaResponse::Attr(attr) };
        p.entries.insert(name.to_string(), inode.id);
        p.touch(time_ms);
        p.mtime_ms = time_ms;
        self.inodes.insert(inode.id, inode);
        MetaResponse::Attr(attr)
    }

    fn drop_inode(&mut self, id: FileId, removed: &mut Vec<(FileId, Vec<ServerId>)>) {
        if let Some(inode) = self.inodes.remove(&id) {
            if let Some(layout) = inode.layout {
                removed.push((id, layout.targets));
            }
        }
    }

    fn resize(&mut self, file: FileId, time_ms: u64, new_size: impl FnOnce(u64) -> u64) -> MetaResponse {
        match self.inodes.get_mut(&file) {
            Some(inode) => {
                inode.size = new_size(inode.size);
                inode.mtime_ms = time_ms;
                inode.touch(time_ms);
                MetaResponse::Attr(inode.attr())
            }
            None => MetaResponse::Done,
        }
    }
}

fn check_generation(what: &str, inode: &Inode, expected: Option<u64>) -> Result<()> {
    match expected {
        Some(g) if g != inode.generation => Err(PfsError::new(
            ErrorCode::Conflict,
            format!("{what}: expected generation {g}, found generation {}", inode.generation),
        )),
        _ => Ok(()),
    }
}

/// Splits an absolute path into its components (`/` gives none).
///
/// Errors: Invalid for a relative path, an empty, `.` or `..` component, a name over
/// [`NAME_MAX_BYTES`] or containing NUL, or a path over [`PATH_MAX_BYTES`]; TooLarge is not
/// used so that every bad path is one code.
pub fn split_path(path: &str) -> Result<Vec<&str>> {
    let shown = || {
        if path.len() > 64 {
            let mut end = 64;
            while !path.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}...", &path[..end])
        } else {
            path.to_string()
        }
    };
    if path.len() > PATH_MAX_BYTES {
        return Err(PfsError::new(
            ErrorCode::Invalid,
            format!("path {} is {} bytes, over the limit of {PATH_MAX_BYTES}", shown(), path.len()),
        ));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PfsError::new(ErrorCode::Invalid, format!("path {:?} is not absolute", shown())));
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    for part in &parts {
        if part.is_empty() || *part == "." || *part == ".." || part.contains('\0') {
            return Err(PfsError::new(ErrorCode::Invalid, format!("path {:?} has a bad component {part:?}", shown())));
        }
        if part.len() > NAME_MAX_BYTES {
            return Err(PfsError::new(
                ErrorCode::Invalid,
                format!("path {}: a name is {} bytes, over the limit of {NAME_MAX_BYTES}", shown(), part.len()),
            ));
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UP: [ServerId; 3] = [ServerId(1), ServerId(2), ServerId(3)];

    fn ctx(now_ms: u64) -> Context<'static> {
        Context { now_ms, up_servers: &UP }
    }

    fn run(ns: &mut Namespace, req: MetaRequest) -> Result<MetaResponse> {
        match ns.prepare(&req, &ctx(1000))? {
            Decision::Reply(r) => Ok(r),
            Decision::Mutate(m) => Ok(ns.apply(&m).response),
        }
    }

    fn attr(r: MetaResponse) -> Attr {
        match r {
            MetaResponse::Attr(a) => a,
            other => panic!("expected Attr, got {other:?}"),
        }
    }

    fn mkdir(p: &str) -> MetaRequest {
        MetaRequest::Mkdir { path: p.into() }
    }
    fn create(p: &str) -> MetaRequest {
        MetaRequest::Create { path: p.into(), layout: LayoutRequest::default(), exclusive: true }
    }
    fn lookup(p: &str) -> MetaRequest {
        MetaRequest::Lookup { path: p.into() }
    }

    #[test]
    fn paths_are_validated() {
        for bad in ["", "a/b", "/a//b", "/a/", "/a/../b", "/./a", "/a\0b"] {
            assert_eq!(split_path(bad).unwrap_err().code, ErrorCode::Invalid, "{bad:?}");
        }
        let long_name = format!("/{}", "x".repeat(256));
        assert!(split_path(&long_name).unwrap_err().message.contains("255"));
        let long_path = "/abc".repeat(1100);
        assert!(split_path(&long_path).unwrap_err().message.contains("4096"));
        assert_eq!(split_path("/").unwrap(), Vec::<&str>::new());
        assert_eq!(split_path("/a/b").unwrap(), vec!["a", "b"]);
    }

    #[test]
    fn mkdir_create_lookup_and_errors() {
        let mut ns = Namespace::new(LayoutPolicy::default());
        assert_eq!(run(&mut ns, mkdir("/d")).unwrap(), MetaResponse::Done);
        let d = attr(run(&mut ns, lookup("/d")).unwrap());
        assert_eq!(d.kind, FileKind::Dir);
        assert_eq!(run(&mut ns, mkdir("/d")).unwrap_err().code, ErrorCode::Exists);
        assert_eq!(run(&mut ns, mkdir("/x/y")).unwrap_err().code, ErrorCode::NotFound);
        let f = attr(run(&mut ns, create("/d/f")).unwrap());
        assert_eq!(f.layout.as_ref().unwrap().targets.len(), 3);
        assert!(f.id.0 > d.id.0);
        let e = run(&mut ns, create("/d/f")).unwrap_err();
        assert_eq!(e.code, ErrorCode::Exists);
        assert!(e.message.contains("/d/f"), "{e}");
        // Non-exclusive create opens the existing file.
        let again = attr(
            run(
                &mut ns,
                MetaRequest::Create { path: "/d/f".into(), layout: LayoutRequest::default(), exclusive: false },
            )
            .unwrap(),
        );
        assert_eq!(again, f);
        assert_eq!(run(&mut ns, create("/d/f/g")).unwrap_err().code, ErrorCode::NotDir);
        assert_eq!(run(&mut ns, lookup("/d/f/g")).unwrap_err().code, ErrorCode::NotDir);
        assert_eq!(attr(run(&mut ns, lookup("/d/f")).unwrap()), f);
        assert_eq!(run(&mut ns, lookup("relative")).unwrap_err().code, ErrorCode::Invalid);
        assert_eq!(run(&mut ns, mkdir("/")).unwrap_err().code, ErrorCode::Invalid);
    }

    #[test]
    fn layouts_inherit_clamp_and_rotate() {
        let policy = LayoutPolicy { block_size: 4096, stripe_blocks: 4, stripe_count: 2 };
        let mut ns = Namespace::new(policy);
        run(&mut ns, mkdir("/d")).unwrap();
        let a = attr(run(&mut ns, create("/d/a")).unwrap()).layout.unwrap();
        let b = attr(run(&mut ns, create("/d/b")).unwrap()).layout.unwrap();
        assert_eq!((a.block_size, a.stripe_blocks), (4096, 4));
        assert_eq!(a.targets, vec![ServerId(1), ServerId(2)]);
        assert_eq!(b.targets, vec![ServerId(2), ServerId(3)]);
        let req = MetaRequest::Create {
            path: "/c".into(),
            layout: LayoutRequest { block_size: Some(8192), chunk_size: None, stripe_count: Some(99) },
            exclusive: true,
        };
        let c = attr(run(&mut ns, req).unwrap()).layout.unwrap();
        assert_eq!(c.block_size, 8192);
        assert_eq!(c.targets, vec![ServerId(3), ServerId(1), ServerId(2)]);
        let bad = MetaRequest::Create {
            path: "/bad".into(),
            layout: LayoutRequest { block_size: Some(1000), ..Default::default() },
            exclusive: true,
        };
        let e = run(&mut ns, bad).unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid);
        assert!(e.message.contains("/bad"), "{e}");
        let none_up = Context { now_ms: 1, up_servers: &[] };
        let e = ns.prepare(&create("/e"), &none_up).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable);
    }

    #[test]
    fn readdir_pages_in_name_order() {
        let mut ns = Namespace::new(LayoutPolicy::default());
        for n in ["c", "a", "e", "b", "d"] {
            run(&mut ns, create(&format!("/{n}"))).unwrap();
        }
        let page = |ns: &mut Namespace, after: Option<&str>| match run(
            ns,
            MetaRequest::Readdir { path: "/".into(), after: after.map(String::from), limit: 2 },
        )
        .unwrap()
        {
            MetaResponse::Entries { entries, more } => (entries.into_iter().map(|e| e.name).collect::<Vec<_>>(), more),
            other => panic!("{other:?}"),
        };
        assert_eq!(page(&mut ns, None), (vec!["a".into(), "b".into()], true));
        assert_eq!(page(&mut ns, Some("b")), (vec!["c".into(), "d".into()], true));
        assert_eq!(page(&mut ns, Some("d")), (vec!["e".into()], false));
        let e = run(&mut ns, MetaRequest::Readdir { path: "/a".into(), after: None, limit: 1 }).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotDir);
    }

    #[test]
    fn rename_rules() {
        let mut ns = Namespace::new(LayoutPolicy::default());
        run(&mut ns, mkdir("/d")).unwrap();
        run(&mut ns, mkdir("/d/sub")).unwrap();
        run(&mut ns, mkdir("/full")).unwrap();
        run(&mut ns, create("/full/x")).unwrap();
        let f = attr(run(&mut ns, create("/f")).unwrap());
        let g = attr(run(&mut ns, create("/g")).unwrap());
        let rename =
            |from: &str, to: &str| MetaRequest::Rename { from: from.into(), to: to.into(), expected_generation: None };
        assert_eq!(run(&mut ns, rename("/d", "/d/sub/x")).unwrap_err().code, ErrorCode::Invalid);
        assert_eq!(run(&mut ns, rename("/f", "/d")).unwrap_err().code, ErrorCode::IsDir);
        assert_eq!(run(&mut ns, rename("/d", "/f")).unwrap_err().code, ErrorCode::NotDir);
        assert_eq!(run(&mut ns, rename("/d", "/full")).unwrap_err().code, ErrorCode::Exists);
        assert_eq!(run(&mut ns, rename("/nope", "/z")).unwrap_err().code, ErrorCode::NotFound);
        let e = run(
            &mut ns,
            MetaRequest::Rename { from: "/f".into(), to: "/h".into(), expected_generation: Some(f.generation + 5) },
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        assert!(e.message.contains("/f") && e.message.contains(&format!("{}", f.generation + 5)), "{e}");
        // Replacing a file drops it and reports its targets.
        let m = match ns.prepare(&rename("/f", "/g"), &ctx(5)).unwrap() {
            Decision::Mutate(m) => m,
            other => panic!("{other:?}"),
        };
        let applied = ns.apply(&m);
        assert_eq!(applied.removed_files, vec![(g.id, g.layout.unwrap().targets)]);
        let moved = attr(run(&mut ns, lookup("/g")).unwrap());
        assert_eq!(moved.id, f.id);
        assert!(moved.generation > f.generation);
        assert!(!ns.exists(g.id));
        assert_eq!(run(&mut ns, lookup("/f")).unwrap_err().code, ErrorCode::NotFound);
        // A directory moves with its subtree; an empty directory target is replaced.
        run(&mut ns, mkdir("/empty")).unwrap();
        run(&mut ns, rename("/d", "/empty")).unwrap();
        assert_eq!(attr(run(&mut ns, lookup("/empty/sub")).unwrap()).kind, FileKind::Dir);
        assert_eq!(run(&mut ns, rename("/g", "/g")).unwrap(), MetaResponse::Done);
    }

    #[test]
    fn unlink_rmdir_truncate_setsize() {
        let mut ns = Namespace::new(LayoutPolicy::default());
        run(&mut ns, mkdir("/d")).unwrap();
        let f = attr(run(&mut ns, create("/d/f")).unwrap());
        let unlink = |p: &str, g| MetaRequest::Unlink { path: p.into(), expected_generation: g };
        let rmdir = |p: &str| MetaRequest::Rmdir { path: p.into(), expected_generation: None };
        assert_eq!(run(&mut ns, rmdir("/d")).unwrap_err().code, ErrorCode::NotEmpty);
        assert_eq!(run(&mut ns, rmdir("/d/f")).unwrap_err().code, ErrorCode::NotDir);
        assert_eq!(run(&mut ns, unlink("/d", None)).unwrap_err().code, ErrorCode::IsDir);
        assert_eq!(run(&mut ns, MetaRequest::SetSize { file: f.id, size: 100 }).unwrap(), MetaResponse::Done);
        let s = attr(run(&mut ns, MetaRequest::Stat { file: f.id }).unwrap());
        assert_eq!(s.size, 100);
        assert_eq!(s.generation, f.generation + 1);
        run(&mut ns, MetaRequest::SetSize { file: f.id, size: 50 }).unwrap();
        let s = attr(run(&mut ns, MetaRequest::Stat { file: f.id }).unwrap());
        assert_eq!(s.size, 100, "SetSize never shrinks");
        let t = attr(run(&mut ns, MetaRequest::Truncate { file: f.id, size: 7, expected_generation: None }).unwrap());
        assert_eq!(t.size, 7);
        let e = run(&mut ns, MetaRequest::Truncate { file: f.id, size: 1, expected_generation: Some(1) }).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        let d = attr(run(&mut ns, lookup("/d")).unwrap());
        assert_eq!(run(&mut ns, MetaRequest::SetSize { file: d.id, size: 1 }).unwrap_err().code, ErrorCode::IsDir);
        assert_eq!(run(&mut ns, unlink("/d/f", Some(1))).unwrap_err().code, ErrorCode::Conflict);
        run(&mut ns, unlink("/d/f", Some(t.generation))).unwrap();
        assert_eq!(run(&mut ns, MetaRequest::Stat { file: f.id }).unwrap_err().code, ErrorCode::NotFound);
        assert!(attr(run(&mut ns, lookup("/d")).unwrap()).generation > d.generation);
        run(&mut ns, rmdir("/d")).unwrap();
        // Ids never repeat, even after removal.
        let g = attr(run(&mut ns, create("/g")).unwrap());
        assert!(g.id.0 > f.id.0);
    }

    fn arb_name() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from)
    }

    fn arb_path() -> impl Strategy<Value = String> {
        prop::collection::vec(arb_name(), 1..4).prop_map(|v| format!("/{}", v.join("/")))
    }

    fn arb_op() -> impl Strategy<Value = MetaRequest> {
        prop_oneof![
            arb_path().prop_map(|path| MetaRequest::Mkdir { path }),
            (arb_path(), any::<bool>(), prop::option::of(0u32..5)).prop_map(|(path, exclusive, sc)| {
                MetaRequest::Create {
                    path,
                    layout: LayoutRequest { stripe_count: sc, ..Default::default() },
                    exclusive,
                }
            }),
            (arb_path(), arb_path()).prop_map(|(from, to)| MetaRequest::Rename { from, to, expected_generation: None }),
            arb_path().prop_map(|path| MetaRequest::Unlink { path, expected_generation: None }),
            arb_path().prop_map(|path| MetaRequest::Rmdir { path, expected_generation: None }),
            (2u64..20, 0u64..1000).prop_map(|(f, size)| MetaRequest::SetSize { file: FileId(f), size }),
            (2u64..20, 0u64..1000, prop::option::of(1u64..4)).prop_map(|(f, size, g)| MetaRequest::Truncate {
                file: FileId(f),
                size,
                expected_generation: g
            }),
        ]
    }

    proptest! {
        /// Replaying the logged mutation records into a fresh namespace reproduces the state,
        /// and the records survive a postcard round trip (as they do through the WAL).
        #[test]
        fn replay_gives_identical_state(ops in prop::collection::vec(arb_op(), 0..60)) {
            let mut ns = Namespace::new(LayoutPolicy::default());
            let mut log = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                if let Ok(Decision::Mutate(m)) = ns.prepare(op, &ctx(i as u64)) {
                    ns.apply(&m);
                    log.push(postcard::to_allocvec(&m).unwrap());
                }
                // Invariant: every entry names an existing inode.
                for inode in ns.inodes.values() {
                    for id in inode.entries.values() {
                        prop_assert!(ns.inodes.contains_key(id));
                    }
                }
            }
            let mut replayed = Namespace::new(LayoutPolicy::default());
            for bytes in &log {
                let m: Mutation = postcard::from_bytes(bytes).unwrap();
                replayed.apply(&m);
            }
            prop_assert_eq!(&replayed, &ns);
            let snap: Namespace = postcard::from_bytes(&postcard::to_allocvec(&ns).unwrap()).unwrap();
            prop_assert_eq!(snap, ns);
        }
    }
}

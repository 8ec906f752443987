//! The namespace service of pfs-meta: the file tree. Paths are absolute and `/`-separated
//! (`/dir/file`), at most [`PATH_MAX`] bytes with names of at most [`NAME_MAX`] bytes
//! (NameTooLong), and resolve as on Linux: repeated slashes count as one, `.` is the
//! directory itself, `..` its parent (`/..` is `/`), and a trailing slash requires a
//! directory (NotDir). Every mutation is durable (in pfs-meta's WAL) when answered.

use super::{service, MetaRequest};
use crate::ids::FileId;
use crate::layout::{Layout, LayoutChoice};
use crate::token::SessionId;
use serde::{Deserialize, Serialize};

service! {
    /// Requests of the namespace service.
    pub enum NamespaceRequest in MetaRequest::Namespace {
        Mkdir(Mkdir) -> (),
        Create(Create) -> Attr,
        Lookup(Lookup) -> Attr,
        Stat(Stat) -> Attr,
        Readdir(Readdir) -> DirPage,
        Rename(Rename) -> (),
        Unlink(Unlink) -> (),
        Rmdir(Rmdir) -> (),
        Truncate(Truncate) -> Attr,
        SetSize(SetSize) -> (),
        Open(Open) -> Attr,
        Close(Close) -> (),
    }
}

/// Make a directory. Errors: Exists, NotFound (parent), NotDir.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mkdir {
    pub path: String,
}

/// Create a regular file with a layout (unset fields inherit from the parent directory's
/// policy). With `exclusive`, an existing file is an error (Exists); without, an existing
/// file is answered as it is. With `session`, the file is also opened by that session, as
/// [`Open`] does, in the same step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Create {
    pub path: String,
    pub layout: LayoutChoice,
    pub exclusive: bool,
    pub session: Option<SessionId>,
}

/// Resolve a path to a regular file and record that `session` has it open: until the session
/// closes it ([`Close`]) or ends, removing or replacing the file keeps its data (an orphan),
/// as POSIX does for an unlinked open file. The session must be this connection's.
/// Errors: NotFound, NotDir, IsDir, Evicted, Invalid (another connection's session).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    pub path: String,
    pub session: SessionId,
}

/// `session` no longer has `file` open; an orphan nobody has open any more is removed with
/// its chunks. Errors: Evicted, Invalid (another connection's session).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Close {
    pub file: FileId,
    pub session: SessionId,
}

/// Resolve a path to its attributes. Errors: NotFound, NotDir.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lookup {
    pub path: String,
}

/// Attributes of a file by id. Errors: NotFound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    pub file: FileId,
}

/// Up to `limit` entries (at most [`READDIR_PAGE_MAX`]) of a directory in name order,
/// starting after `after`. Errors: NotFound, NotDir, NameTooLong (an `after` over
/// [`NAME_MAX`] bytes, which no entry can follow).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readdir {
    pub path: String,
    /// The last name of the previous page; at most [`NAME_MAX`] bytes.
    pub after: Option<String>,
    pub limit: u32,
}

/// Move `from` to `to`, replacing a file at `to` (not a directory). With
/// `expected_generation`, fails with Conflict if `from` has another generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rename {
    pub from: String,
    pub to: String,
    pub expected_generation: Option<u64>,
}

/// Remove a file. Errors: NotFound, IsDir, Conflict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unlink {
    pub path: String,
    pub expected_generation: Option<u64>,
}

/// Remove an empty directory. Errors: NotFound, NotDir, NotEmpty, Conflict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rmdir {
    pub path: String,
    pub expected_generation: Option<u64>,
}

/// Set a file's size exactly (shrink or grow), in bytes, at most
/// [`crate::layout::MAX_FILE_SIZE`]. The client truncates the chunks on the storage servers
/// first. Errors: NotFound, IsDir, Conflict, Invalid (a size past the largest file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truncate {
    pub file: FileId,
    pub size: u64,
    pub expected_generation: Option<u64>,
}

/// Raise a file's size to at least `size` bytes (at most [`crate::layout::MAX_FILE_SIZE`])
/// and set its mtime (writers send it on fsync and close). Never shrinks, so concurrent
/// writers can each report their end. Errors: NotFound, IsDir, Invalid (a size past the
/// largest file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetSize {
    pub file: FileId,
    pub size: u64,
}

/// File or directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
}

/// Attributes of a file or directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub id: FileId,
    pub kind: FileKind,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Last data or size change, ms since the Unix epoch.
    pub mtime_ms: u64,
    /// Last attribute change, ms since the Unix epoch.
    pub ctime_ms: u64,
    /// Bumped on every change of this inode (conditional operations compare it).
    pub generation: u64,
    /// The stripe layout (files only).
    pub layout: Option<Layout>,
    /// Number of entries (directories only).
    pub entries: u64,
}

/// One page of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirPage {
    pub entries: Vec<DirEntry>,
    /// More entries follow the last one.
    pub more: bool,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub id: FileId,
    pub kind: FileKind,
    pub size: u64,
    pub generation: u64,
}

/// Most entries one `Readdir` returns.
pub const READDIR_PAGE_MAX: u32 = 4096;
/// Longest file or directory name, bytes (Linux's NAME_MAX).
pub const NAME_MAX: usize = 255;
/// Longest path, bytes (Linux's PATH_MAX).
pub const PATH_MAX: usize = 4096;

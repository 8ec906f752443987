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
        Mkdir(Mkdir) -> Attr,
        Create(Create) -> Attr,
        Mknod(Mknod) -> Attr,
        Symlink(Symlink) -> Attr,
        Link(Link) -> Attr,
        SetAttr(SetAttr) -> Attr,
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

impl NamespaceRequest {
    /// The request id the change carries, if it is one that can carry one.
    pub fn request(&self) -> Option<RequestId> {
        use NamespaceRequest as N;
        match self {
            N::Mkdir(c) => c.request,
            N::Create(c) => c.request,
            N::Mknod(c) => c.request,
            N::Symlink(c) => c.request,
            N::Link(c) => c.request,
            N::Rename(c) => c.request,
            N::Unlink(c) => c.request,
            N::Rmdir(c) => c.request,
            N::SetAttr(_)
            | N::Lookup(_)
            | N::Stat(_)
            | N::Readdir(_)
            | N::Truncate(_)
            | N::SetSize(_)
            | N::Open(_)
            | N::Close(_) => None,
        }
    }
}

/// Where a request points: an absolute path, an entry of a directory given by id (what a
/// FUSE mount knows: right even after another client renamed a directory above it), or an
/// inode by id (for [`Lookup`], [`Readdir`] and [`Open`] only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// An absolute path (see the module documentation).
    Path(String),
    /// Entry `name` of directory `dir`; `name` is one component: no `/`, not `.` or `..`,
    /// at most [`NAME_MAX`] bytes (BadPath, NameTooLong).
    Entry { dir: FileId, name: String },
    /// The inode itself, whatever its names.
    Id(FileId),
}

impl From<&str> for Target {
    fn from(path: &str) -> Target {
        Target::Path(path.to_string())
    }
}

impl From<&String> for Target {
    fn from(path: &String) -> Target {
        Target::Path(path.clone())
    }
}

impl From<FileId> for Target {
    fn from(id: FileId) -> Target {
        Target::Id(id)
    }
}

impl From<String> for Target {
    fn from(path: String) -> Target {
        Target::Path(path)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Path(p) => f.write_str(p),
            Target::Entry { dir, name } => write!(f, "{name:?} in directory {dir}"),
            Target::Id(id) => write!(f, "file {id}"),
        }
    }
}

/// Owner and permission bits of a new inode. A directory with the set-group-ID bit gives
/// its group (and, to new directories, the bit) to what is created in it, as on Linux.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAttrs {
    /// Permission bits with set-user-ID, set-group-ID and sticky (`0o7777`; more is Invalid).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl NewAttrs {
    /// What pfs's own tools give what they create: this process's effective user and group,
    /// `0o755` for a directory and `0o644` for anything else.
    pub fn for_process(kind: FileKind) -> NewAttrs {
        // SAFETY: geteuid and getegid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let mode = if kind == FileKind::Dir { 0o755 } else { 0o644 };
        NewAttrs { mode, uid, gid }
    }
}

/// Most requests in flight per session that carry a [`RequestId`] (its slots, 0 to
/// `REQUEST_SLOTS - 1`).
pub const REQUEST_SLOTS: u16 = 64;

/// Names one namespace change of a session, so that sending it again when its fate is
/// unknown (the connection broke before the answer, or the leader changed after proposing
/// it) is answered with the first outcome instead of being done twice. pfs-meta logs the
/// last `seq` done in each slot of each open session with the change itself, and answers a
/// change whose `seq` is that one from what it did (the file it made), as Lustre's last_rcvd
/// table and NFSv4.1's session slots do. A session sends at most one request per slot at a
/// time, with a `seq` higher than the slot's last one.
///
/// Errors: Denied (a session not open on this connection), Invalid (`slot` at or past
/// [`REQUEST_SLOTS`], or a `seq` lower than the slot's last one: a request overtaken by
/// a later one), NoSuchFile (done, but the file it made is gone since).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestId {
    pub session: SessionId,
    pub slot: u16,
    pub seq: u64,
}

/// Make a directory. Errors: Exists, NotFound (parent), NotDir, Invalid (mode).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mkdir {
    pub target: Target,
    pub attrs: NewAttrs,
    /// Names this change so that it is done once however often it is sent ([`RequestId`]).
    pub request: Option<RequestId>,
}

/// Create a regular file with a layout (unset fields inherit from the parent directory's
/// policy). With `exclusive`, an existing file is an error (Exists); without, an existing
/// file is answered as it is. With `session`, the file is also opened by that session, as
/// [`Open`] does, in the same step; `closed` (which needs `session`) are closes the session
/// made since it last told pfs-meta, served first, whatever the create's outcome (see
/// [`Close`]). Errors: also Invalid (`closed` without a session or longer than
/// [`CLOSE_MAX`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Create {
    pub target: Target,
    pub layout: LayoutChoice,
    pub exclusive: bool,
    pub session: Option<SessionId>,
    pub attrs: NewAttrs,
    pub closed: Vec<Closed>,
    /// Names this change so that it is done once however often it is sent ([`RequestId`]).
    pub request: Option<RequestId>,
}

/// Make a named pipe, socket or device node (`kind` Fifo, Socket, CharDevice or
/// BlockDevice; `rdev` the device number, 0 for the others). pfs keeps only the inode: the
/// kernel of the node that opens it provides the pipe, socket or device.
/// Errors: as [`Mkdir`]; Invalid for another kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mknod {
    pub target: Target,
    pub kind: FileKind,
    pub rdev: u64,
    pub attrs: NewAttrs,
    /// Names this change so that it is done once however often it is sent ([`RequestId`]).
    pub request: Option<RequestId>,
}

/// Make a symbolic link at `target` whose contents are `link` (1 to [`PATH_MAX`] bytes, not
/// resolved by pfs-meta). Its mode is always `0o777`. Errors: as [`Mkdir`]; NameTooLong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Symlink {
    pub target: Target,
    pub link: String,
    pub uid: u32,
    pub gid: u32,
    /// Names this change so that it is done once however often it is sent ([`RequestId`]).
    pub request: Option<RequestId>,
}

/// Give `file` (not a directory) another name, `target`; its link count goes up by one.
/// Errors: NoSuchFile, IsDir (`file` is a directory), Exists, NotFound, NotDir,
/// Invalid (the link count would pass [`LINK_MAX`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub file: FileId,
    pub target: Target,
    /// Names this change so that it is done once however often it is sent ([`RequestId`]).
    pub request: Option<RequestId>,
}

/// A time to set: the time pfs-meta handles the request, or a given one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    Now,
    /// Nanoseconds since the Unix epoch (negative: before it).
    At(i64),
}

/// Change `file`'s mode (`0o7777` bits), owner, group, or access and modification times;
/// `None` leaves a field as it is. The change time is always set to now. pfs-meta makes no
/// permission check: the mount's kernel checked the caller (see the README's trust model).
/// Errors: NoSuchFile, Invalid (mode bits beyond `0o7777`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub file: FileId,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// Resolve a regular file (by path, or by id while it has a name) and record that `session`
/// has it open once more: until the session closes it as often ([`Close`]) or ends, removing
/// or replacing the file keeps its data (an orphan), as POSIX does for an unlinked open
/// file. The session must be this connection's. `closed` are closes the session made since
/// it last told pfs-meta, served first, whatever the open's outcome (see [`Close`]).
/// Errors: NotFound, NoSuchFile, NotDir, IsDir (not a regular file), Evicted, Denied
/// (another connection's session), Invalid (`closed` longer than [`CLOSE_MAX`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    pub target: Target,
    pub session: SessionId,
    pub closed: Vec<Closed>,
}

/// Most closes one request carries ([`Close`], or `closed` of [`Create`] and [`Open`]).
pub const CLOSE_MAX: usize = 256;

/// The session closed `file`, which it had opened `opens` times (each [`Open`], and each
/// [`Create`] with the session, counts once). Counting, rather than a flag, makes closes
/// commute with opens: a close that reaches pfs-meta after a later open of the same file
/// (another handle's, sent while the close was on its way) takes away only its own opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closed {
    pub file: FileId,
    pub opens: u32,
}

/// `session` closed `files` (at most [`CLOSE_MAX`]); an orphan nobody has open any more is
/// removed with its chunks. A client may send closes late, in batches, or carried by its next
/// [`Create`] or [`Open`]: until then the file only counts as open a little longer.
/// Errors: Evicted, Denied (another connection's session), Invalid (too many).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Close {
    pub session: SessionId,
    pub files: Vec<Closed>,
}

/// Resolve a target to its attributes. Errors: NotFound, NoSuchFile, NotDir.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lookup {
    pub target: Target,
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
    pub dir: Target,
    /// The last name of the previous page; at most [`NAME_MAX`] bytes.
    pub after: Option<String>,
    pub limit: u32,
}

/// Move `from` to `to` as rename(2) does: an entry at `to` is replaced (a directory only by
/// a directory, and only if empty); two names of the same inode are left as they are. With
/// `no_replace`, an entry at `to` is Exists (renameat2's RENAME_NOREPLACE). With
/// `expected_generation`, fails with Conflict if `from` has another generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rename {
    pub from: Target,
    pub to: Target,
    pub expected_generation: Option<u64>,
    pub no_replace: bool,
    /// Names this change so that it is done once however often it is sent ([`RequestId`]).
    pub request: Option<RequestId>,
}

/// Remove a name of anything but a directory; the inode goes with its last name (or, open
/// somewhere, with its last close). Errors: NotFound, IsDir, Conflict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unlink {
    pub target: Target,
    pub expected_generation: Option<u64>,
    /// Names this change so that it is done once however often it is sent ([`RequestId`]).
    pub request: Option<RequestId>,
}

/// Remove an empty directory. Errors: NotFound, NotDir, NotEmpty, Conflict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rmdir {
    pub target: Target,
    pub expected_generation: Option<u64>,
    /// Names this change so that it is done once however often it is sent ([`RequestId`]).
    pub request: Option<RequestId>,
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

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// A regular file: striped data.
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    /// The `S_IFMT` bits of this kind (`st_mode`).
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => libc::S_IFREG,
            FileKind::Dir => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
            FileKind::CharDevice => libc::S_IFCHR,
            FileKind::BlockDevice => libc::S_IFBLK,
        }
    }

    /// The kind whose `S_IFMT` bits `mode` carries, if any.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        [
            FileKind::File,
            FileKind::Dir,
            FileKind::Symlink,
            FileKind::Fifo,
            FileKind::Socket,
            FileKind::CharDevice,
            FileKind::BlockDevice,
        ]
        .into_iter()
        .find(|k| k.mode_bits() == mode & libc::S_IFMT)
    }
}

/// Most names one inode may have (Linux ext4's limit).
pub const LINK_MAX: u32 = 65000;

/// Attributes of an inode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub id: FileId,
    pub kind: FileKind,
    /// Size in bytes: of the data for files, of the contents for symbolic links, else 0.
    pub size: u64,
    /// Permission bits with set-user-ID, set-group-ID and sticky (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Names of this inode (a directory: 2 plus its subdirectories; an open file with no
    /// name left: 0).
    pub nlink: u32,
    /// Device number (character and block devices).
    pub rdev: u64,
    /// Last access set by `utimens`, creation otherwise (pfs does not record reads), ns
    /// since the Unix epoch.
    pub atime_ns: i64,
    /// Last data or size change, ns since the Unix epoch.
    pub mtime_ns: i64,
    /// Last change of the inode (attributes, names, data), ns since the Unix epoch.
    pub ctime_ns: i64,
    /// Bumped on every change of this inode (conditional operations compare it).
    pub generation: u64,
    /// The stripe layout (files only).
    pub layout: Option<Layout>,
    /// Number of entries (directories only).
    pub entries: u64,
    /// Contents of a symbolic link.
    pub symlink: Option<String>,
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

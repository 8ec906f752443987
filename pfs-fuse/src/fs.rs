//! [`PfsFs`]: FUSE requests as pfs client calls.
//!
//! The kernel names everything by inode number, and so does pfs-meta: an inode number is
//! the pfs file id, a name is an entry of a directory given by id ([`Target::Entry`]), and a
//! file is opened by id. No path is kept here, so a rename by another client can never leave
//! this mount acting on a stale path.

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use pfs_client::ErrorCode;
use pfs_client::{Attr, Client, CreateOptions, DirEntry, File, FileKind, NewAttrs, SetAttr, SetTime, Target};
use pfs_common::FileId;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{debug, warn};

/// Attribute and entry timeout of files and everything but directories and symbolic links:
/// none, so another client's change of a size or name is seen at once.
const TTL: Duration = Duration::ZERO;
/// Largest read or write the kernel sends, bytes (this kernel's FUSE limit).
const MAX_IO: u32 = 1 << 20;
/// How files are opened: no page cache (the client's token-coherent cache serves), and
/// writes to one file from several threads go in parallel (byte-range tokens order them).
const OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_DIRECT_IO.union(FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES);

/// A pfs cluster as a FUSE file system (see the crate documentation).
pub struct PfsFs {
    rt: Arc<tokio::runtime::Runtime>,
    client: Client,
    /// Open files by handle.
    files: parking_lot::Mutex<HashMap<u64, File>>,
    /// Directory listings by handle, taken at opendir (readdir pages through them).
    dirs: parking_lot::Mutex<HashMap<u64, Vec<DirEntry>>>,
    next_handle: AtomicU64,
    /// Attribute and entry timeout of directories and symbolic links: how long the kernel may
    /// walk a path (and check permissions) without asking pfs-meta, so how long a directory
    /// or link another client renamed, removed or chmod'ed can still be seen as it was.
    dir_ttl: Duration,
}

/// The errno of a client error, with the full message in the mount's log: at `warn` for
/// every error but the answers a namespace call gives in normal use (no such entry, it
/// exists, not empty, not a directory, is a directory, name too long), which go at `debug`
/// (a shell's path lookups meet ENOENT all the time).
fn errno(what: &str, e: pfs_client::Error) -> Errno {
    let code = e.code();
    match code {
        ErrorCode::NotFound
        | ErrorCode::Exists
        | ErrorCode::NotEmpty
        | ErrorCode::NotDir
        | ErrorCode::IsDir
        | ErrorCode::NameTooLong => debug!("{what}: {e}"),
        _ => warn!("{what}: {e} (errno {})", code.errno()),
    }
    Errno::from_i32(code.errno())
}

/// The errno of a failed read, write, flush, fsync or close of an open file: always logged
/// at `warn` with the full message (the application sees only the number).
fn io_errno(what: &str, e: pfs_client::Error) -> Errno {
    let code = e.code().errno();
    warn!("{what}: {e} (errno {code})");
    Errno::from_i32(code)
}

/// ns since the Unix epoch as a `SystemTime`.
fn time(ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

/// A `SystemTime` as ns since the Unix epoch (saturating past ±292 years).
fn nanos(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(nanos(t)),
    })
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

/// Entry `name` of directory `dir`. Errors: EINVAL for a name that is not UTF-8 (pfs names
/// are strings).
fn entry(dir: INodeNo, name: &OsStr) -> Result<Target, Errno> {
    let name = name.to_str().ok_or(Errno::EINVAL)?;
    Ok(Target::Entry { dir: FileId(dir.0), name: name.to_string() })
}

/// Owner and mode of something `req` creates with `mode` under `umask`.
fn new_attrs(req: &Request, mode: u32, umask: u32) -> NewAttrs {
    NewAttrs { mode: mode & !umask & 0o7777, uid: req.uid(), gid: req.gid() }
}

impl PfsFs {
    /// A file system over `client`, whose runtime is `rt`; the kernel may keep the attributes
    /// and names of directories and symbolic links for `dir_ttl` (zero: ask every time).
    pub fn new(rt: Arc<tokio::runtime::Runtime>, client: Client, dir_ttl: Duration) -> PfsFs {
        PfsFs {
            rt,
            client,
            files: parking_lot::Mutex::new(HashMap::new()),
            dirs: parking_lot::Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            dir_ttl,
        }
    }

    /// How long the kernel may keep `a` and the name leading to it.
    fn ttl(&self, a: &Attr) -> Duration {
        match a.kind {
            FileKind::Dir | FileKind::Symlink => self.dir_ttl,
            _ => TTL,
        }
    }

    /// The pfs client behind the mount.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn run<T>(&self, f: impl Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    fn handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    fn file(&self, fh: FileHandle) -> Result<File, Errno> {
        self.files.lock().get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// The kernel's view of `a`; a file's size is at least what an open handle of this
    /// client wrote (its writes may not be recorded on pfs-meta yet).
    fn attr(&self, a: &Attr) -> FileAttr {
        let mut size = a.size;
        if a.kind == FileKind::File {
            let local = self.files.lock().values().filter(|f| f.id() == a.id).map(File::size).max();
            size = size.max(local.unwrap_or(0));
        }
        FileAttr {
            ino: INodeNo(a.id.0),
            size,
            blocks: size.div_ceil(512),
            atime: time(a.atime_ns),
            mtime: time(a.mtime_ns),
            ctime: time(a.ctime_ns),
            crtime: time(a.ctime_ns),
            kind: file_type(a.kind),
            perm: (a.mode & 0o7777) as u16,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev as u32,
            blksize: a.layout.as_ref().map_or(4096, |l| l.block_size),
            flags: 0,
        }
    }

    /// Answers a lookup-like request with its inode's attributes.
    fn reply_entry(&self, what: &str, r: pfs_client::Result<Attr>, reply: ReplyEntry) {
        match r {
            Ok(a) => reply.entry(&self.ttl(&a), &self.attr(&a), Generation(0)),
            Err(e) => reply.error(errno(what, e)),
        }
    }

    fn reply_empty(&self, what: &str, r: pfs_client::Result<()>, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(what, e)),
        }
    }

    /// Makes the writes of handle `fh` durable (flush at every close(2), and fsync).
    fn sync(&self, fh: FileHandle, reply: ReplyEmpty) {
        let f = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        match self.run(f.fsync()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(io_errno(&format!("fsync of {}", f.path()), e)),
        }
    }

    fn add_file(&self, f: File) -> FileHandle {
        let fh = self.handle();
        self.files.lock().insert(fh, f);
        FileHandle(fh)
    }
}

impl Filesystem for PfsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        // Memory maps through the page cache, kept coherent by `invalidate`.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match entry(parent, name) {
            Ok(t) => self.reply_entry("lookup", self.run(self.client.stat(t)), reply),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.run(self.client.stat_id(FileId(ino.0))) {
            Ok(a) => reply.attr(&self.ttl(&a), &self.attr(&a)),
            Err(e) => reply.error(errno("getattr", e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // The kernel checked the caller's right to each change (`default_permissions`).
        let id = FileId(ino.0);
        let result = self.run(async {
            if let Some(size) = size {
                let open = fh.and_then(|h| self.files.lock().get(&h.0).cloned());
                match open {
                    Some(f) => f.truncate(size).await?,
                    None => {
                        let f = self.client.open(id).await?;
                        let r = f.truncate(size).await;
                        f.close().await?;
                        r?;
                    }
                }
            }
            let change = SetAttr {
                file: id,
                mode: mode.map(|m| m & 0o7777),
                uid,
                gid,
                atime: set_time(atime),
                mtime: set_time(mtime),
            };
            let only_size = change.mode.is_none()
                && uid.is_none()
                && gid.is_none()
                && change.atime.is_none()
                && change.mtime.is_none();
            if only_size && size.is_some() {
                return self.client.stat_id(id).await;
            }
            // Nothing but the change time (chown -1 -1) still sets it, as Linux does.
            self.client.set_attr(change).await
        });
        match result {
            Ok(a) => reply.attr(&self.ttl(&a), &self.attr(&a)),
            Err(e) => reply.error(errno("setattr", e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.run(self.client.stat_id(FileId(ino.0))) {
            Ok(a) => match a.symlink {
                Some(link) => reply.data(link.as_bytes()),
                None => reply.error(Errno::EINVAL),
            },
            Err(e) => reply.error(errno("readlink", e)),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let target = match entry(parent, name) {
            Ok(t) => t,
            Err(e) => return reply.error(e),
        };
        let attrs = new_attrs(req, mode, umask);
        let made = self.run(async {
            match FileKind::from_mode(mode) {
                Some(FileKind::File) => {
                    let opts = CreateOptions { exclusive: true, attrs: Some(attrs), ..CreateOptions::default() };
                    let f = self.client.create(target, &opts).await?;
                    let a = f.stat().await;
                    f.close().await?;
                    a
                }
                Some(kind) => self.client.mknod(target, kind, u64::from(rdev), attrs).await,
                None => Err(pfs_client::Error::Invalid(format!("mknod: mode {mode:o} names no file type"))),
            }
        });
        self.reply_entry("mknod", made, reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        match entry(parent, name) {
            Ok(t) => self.reply_entry("mkdir", self.run(self.client.mkdir_with(t, new_attrs(req, mode, umask))), reply),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let (t, link) = match (entry(parent, link_name), target.as_os_str().to_str()) {
            (Ok(t), Some(link)) => (t, link),
            (Err(e), _) => return reply.error(e),
            (_, None) => return reply.error(Errno::EINVAL),
        };
        self.reply_entry("symlink", self.run(self.client.symlink(t, link, req.uid(), req.gid())), reply);
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        match entry(newparent, newname) {
            Ok(t) => self.reply_entry("link", self.run(self.client.link(FileId(ino.0), t)), reply),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match entry(parent, name) {
            Ok(t) => self.reply_empty("unlink", self.run(self.client.unlink(t)), reply),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match entry(parent, name) {
            Ok(t) => self.reply_empty("rmdir", self.run(self.client.rmdir(t)), reply),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            // RENAME_EXCHANGE and RENAME_WHITEOUT are not supported.
            return reply.error(Errno::EINVAL);
        }
        match (entry(parent, name), entry(newparent, newname)) {
            (Ok(from), Ok(to)) => {
                self.reply_empty("rename", self.run(self.client.rename_with(from, to, no_replace)), reply)
            }
            (Err(e), _) | (_, Err(e)) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let truncate = flags.0 & libc::O_TRUNC != 0;
        let opened = self.run(async {
            let f = self.client.open(FileId(ino.0)).await?;
            if truncate {
                f.truncate(0).await?;
            }
            Ok::<_, pfs_client::Error>(f)
        });
        match opened {
            Ok(f) => reply.opened(self.add_file(f), OPEN_FLAGS),
            Err(e) => reply.error(errno("open", e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let target = match entry(parent, name) {
            Ok(t) => t,
            Err(e) => return reply.error(e),
        };
        // Always exclusive: pfs's non-exclusive create truncates an existing file, which
        // open(O_CREAT) must not do. A file that appeared since the kernel's lookup (another
        // client) is opened instead, and truncated only for O_TRUNC.
        let opts =
            CreateOptions { exclusive: true, attrs: Some(new_attrs(req, mode, umask)), ..CreateOptions::default() };
        let created = self.run(async {
            match self.client.create_with_attr(target.clone(), &opts).await {
                Err(e) if e.code() == pfs_client::ErrorCode::Exists && flags & libc::O_EXCL == 0 => {
                    let f = self.client.open(target).await?;
                    if flags & libc::O_TRUNC != 0 {
                        f.truncate(0).await?;
                    }
                    let a = f.stat().await?;
                    Ok((f, a))
                }
                r => r,
            }
        });
        match created {
            Ok((f, a)) => {
                let fh = self.add_file(f);
                reply.created(&TTL, &self.attr(&a), Generation(0), fh, OPEN_FLAGS);
            }
            Err(e) => reply.error(errno("create", e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let f = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let mut buf = vec![0u8; size.min(MAX_IO) as usize];
        match self.run(f.read_at(offset, &mut buf)) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(io_errno(f.path(), e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let f = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        match self.run(f.write_at(offset, data)) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(io_errno(f.path(), e)),
        }
    }

    /// `fallocate` mode 0 (what `posix_fallocate` asks for): the size grows to cover the range
    /// and the change time moves, but no space is reserved: chunks are written sparse, so a
    /// later write can still find a storage target full. Other modes (punching holes, zeroing
    /// ranges, keeping the size) are EOPNOTSUPP.
    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let f = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let grown = self.run(async {
            let end = offset.checked_add(length).ok_or(pfs_client::Error::Invalid("fallocate past 2^64".into()))?;
            if end > f.stat().await?.size.max(f.size()) {
                f.truncate(end).await
            } else {
                let touch = SetAttr { file: FileId(ino.0), mode: None, uid: None, gid: None, atime: None, mtime: None };
                self.client.set_attr(touch).await.map(drop)
            }
        });
        self.reply_empty(f.path(), grown, reply);
    }

    /// Every `close(2)`: the file's writes are made durable, and a failure is the close's.
    fn flush(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        self.sync(fh, reply);
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.sync(fh, reply);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let Some(f) = self.files.lock().remove(&fh.0) else { return reply.error(Errno::EBADF) };
        let path = f.path().to_string();
        match self.run(f.close()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(io_errno(&format!("close of {path}"), e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.run(self.client.readdir(FileId(ino.0))) {
            Ok(entries) => {
                let fh = self.handle();
                self.dirs.lock().insert(fh, entries);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(errno("opendir", e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let dirs = self.dirs.lock();
        let Some(entries) = dirs.get(&fh.0) else { return reply.error(Errno::EBADF) };
        // Offsets: 1 is ".", 2 "..", 3 + i entry i; the offset given is the next to send.
        // ".." carries this directory's number: the kernel answers `..` lookups itself.
        let mut next = offset;
        loop {
            let full = match next {
                0 => reply.add(ino, 1, FileType::Directory, "."),
                1 => reply.add(ino, 2, FileType::Directory, ".."),
                n => match entries.get((n - 2) as usize) {
                    Some(e) => {
                        reply.add(INodeNo(e.id.0), n + 1, file_type(e.kind), OsStr::from_bytes(e.name.as_bytes()))
                    }
                    None => break,
                },
            };
            if full {
                break;
            }
            next += 1;
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.dirs.lock().remove(&fh.0);
        reply.ok();
    }

    /// No extended attributes (yet): said without a log line per `ls -l`.
    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::EOPNOTSUPP);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::EOPNOTSUPP);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.run(self.client.servers()) {
            Ok(servers) => {
                const BSIZE: u64 = 4096;
                let up = servers.iter().filter(|s| s.up);
                let (cap, free) = up.fold((0u64, 0u64), |(c, f), s| (c + s.capacity_bytes, f + s.free_bytes));
                reply.statfs(
                    cap / BSIZE,
                    free / BSIZE,
                    free / BSIZE,
                    u64::MAX >> 1,
                    u64::MAX >> 1,
                    BSIZE as u32,
                    255,
                    BSIZE as u32,
                );
            }
            Err(e) => reply.error(errno("statfs", e)),
        }
    }
}

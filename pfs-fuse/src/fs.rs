//! [`PfsFs`]: FUSE requests as pfs client calls.

use crate::paths::Paths;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use pfs_client::{Attr, Client, CreateOptions, DirEntry, File, FileKind};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::warn;

/// Attribute and entry timeout: none, so another client's change is seen at once.
const TTL: Duration = Duration::ZERO;
/// Largest read or write the kernel sends, bytes (this kernel's FUSE limit).
const MAX_IO: u32 = 1 << 20;

/// A pfs cluster as a FUSE file system (see the crate documentation).
pub struct PfsFs {
    rt: Arc<tokio::runtime::Runtime>,
    client: Client,
    paths: parking_lot::Mutex<Paths>,
    /// Open files by handle.
    files: parking_lot::Mutex<HashMap<u64, File>>,
    /// Directory listings by handle, taken at opendir (readdir pages through them).
    dirs: parking_lot::Mutex<HashMap<u64, Vec<DirEntry>>>,
    next_handle: AtomicU64,
    /// Owner shown for every file: the mounting user.
    uid: u32,
    gid: u32,
}

/// The errno of a client error; the full message goes to the mount's log.
fn errno(what: &str, e: pfs_client::Error) -> Errno {
    let code = e.code().errno();
    if code == libc::EIO || code == libc::ETIMEDOUT {
        warn!("{what}: {e}");
    }
    Errno::from_i32(code)
}

fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl PfsFs {
    /// A file system over `client`, whose runtime is `rt`; files show as owned by `uid`/`gid`.
    pub fn new(rt: Arc<tokio::runtime::Runtime>, client: Client, uid: u32, gid: u32) -> PfsFs {
        PfsFs {
            rt,
            client,
            paths: parking_lot::Mutex::new(Paths::default()),
            files: parking_lot::Mutex::new(HashMap::new()),
            dirs: parking_lot::Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            uid,
            gid,
        }
    }

    fn run<T>(&self, f: impl Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    fn handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    fn path(&self, ino: INodeNo) -> Result<String, Errno> {
        self.paths.lock().get(ino.0).ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<String, Errno> {
        self.paths.lock().child(parent.0, name).map_err(Errno::from_i32)
    }

    fn file(&self, fh: FileHandle) -> Result<File, Errno> {
        self.files.lock().get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// The kernel's view of `a`; the size is at least what an open handle of this client
    /// wrote (its writes may not be recorded on pfs-meta yet).
    fn attr(&self, a: &Attr) -> FileAttr {
        let (kind, perm, nlink) = match a.kind {
            FileKind::Dir => (FileType::Directory, 0o755, 2),
            FileKind::File => (FileType::RegularFile, 0o644, 1),
        };
        let local = self.files.lock().values().filter(|f| f.id() == a.id).map(File::size).max().unwrap_or(0);
        let size = a.size.max(local);
        FileAttr {
            ino: INodeNo(a.id.0),
            size,
            blocks: size.div_ceil(512),
            atime: time(a.mtime_ms),
            mtime: time(a.mtime_ms),
            ctime: time(a.ctime_ms),
            crtime: time(a.ctime_ms),
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: a.layout.as_ref().map_or(4096, |l| l.block_size),
            flags: 0,
        }
    }

    /// Unlinks a file (or with `dir` removes an empty directory) and forgets its path.
    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let removed = if dir { self.run(self.client.rmdir(&path)) } else { self.run(self.client.unlink(&path)) };
        match removed {
            Ok(()) => {
                self.paths.lock().removed(&path);
                reply.ok()
            }
            Err(e) => reply.error(errno(&path, e)),
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
            Err(e) => reply.error(errno(f.path(), e)),
        }
    }

    /// Stats `path`, remembers its inode, and answers the entry.
    fn entry(&self, path: String, reply: ReplyEntry) {
        match self.run(self.client.stat(&path)) {
            Ok(a) => {
                self.paths.lock().learn(a.id.0, path);
                reply.entry(&TTL, &self.attr(&a), Generation(0));
            }
            Err(e) => reply.error(errno(&path, e)),
        }
    }
}

impl Filesystem for PfsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name) {
            Ok(path) => self.entry(path, reply),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        // By id: right even if another client renamed it.
        match self.run(self.client.stat_id(pfs_common::FileId(ino.0))) {
            Ok(a) => reply.attr(&TTL, &self.attr(&a)),
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
        if mode.is_some() || uid.is_some() || gid.is_some() || atime.is_some() || mtime.is_some() {
            // Not stored yet: say so rather than pretend.
            reply.error(Errno::ENOSYS);
            return;
        }
        let result = self.run(async {
            if let Some(size) = size {
                let open = fh.and_then(|h| self.files.lock().get(&h.0).cloned());
                match open {
                    Some(f) => f.truncate(size).await?,
                    None => {
                        let path =
                            self.paths.lock().get(ino.0).ok_or(pfs_client::Error::Invalid("unknown inode".into()))?;
                        let f = self.client.open(&path).await?;
                        let r = f.truncate(size).await;
                        f.close().await?;
                        r?;
                    }
                }
            }
            self.client.stat_id(pfs_common::FileId(ino.0)).await
        });
        match result {
            Ok(a) => reply.attr(&TTL, &self.attr(&a)),
            Err(e) => reply.error(errno("setattr", e)),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.run(self.client.mkdir(&path)) {
            Ok(()) => self.entry(path, reply),
            Err(e) => reply.error(errno(&path, e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, false, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, true, reply);
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
        if !flags.is_empty() {
            // RENAME_NOREPLACE / RENAME_EXCHANGE are not supported yet.
            return reply.error(Errno::EINVAL);
        }
        let (from, to) = match (self.child(parent, name), self.child(newparent, newname)) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        match self.run(self.client.rename(&from, &to)) {
            Ok(()) => {
                self.paths.lock().renamed(&from, &to);
                reply.ok()
            }
            Err(e) => reply.error(errno(&from, e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let truncate = flags.0 & libc::O_TRUNC != 0;
        let opened = self.run(async {
            let f = self.client.open(&path).await?;
            if truncate {
                f.truncate(0).await?;
            }
            Ok::<_, pfs_client::Error>(f)
        });
        match opened {
            Ok(f) => {
                let fh = self.handle();
                self.files.lock().insert(fh, f);
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
            }
            Err(e) => reply.error(errno(&path, e)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        // Always exclusive: pfs's non-exclusive create truncates an existing file, which
        // open(O_CREAT) must not do. A file that appeared since the kernel's lookup (another
        // client) is opened instead, and truncated only for O_TRUNC.
        let opts = CreateOptions { exclusive: true, ..CreateOptions::default() };
        let created = self.run(async {
            let f = match self.client.create(&path, &opts).await {
                Err(e) if e.code() == pfs_client::ErrorCode::Exists && flags & libc::O_EXCL == 0 => {
                    let f = self.client.open(&path).await?;
                    if flags & libc::O_TRUNC != 0 {
                        f.truncate(0).await?;
                    }
                    f
                }
                r => r?,
            };
            let a = f.stat().await?;
            Ok::<_, pfs_client::Error>((f, a))
        });
        match created {
            Ok((f, a)) => {
                self.paths.lock().learn(a.id.0, path);
                let fh = self.handle();
                self.files.lock().insert(fh, f);
                reply.created(&TTL, &self.attr(&a), Generation(0), FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
            }
            Err(e) => reply.error(errno(&path, e)),
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
            Err(e) => reply.error(errno(f.path(), e)),
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
            Err(e) => reply.error(errno(f.path(), e)),
        }
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
            Err(e) => reply.error(errno(&path, e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.run(self.client.readdir(&path)) {
            Ok(entries) => {
                let mut paths = self.paths.lock();
                for e in &entries {
                    let child = if path == "/" { format!("/{}", e.name) } else { format!("{path}/{}", e.name) };
                    paths.learn(e.id.0, child);
                }
                drop(paths);
                let fh = self.handle();
                self.dirs.lock().insert(fh, entries);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(errno(&path, e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let dirs = self.dirs.lock();
        let Some(entries) = dirs.get(&fh.0) else { return reply.error(Errno::EBADF) };
        // Offsets: 1 is ".", 2 "..", 3 + i entry i; the offset given is the next to send.
        let mut next = offset;
        loop {
            let full = match next {
                0 => reply.add(ino, 1, FileType::Directory, "."),
                1 => reply.add(ino, 2, FileType::Directory, ".."),
                n => match entries.get((n - 2) as usize) {
                    Some(e) => {
                        let kind = if e.kind == FileKind::Dir { FileType::Directory } else { FileType::RegularFile };
                        reply.add(INodeNo(e.id.0), n + 1, kind, &e.name)
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

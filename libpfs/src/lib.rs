//! libpfs: the C API of pfs, the course API it comes from (`pfs_initialize`, `pfs_create`,
//! `pfs_open`, `pfs_read`, `pfs_write`, `pfs_fstat`, `pfs_close`, `pfs_delete`,
//! `pfs_execstat`, `pfs_finish`) plus `pfs_set_revoke_callback`, `pfs_strerror` and
//! `pfs_last_error`, over the Rust client (its tokens and coherent block cache).
//!
//! One client per process: `pfs_initialize` connects (one session with pfs-meta, one tokio
//! runtime of two threads), `pfs_finish` writes back, closes and disconnects. Every call is
//! thread-safe. Errors are negative errno values (`-ENOENT`, `-EIO`, ...); the full message of
//! the calling thread's last error, naming the file, chunk and server, is `pfs_last_error()`.
//! A panic inside the library is caught and returned as `-EIO`, never unwound into C.
//!
//! The header `include/pfs.h` is generated from this file by cbindgen.

#![allow(non_camel_case_types)]

use pfs_client::{Client, ClientOptions, CreateOptions, File};
use pfs_common::config::Config;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;
use std::sync::Arc;

/// `pfs_open` mode: read.
pub const PFS_READ: c_int = 1;
/// `pfs_open` mode: write.
pub const PFS_WRITE: c_int = 2;
/// `pfs_open` mode: read and write.
pub const PFS_RDWR: c_int = 3;

/// A file's attributes (`pfs_fstat`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct pfs_stat {
    /// Size in bytes, as this client knows it (its own unsynced writes included).
    pub size: u64,
    /// Last data or size change, ms since the Unix epoch.
    pub mtime_ms: u64,
    /// Last attribute change, ms since the Unix epoch.
    pub ctime_ms: u64,
    /// The file's id (never reused).
    pub file_id: u64,
    /// Bumped on every change of the file's metadata.
    pub generation: u64,
    /// Storage servers (replication chains) the file is striped over.
    pub stripe_width: u32,
    /// Copies of every chunk.
    pub replicas: u32,
    /// Chunk size (the stripe unit), bytes.
    pub chunk_size: u64,
    /// Block size (the cache unit), bytes.
    pub block_size: u32,
}

/// Cache and token counters of one open file in this process (`pfs_execstat`); counts are
/// blocks unless named otherwise.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct pfs_execstat {
    /// Blocks read whose requested bytes were all cached.
    pub num_read_hits: u64,
    /// Blocks read with a requested byte not cached.
    pub num_read_misses: u64,
    /// Blocks written that were already cached.
    pub num_write_hits: u64,
    /// Blocks evicted to make room.
    pub num_evictions: u64,
    /// Blocks written back (eviction, revoke, fsync).
    pub num_writebacks: u64,
    /// Blocks dropped or downgraded because another client's token revoked ours.
    pub num_invalidations: u64,
    /// Blocks written back by `pfs_close`.
    pub num_close_writebacks: u64,
    /// Blocks dropped by `pfs_close`.
    pub num_close_evictions: u64,
    /// Revokes this process handled, all files (a count of revokes, not blocks).
    pub num_revokes: u64,
    /// Token requests this process sent to pfs-meta, all files.
    pub num_token_acquires: u64,
}

/// A revoke this process handled (`pfs_set_revoke_callback`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct pfs_revoke_event {
    /// The file's id (`pfs_stat.file_id`).
    pub file_id: u64,
    /// The byte range given up, `[start, end)`; `end` is `UINT64_MAX` for "to the end".
    pub start: u64,
    pub end: u64,
    /// 1: another client wants to write (our cached bytes there were dropped); 0: to read
    /// (our write token there became a read token, the cache kept).
    pub wanted_write: c_int,
}

/// Called after a revoked range was written back and dropped or downgraded, before the
/// revoke is acknowledged, on one of the library's threads. Keep it short; do not call the
/// library from it.
pub type pfs_revoke_callback = Option<extern "C" fn(event: *const pfs_revoke_event, ctx: *mut c_void)>;

struct Open {
    file: File,
    mode: c_int,
}

struct Library {
    rt: tokio::runtime::Runtime,
    client: Client,
    files: parking_lot::Mutex<Files>,
}

#[derive(Default)]
struct Files {
    open: HashMap<c_int, Arc<Open>>,
    next: c_int,
}

static LIBRARY: parking_lot::RwLock<Option<Arc<Library>>> = parking_lot::RwLock::new(None);

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// An error as this API returns it: a negative errno, with its message kept for
/// `pfs_last_error`.
fn fail(errno: c_int, message: String) -> c_int {
    LAST_ERROR.with(|m| *m.borrow_mut() = CString::new(message.replace('\0', " ")).unwrap_or_default());
    -errno
}

fn client_error(e: pfs_client::Error) -> c_int {
    fail(e.code().errno(), e.to_string())
}

/// Runs `f`, turning a panic into `-EIO` (never unwinding into C).
fn guard(what: &str, f: impl FnOnce() -> c_int) -> c_int {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => fail(libc::EIO, format!("libpfs: internal error in {what}")),
    }
}

fn library() -> Result<Arc<Library>, c_int> {
    LIBRARY.read().clone().ok_or_else(|| fail(libc::EINVAL, "pfs_initialize has not been called".into()))
}

fn open_file(fd: c_int) -> Result<(Arc<Library>, Arc<Open>), c_int> {
    let lib = library()?;
    let f = lib.files.lock().open.get(&fd).cloned();
    match f {
        Some(f) => Ok((lib, f)),
        None => Err(fail(libc::EBADF, format!("{fd} is not an open pfs file descriptor"))),
    }
}

/// A C string argument as UTF-8.
fn string_arg(s: *const c_char, what: &str) -> Result<String, c_int> {
    if s.is_null() {
        return Err(fail(libc::EINVAL, format!("{what} is NULL")));
    }
    // SAFETY: the caller passes a NUL-terminated string (checked non-null above).
    let s = unsafe { CStr::from_ptr(s) };
    s.to_str().map(str::to_string).map_err(|_| fail(libc::EINVAL, format!("{what} is not UTF-8")))
}

/// A pfs path: names without a leading slash are taken from the root.
fn pfs_path(name: String) -> String {
    if name.starts_with('/') {
        name
    } else {
        format!("/{name}")
    }
}

/// Connects to the cluster `config_path` describes (NULL: `$PFS_CONFIG`, else
/// `config/local.toml`), authenticating with the key it names. Call once per process before
/// anything else. Returns 0, or -EALREADY if already initialized, -EINVAL for a bad config,
/// -EACCES for a key the cluster refuses, -EIO or -ETIMEDOUT when pfs-meta cannot be reached.
///
/// # Safety
/// `config_path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn pfs_initialize(config_path: *const c_char) -> c_int {
    guard("pfs_initialize", || {
        let mut slot = LIBRARY.write();
        if slot.is_some() {
            return fail(libc::EALREADY, "pfs_initialize was already called".into());
        }
        let path = if config_path.is_null() {
            PathBuf::from(std::env::var("PFS_CONFIG").unwrap_or_else(|_| "config/local.toml".into()))
        } else {
            match string_arg(config_path, "config_path") {
                Ok(p) => PathBuf::from(p),
                Err(e) => return e,
            }
        };
        let options =
            match Config::load(&path).map_err(pfs_client::Error::from).and_then(|c| ClientOptions::from_config(&c)) {
                Ok(o) => o,
                Err(e) => return client_error(e),
            };
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("libpfs")
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return fail(libc::EIO, format!("starting the client runtime: {e}")),
        };
        let client = match rt.block_on(Client::connect(options)) {
            Ok(c) => c,
            Err(e) => return client_error(e),
        };
        *slot = Some(Arc::new(Library {
            rt,
            client,
            files: parking_lot::Mutex::new(Files { open: HashMap::new(), next: 3 }),
        }));
        0
    })
}

/// Creates the file `name` striped over `stripe_width` storage servers (0: the cluster's
/// default), empty, and closes it. Returns 0, -EEXIST if it exists, -ENOENT if its directory
/// does not, -EIO when storage servers are missing.
///
/// # Safety
/// `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn pfs_create(name: *const c_char, stripe_width: c_int) -> c_int {
    guard("pfs_create", || {
        let run = || -> Result<c_int, c_int> {
            let lib = library()?;
            let path = pfs_path(string_arg(name, "name")?);
            if stripe_width < 0 {
                return Err(fail(libc::EINVAL, format!("{path}: stripe width {stripe_width}")));
            }
            let opts = CreateOptions {
                stripe_count: (stripe_width > 0).then_some(stripe_width as u32),
                exclusive: true,
                ..CreateOptions::default()
            };
            lib.rt
                .block_on(async {
                    let f = lib.client.create(&path, &opts).await?;
                    f.close().await
                })
                .map_err(client_error)?;
            Ok(0)
        };
        run().unwrap_or_else(|e| e)
    })
}

/// Opens the existing file `name` with `mode` (`PFS_READ`, `PFS_WRITE` or `PFS_RDWR`).
/// Returns a file descriptor (≥ 0), -ENOENT, -EISDIR or -EINVAL (a bad mode).
///
/// # Safety
/// `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn pfs_open(name: *const c_char, mode: c_int) -> c_int {
    guard("pfs_open", || {
        let run = || -> Result<c_int, c_int> {
            let lib = library()?;
            let path = pfs_path(string_arg(name, "name")?);
            if !(PFS_READ..=PFS_RDWR).contains(&mode) {
                return Err(fail(libc::EINVAL, format!("{path}: mode {mode} (PFS_READ, PFS_WRITE or PFS_RDWR)")));
            }
            let file = lib.rt.block_on(lib.client.open(&path)).map_err(client_error)?;
            let mut files = lib.files.lock();
            let fd = files.next;
            files.next = files.next.checked_add(1).unwrap_or(3);
            files.open.insert(fd, Arc::new(Open { file, mode }));
            Ok(fd)
        };
        run().unwrap_or_else(|e| e)
    })
}

/// Reads up to `n` bytes at byte `offset` of `fd` into `buf`. Returns the bytes read (0 at
/// or past the end), -EBADF (not open for reading), -EIO naming the chunk and server.
///
/// # Safety
/// `buf` points to at least `n` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn pfs_read(fd: c_int, buf: *mut c_void, n: usize, offset: i64) -> isize {
    guard("pfs_read", || {
        let run = || -> Result<c_int, c_int> {
            let (lib, f) = open_file(fd)?;
            if f.mode & PFS_READ == 0 {
                return Err(fail(libc::EBADF, format!("{}: not open for reading", f.file.path())));
            }
            if offset < 0 || n > i32::MAX as usize || (buf.is_null() && n > 0) {
                return Err(fail(libc::EINVAL, format!("{}: read of {n} bytes at {offset}", f.file.path())));
            }
            if n == 0 {
                return Ok(0);
            }
            // SAFETY: the caller passes a buffer of at least n writable bytes.
            let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), n) };
            let read = lib.rt.block_on(f.file.read_at(offset as u64, out)).map_err(client_error)?;
            Ok(read as c_int)
        };
        run().unwrap_or_else(|e| e)
    }) as isize
}

/// Writes `n` bytes from `buf` at byte `offset` of `fd` (into the client cache under a write
/// token; durable at `pfs_close` or when written back). Returns `n`, -EBADF (not open for
/// writing), -EFBIG, -EIO.
///
/// # Safety
/// `buf` points to at least `n` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn pfs_write(fd: c_int, buf: *const c_void, n: usize, offset: i64) -> isize {
    guard("pfs_write", || {
        let run = || -> Result<c_int, c_int> {
            let (lib, f) = open_file(fd)?;
            if f.mode & PFS_WRITE == 0 {
                return Err(fail(libc::EBADF, format!("{}: not open for writing", f.file.path())));
            }
            if offset < 0 || n > i32::MAX as usize || (buf.is_null() && n > 0) {
                return Err(fail(libc::EINVAL, format!("{}: write of {n} bytes at {offset}", f.file.path())));
            }
            if n == 0 {
                return Ok(0);
            }
            // SAFETY: the caller passes a buffer of at least n readable bytes.
            let data = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), n) };
            let written = lib.rt.block_on(f.file.write_at(offset as u64, data)).map_err(client_error)?;
            Ok(written as c_int)
        };
        run().unwrap_or_else(|e| e)
    }) as isize
}

/// Fills `st` with the attributes of `fd` (fresh from pfs-meta; the size includes this
/// process's own writes). Returns 0, -EBADF, -EINVAL (NULL `st`), -EIO.
///
/// # Safety
/// `st` is NULL or points to a `struct pfs_stat`.
#[no_mangle]
pub unsafe extern "C" fn pfs_fstat(fd: c_int, st: *mut pfs_stat) -> c_int {
    guard("pfs_fstat", || {
        let run = || -> Result<c_int, c_int> {
            let (lib, f) = open_file(fd)?;
            if st.is_null() {
                return Err(fail(libc::EINVAL, "pfs_fstat: NULL stat buffer".into()));
            }
            let attr = lib.rt.block_on(f.file.stat()).map_err(client_error)?;
            let layout = f.file.layout();
            let out = pfs_stat {
                size: f.file.size(),
                mtime_ms: attr.mtime_ns.max(0) as u64 / 1_000_000,
                ctime_ms: attr.ctime_ns.max(0) as u64 / 1_000_000,
                file_id: attr.id.0,
                generation: attr.generation,
                stripe_width: layout.stripe_count() as u32,
                replicas: layout.replicas.into(),
                chunk_size: layout.chunk_size(),
                block_size: layout.block_size,
            };
            // SAFETY: checked non-null; the caller passes a pfs_stat to fill.
            unsafe { st.write(out) };
            Ok(0)
        };
        run().unwrap_or_else(|e| e)
    })
}

/// Writes back `fd`'s dirty cached bytes, makes them durable, and closes it. Returns 0,
/// -EBADF, -EIO naming what could not be written (the descriptor is closed either way).
#[no_mangle]
pub extern "C" fn pfs_close(fd: c_int) -> c_int {
    guard("pfs_close", || {
        let run = || -> Result<c_int, c_int> {
            let lib = library()?;
            let f = lib.files.lock().open.remove(&fd);
            let Some(f) = f else {
                return Err(fail(libc::EBADF, format!("{fd} is not an open pfs file descriptor")));
            };
            // A concurrent call still holding the descriptor keeps the file open until it ends.
            let file = Arc::try_unwrap(f).map(|o| o.file).unwrap_or_else(|shared| shared.file.clone());
            lib.rt.block_on(file.close()).map_err(client_error)?;
            Ok(0)
        };
        run().unwrap_or_else(|e| e)
    })
}

/// Removes the file `name` (readable by whoever still has it open, until they close it).
/// Returns 0, -ENOENT, -EISDIR.
///
/// # Safety
/// `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn pfs_delete(name: *const c_char) -> c_int {
    guard("pfs_delete", || {
        let run = || -> Result<c_int, c_int> {
            let lib = library()?;
            let path = pfs_path(string_arg(name, "name")?);
            lib.rt.block_on(lib.client.unlink(&path)).map_err(client_error)?;
            Ok(0)
        };
        run().unwrap_or_else(|e| e)
    })
}

/// Fills `st` with the cache counters of `fd` and this process's token counters. Returns 0,
/// -EBADF, -EINVAL (NULL `st`).
///
/// # Safety
/// `st` is NULL or points to a `struct pfs_execstat`.
#[no_mangle]
pub unsafe extern "C" fn pfs_execstat(fd: c_int, st: *mut pfs_execstat) -> c_int {
    guard("pfs_execstat", || {
        let run = || -> Result<c_int, c_int> {
            let (lib, f) = open_file(fd)?;
            if st.is_null() {
                return Err(fail(libc::EINVAL, "pfs_execstat: NULL stat buffer".into()));
            }
            let c = f.file.cache_stats();
            let s = lib.client.stats();
            let out = pfs_execstat {
                num_read_hits: c.read_hits,
                num_read_misses: c.read_misses,
                num_write_hits: c.write_hits,
                num_evictions: c.evictions,
                num_writebacks: c.writebacks,
                num_invalidations: c.invalidations,
                num_close_writebacks: c.close_writebacks,
                num_close_evictions: c.close_evictions,
                num_revokes: s.revokes,
                num_token_acquires: s.token_acquires,
            };
            // SAFETY: checked non-null; the caller passes a pfs_execstat to fill.
            unsafe { st.write(out) };
            Ok(0)
        };
        run().unwrap_or_else(|e| e)
    })
}

/// A C callback and its context, callable from the library's threads.
struct Callback {
    f: extern "C" fn(*const pfs_revoke_event, *mut c_void),
    ctx: *mut c_void,
}

impl Callback {
    fn call(&self, event: &pfs_revoke_event) {
        (self.f)(event, self.ctx);
    }
}

// SAFETY: the caller of pfs_set_revoke_callback promises the callback may run on another
// thread with this context (documented there).
unsafe impl Send for Callback {}
unsafe impl Sync for Callback {}

/// Calls `callback(event, ctx)` for every revoke this process handles from now on (NULL: no
/// callback). `ctx` is passed through; the callback runs on a library thread. Returns 0, or
/// -EINVAL before `pfs_initialize`.
///
/// # Safety
/// `callback` may be called on another thread with `ctx`, until it is replaced or `pfs_finish`.
#[no_mangle]
pub unsafe extern "C" fn pfs_set_revoke_callback(callback: pfs_revoke_callback, ctx: *mut c_void) -> c_int {
    guard("pfs_set_revoke_callback", || {
        let lib = match library() {
            Ok(l) => l,
            Err(e) => return e,
        };
        match callback {
            None => lib.client.on_revoke(|_| {}),
            Some(f) => {
                let cb = Callback { f, ctx };
                lib.client.on_revoke(move |e| {
                    let event = pfs_revoke_event {
                        file_id: e.file.0,
                        start: e.range.start,
                        end: e.range.end,
                        wanted_write: (e.wanted == pfs_client::Mode::Write) as c_int,
                    };
                    cb.call(&event);
                });
            }
        }
        0
    })
}

/// Writes back and closes every open file, ends the session and disconnects. Returns 0, or
/// the first error of a close (-EIO naming what could not be written back).
#[no_mangle]
pub extern "C" fn pfs_finish() -> c_int {
    guard("pfs_finish", || {
        let Some(lib) = LIBRARY.write().take() else {
            return fail(libc::EINVAL, "pfs_initialize has not been called".into());
        };
        let files: Vec<Arc<Open>> = lib.files.lock().open.drain().map(|(_, f)| f).collect();
        let mut result = 0;
        for f in files {
            if let Err(e) = lib.rt.block_on(f.file.clone().close()) {
                if result == 0 {
                    result = client_error(e);
                }
            }
        }
        if let Err(e) = lib.rt.block_on(lib.client.close()) {
            if result == 0 {
                result = client_error(e);
            }
        }
        result
    })
}

/// A short description of the negative errno `err` returned by this library ("no such file
/// or directory"). The string is static.
#[no_mangle]
pub extern "C" fn pfs_strerror(err: c_int) -> *const c_char {
    let s: &'static CStr = match err.checked_neg().unwrap_or(0) {
        0 => c"success",
        libc::ENOENT => c"no such file or directory",
        libc::EEXIST => c"file exists",
        libc::ENOTDIR => c"not a directory",
        libc::EISDIR => c"is a directory",
        libc::ENOTEMPTY => c"directory not empty",
        libc::EINVAL => c"invalid argument",
        libc::ESTALE => c"stale: the session was evicted or the file changed",
        libc::EIO => c"input/output error (a storage server failed or is unreachable)",
        libc::EFBIG => c"file too large",
        libc::ENOSPC => c"no space left on a storage server",
        libc::ETIMEDOUT => c"timed out",
        libc::EPROTO => c"protocol error",
        libc::ENAMETOOLONG => c"file name too long",
        libc::EBUSY => c"device or resource busy",
        libc::EAGAIN => c"try again",
        libc::EACCES => c"permission denied (authentication or authorization failed)",
        libc::EBADF => c"bad pfs file descriptor",
        libc::EALREADY => c"already initialized",
        _ => c"unknown error",
    };
    s.as_ptr()
}

/// The full message of this thread's last error (naming the file, chunk and server where it
/// applies); empty if none. Valid until this thread's next failing call.
#[no_mangle]
pub extern "C" fn pfs_last_error() -> *const c_char {
    LAST_ERROR.with(|m| m.borrow().as_ptr())
}

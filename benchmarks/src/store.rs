//! The two back ends a benchmark runs against: pfs through the client library (`-a PFS`) and
//! plain files in a local directory (`-a POSIX`, the baseline on the same disk).

use crate::error::{Error, Result};
use pfs_client::{Client, CreateOptions, File};
use pfs_common::ErrorCode;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Which back end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Pfs,
    Posix,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::Pfs => "PFS",
            Api::Posix => "POSIX",
        }
    }

    /// `PFS`, `POSIX`, or a comma-separated list of both (run each in turn, same job).
    pub fn parse_list(s: &str) -> std::result::Result<Vec<Api>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let api = match part.to_ascii_uppercase().as_str() {
                "PFS" => Api::Pfs,
                "POSIX" => Api::Posix,
                _ => return Err(format!("unknown api `{part}` (PFS, POSIX, or PFS,POSIX)")),
            };
            if !out.contains(&api) {
                out.push(api);
            }
        }
        if out.is_empty() {
            return Err("empty api list".into());
        }
        Ok(out)
    }
}

/// A connected back end. Paths are pfs paths for `Pfs` and local paths for `Posix`.
pub enum Backend {
    Pfs(Client),
    Posix,
}

/// An open file.
pub enum Handle {
    Pfs(File),
    Posix(std::fs::File, String),
}

fn posix_err(what: &str, path: &str, e: std::io::Error) -> Error {
    Error::io(format!("{what} {path}"), e)
}

impl Backend {
    /// Creates (or opens and truncates) a file for writing and reading.
    pub async fn create(&self, path: &str) -> Result<Handle> {
        match self {
            Backend::Pfs(c) => Ok(Handle::Pfs(c.create(path, &CreateOptions::default()).await?)),
            Backend::Posix => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map(|f| Handle::Posix(f, path.to_string()))
                .map_err(|e| posix_err("creating", path, e)),
        }
    }

    /// Opens an existing file.
    pub async fn open(&self, path: &str) -> Result<Handle> {
        match self {
            Backend::Pfs(c) => Ok(Handle::Pfs(c.open(path).await?)),
            Backend::Posix => std::fs::File::open(path)
                .map(|f| Handle::Posix(f, path.to_string()))
                .map_err(|e| posix_err("opening", path, e)),
        }
    }

    /// Removes a file.
    pub async fn unlink(&self, path: &str) -> Result<()> {
        match self {
            Backend::Pfs(c) => Ok(c.unlink(path).await?),
            Backend::Posix => std::fs::remove_file(path).map_err(|e| posix_err("removing", path, e)),
        }
    }

    /// Removes a file if it exists.
    pub async fn unlink_if_exists(&self, path: &str) -> Result<()> {
        match self.unlink(path).await {
            Err(e) if e.code() == ErrorCode::NotFound => Ok(()),
            r => r,
        }
    }

    pub async fn mkdir(&self, path: &str) -> Result<()> {
        match self {
            Backend::Pfs(c) => Ok(c.mkdir(path).await?),
            Backend::Posix => std::fs::create_dir(path).map_err(|e| posix_err("making directory", path, e)),
        }
    }

    /// Makes a directory and its parents; existing ones are fine.
    pub async fn mkdir_all(&self, path: &str) -> Result<()> {
        match self {
            Backend::Pfs(c) => Ok(c.mkdir_all(path).await?),
            Backend::Posix => std::fs::create_dir_all(path).map_err(|e| posix_err("making directory", path, e)),
        }
    }

    pub async fn rmdir(&self, path: &str) -> Result<()> {
        match self {
            Backend::Pfs(c) => Ok(c.rmdir(path).await?),
            Backend::Posix => std::fs::remove_dir(path).map_err(|e| posix_err("removing directory", path, e)),
        }
    }

    /// Size of `path` (stat).
    pub async fn stat(&self, path: &str) -> Result<u64> {
        match self {
            Backend::Pfs(c) => Ok(c.stat(path).await?.size),
            Backend::Posix => std::fs::metadata(path).map(|m| m.len()).map_err(|e| posix_err("stat", path, e)),
        }
    }

    /// Ends the run: pfs's session ends cleanly (no eviction, nothing to fence).
    pub async fn close(self) -> Result<()> {
        match self {
            Backend::Pfs(c) => Ok(c.close().await?),
            Backend::Posix => Ok(()),
        }
    }
}

impl Handle {
    /// Writes all of `buf` at `offset`.
    pub async fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        match self {
            Handle::Pfs(f) => Ok(f.write_at(offset, buf).await.map(|_| ())?),
            Handle::Posix(f, p) => f.write_all_at(buf, offset).map_err(|e| posix_err("writing", p, e)),
        }
    }

    /// Reads into `buf` from `offset`; returns the bytes read, short only at end of file.
    pub async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        match self {
            Handle::Pfs(f) => {
                let mut done = 0;
                while done < buf.len() {
                    let n = f.read_at(offset + done as u64, &mut buf[done..]).await?;
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
                Ok(done)
            }
            Handle::Posix(f, p) => {
                let mut done = 0;
                while done < buf.len() {
                    match f.read_at(&mut buf[done..], offset + done as u64) {
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(posix_err("reading", p, e)),
                    }
                }
                Ok(done)
            }
        }
    }

    /// Makes written data durable.
    pub async fn fsync(&self) -> Result<()> {
        match self {
            Handle::Pfs(f) => Ok(f.fsync().await?),
            Handle::Posix(f, p) => f.sync_all().map_err(|e| posix_err("fsync", p, e)),
        }
    }

    /// Closes the file. pfs: flushes (close is durable in pfs); POSIX: close(2) only.
    pub async fn close(self) -> Result<()> {
        match self {
            Handle::Pfs(f) => Ok(f.close().await?),
            Handle::Posix(..) => Ok(()),
        }
    }
}

/// A pfs path from an IOR/mdtest path argument: `testFile` -> `/testFile`; `pfs:` accepted.
pub fn pfs_path(arg: &str) -> Result<String> {
    let a = arg.strip_prefix("pfs:").unwrap_or(arg);
    let a = if a.starts_with('/') { a.to_string() } else { format!("/{a}") };
    Ok(pfs_client::path::pfs_path(&a)?)
}

/// A local path from an IOR/mdtest path argument: absolute as given, relative under `dir`.
pub fn posix_path(arg: &str, dir: &Path) -> String {
    let p = Path::new(arg);
    if p.is_absolute() {
        arg.to_string()
    } else {
        dir.join(p).to_string_lossy().into_owned()
    }
}

/// The parent directory of a `/`-separated path ("" for none).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => "",
    }
}

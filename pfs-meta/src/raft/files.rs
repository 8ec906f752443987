//! The files of a meta node's directory, and how each is written so that a crash leaves it
//! whole or absent:
//!
//! - `FORMAT`: the on-disk format ([`FORMAT`]); a directory of another format is refused.
//! - `log-<first index, 16 hex digits>.log`: log segments ([`super::log_store`]).
//! - `raft-state`: the vote and the purge point, a *blob*.
//! - `snapshot-<index, 16 hex digits>.snap`: the committed namespace after entry `index`, a
//!   blob ([`super::state_machine`]).
//!
//! A blob is a `u64` LE payload length, a `u32` LE crc32c of the payload, then the payload;
//! it is written as a temporary file, fsynced, renamed, and the directory fsynced.

use crate::error::{MetaError, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The on-disk format this pfs-meta writes and reads, kept in [`FORMAT_FILE`]. Format 3: the
/// Raft log (openraft entries in segments) and snapshots; format 2 was the single node's WAL.
pub const FORMAT: &str = "pfs-meta format 3";
/// The file in the metadata directory naming its [`FORMAT`].
pub const FORMAT_FILE: &str = "FORMAT";
/// Bytes before a blob's payload: length and crc32c.
pub const BLOB_HEADER: usize = 12;

/// Makes `dir` if it is missing, durably (its own entry in the parent too).
pub fn ensure_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        std::fs::create_dir_all(dir).map_err(|e| MetaError::io(format!("creating {}", dir.display()), e))?;
        // Make the new directory's own entry durable, or a crash could lose the whole log.
        if let Some(parent) = dir.parent() {
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

/// fsyncs a directory (after creating, renaming or removing entries in it).
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| MetaError::io(format!("fsync of directory {}", dir.display()), e))
}

/// `name` is `<prefix><16 hex digits><suffix>`: the number.
pub fn parse_name(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let hex = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Files of `dir` named `<prefix><16 hex digits><suffix>`, sorted by the number.
pub fn list_numbered(dir: &Path, prefix: &str, suffix: &str) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| MetaError::io(format!("listing {}", dir.display()), e))?;
    for entry in rd {
        let entry = entry.map_err(|e| MetaError::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = parse_name(name, prefix, suffix) {
            found.push((n, entry.path()));
        } else if name.ends_with(".tmp") {
            // A blob that never got renamed into place: useless.
            let _ = std::fs::remove_file(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// A blob's bytes: header and payload.
pub fn encode_blob(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOB_HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of a blob's bytes. Errors: Corrupt (`what`, `file`) when the header does not
/// match the bytes or the crc32c fails.
pub fn decode_blob<'a>(bytes: &'a [u8], what: &'static str, file: &Path) -> Result<&'a [u8]> {
    let bad = |why: String| MetaError::Corrupt { what, file: file.to_path_buf(), offset: None, reason: why };
    if bytes.len() < BLOB_HEADER {
        return Err(bad(format!("{} bytes, shorter than its header", bytes.len())));
    }
    let len = u64::from_le_bytes(bytes[0..8].try_into().unwrap());
    let crc = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    let payload = &bytes[BLOB_HEADER..];
    if payload.len() as u64 != len {
        return Err(bad(format!("header says {len} bytes, there are {}", payload.len())));
    }
    if crc32c::crc32c(payload) != crc {
        return Err(bad("crc32c mismatch".into()));
    }
    Ok(payload)
}

/// Reads a whole file. Errors: Io naming it.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| MetaError::io(format!("reading {}", path.display()), e))?;
    Ok(bytes)
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one: a temporary
/// file, fsync, rename, fsync of the directory. Errors: Io naming the file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| MetaError::io(format!("writing {}", path.display()), e))?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Refuses a metadata directory written in another format (an old log decoded as this one
/// would be garbage); writes the format file into an empty directory (`fresh`), durably.
pub fn check_format(dir: &Path, fresh: bool) -> Result<()> {
    let path = dir.join(FORMAT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(found) if found.trim_end() == FORMAT => Ok(()),
        Ok(found) => Err(MetaError::Corrupt {
            what: "metadata directory",
            file: path,
            offset: None,
            reason: format!("it says {:?}; this pfs-meta reads {FORMAT:?} only", found.trim_end()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !fresh => Err(MetaError::Corrupt {
            what: "metadata directory",
            file: path,
            offset: None,
            reason: format!(
                "missing: the log was written by a pfs-meta older than {FORMAT:?}, which this one cannot read"
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_atomic(&path, format!("{FORMAT}\n").as_bytes()),
        Err(e) => Err(MetaError::io(format!("reading {}", path.display()), e)),
    }
}

/// Whether `dir` holds anything of a meta node (a format file, segments, state or snapshots).
pub fn is_fresh(dir: &Path) -> Result<bool> {
    let rd = std::fs::read_dir(dir).map_err(|e| MetaError::io(format!("listing {}", dir.display()), e))?;
    for entry in rd {
        let entry = entry.map_err(|e| MetaError::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == FORMAT_FILE || name.starts_with("log-") || name.starts_with("snapshot-") || name.starts_with("wal-")
        {
            return Ok(false);
        }
    }
    Ok(true)
}

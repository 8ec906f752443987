//! A blocking wrapper around the async client, for programs without a tokio runtime.
//!
//! Each [`Client`] owns a small multi-threaded runtime; calls block the calling thread until
//! the async operation completes. Do not call these from inside an async context.

use crate::{Attr, ClientOptions, CreateOptions, DirEntry, Error, Result};
use std::sync::Arc;

/// Blocking counterpart of [`crate::Client`].
#[derive(Clone)]
pub struct Client {
    rt: Arc<tokio::runtime::Runtime>,
    inner: crate::Client,
}

/// Blocking counterpart of [`crate::File`].
#[derive(Clone)]
pub struct File {
    rt: Arc<tokio::runtime::Runtime>,
    inner: crate::File,
}

impl Client {
    /// Starts a runtime and connects; see [`crate::Client::connect`].
    pub fn connect(options: ClientOptions) -> Result<Client> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("pfs-client")
            .build()
            .map_err(|e| Error::Io { what: "starting the client runtime".into(), source: Arc::new(e) })?;
        let inner = rt.block_on(crate::Client::connect(options))?;
        Ok(Client { rt: Arc::new(rt), inner })
    }

    /// The async client inside.
    pub fn as_async(&self) -> &crate::Client {
        &self.inner
    }

    /// See [`crate::Client::create`].
    pub fn create(&self, path: &str, opts: &CreateOptions) -> Result<File> {
        let f = self.rt.block_on(self.inner.create(path, opts))?;
        Ok(File { rt: self.rt.clone(), inner: f })
    }

    /// See [`crate::Client::open`].
    pub fn open(&self, path: &str) -> Result<File> {
        let f = self.rt.block_on(self.inner.open(path))?;
        Ok(File { rt: self.rt.clone(), inner: f })
    }

    /// See [`crate::Client::stat`].
    pub fn stat(&self, path: &str) -> Result<Attr> {
        self.rt.block_on(self.inner.stat(path))
    }

    /// See [`crate::Client::mkdir`].
    pub fn mkdir(&self, path: &str) -> Result<()> {
        self.rt.block_on(self.inner.mkdir(path))
    }

    /// See [`crate::Client::readdir`].
    pub fn readdir(&self, path: &str) -> Result<Vec<DirEntry>> {
        self.rt.block_on(self.inner.readdir(path))
    }

    /// See [`crate::Client::rename`].
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.rt.block_on(self.inner.rename(from, to))
    }

    /// See [`crate::Client::unlink`].
    pub fn unlink(&self, path: &str) -> Result<()> {
        self.rt.block_on(self.inner.unlink(path))
    }

    /// See [`crate::Client::rmdir`].
    pub fn rmdir(&self, path: &str) -> Result<()> {
        self.rt.block_on(self.inner.rmdir(path))
    }
}

impl File {
    /// See [`crate::File::write_at`].
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<usize> {
        self.rt.block_on(self.inner.write_at(offset, buf))
    }

    /// See [`crate::File::read_at`].
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.rt.block_on(self.inner.read_at(offset, buf))
    }

    /// See [`crate::File::fsync`].
    pub fn fsync(&self) -> Result<()> {
        self.rt.block_on(self.inner.fsync())
    }

    /// See [`crate::File::truncate`].
    pub fn truncate(&self, size: u64) -> Result<()> {
        self.rt.block_on(self.inner.truncate(size))
    }

    /// See [`crate::File::stat`].
    pub fn stat(&self) -> Result<Attr> {
        self.rt.block_on(self.inner.stat())
    }

    /// Size in bytes as this handle knows it.
    pub fn size(&self) -> u64 {
        self.inner.size()
    }

    /// See [`crate::File::close`].
    pub fn close(self) -> Result<()> {
        self.rt.block_on(self.inner.close())
    }
}

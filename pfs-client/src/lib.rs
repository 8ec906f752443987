//! The pfs client library.
//!
//! [`Client`] connects to pfs-meta (namespace, tokens, layouts, chunk holders) and to the
//! storage servers (chunk data); it needs only pfs-meta's address ([`ClientOptions`]). [`File`]
//! reads and writes a striped file coherently under byte-range tokens: every call is cut into
//! per-chunk pieces ([`pfs_common::layout::Layout::pieces`]) that go to their storage targets in
//! parallel, with at most [`ClientOptions::max_inflight_bytes`] payload bytes in flight per
//! client. Errors are [`Error`]; decide on [`Error::code`]. (Callers without a tokio runtime:
//! libpfs is the blocking API, for C.)
//!
//! This crate links no server code: it depends on `pfs-common` (and tokio) only.
//!
//! ```no_run
//! # async fn demo() -> pfs_client::Result<()> {
//! use pfs_client::{Client, ClientOptions};
//! let client = Client::connect(ClientOptions::new("127.0.0.1:7400".parse().unwrap())).await?;
//! let file = client.create("/hello.txt", &Default::default()).await?;
//! file.write_at(0, b"hello, striped world").await?;
//! file.close().await?; // durable on the storage servers, size durable on pfs-meta
//! client.close().await?; // the session ends cleanly
//! # Ok(()) }
//! ```

pub mod cache;
mod client;
mod error;
mod failover;
mod file;
mod file_state;
mod options;
pub mod path;
mod releases;
mod request_slots;
mod session;
mod stride;

pub use cache::CacheStats;
pub use client::{Client, ClientStats, CreateOptions};
pub use error::{Error, Result};
pub use file::File;
pub use options::ClientOptions;
pub use pfs_common::token::{ByteRange, Mode};
pub use pfs_common::wire::namespace::{Attr, DirEntry, FileKind, NewAttrs, SetAttr, SetTime, Target};
pub use pfs_common::wire::registry::{ChunkHolder, ChunkInfo, Health, OrphanCopy, ServerStatus};
pub use pfs_common::wire::storage::ListedState;
pub use pfs_common::wire::storage::ScrubStatus;
pub use pfs_common::ErrorCode;
pub use session::{RevokeCallback, RevokeEvent, CLOSE_DELAY};
pub use stride::Advice;

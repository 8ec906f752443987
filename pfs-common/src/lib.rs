//! Parts shared by every pfs process: identifiers, configuration, the stripe layout math,
//! error codes, the wire protocol (frames and messages) and the multiplexed RPC connection.
//!
//! Nothing in here knows about a particular server's state; the metadata server, storage
//! server and client each build on these pieces.

pub mod auth;
pub mod capability;
pub mod chain;
pub mod config;
pub mod error;
pub mod ids;
pub mod layout;
pub mod logging;
pub mod peers;
pub mod pool;
pub mod range_map;
pub mod rpc;
pub mod token;
pub mod units;
pub mod wire;

pub use error::{Error, ErrorCode, Result, WireCode};
pub use ids::{ChunkIndex, FileId, ServerId};
pub use layout::Layout;

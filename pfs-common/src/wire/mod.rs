//! The wire protocol: frames ([`frame`]), the handshake, and the messages of each service
//! ([`meta`] for pfs-meta, [`storage`] for pfs-storage).
//!
//! Bodies are postcard-encoded (serde), never bincode: bincode 3.0 is a deliberate compile
//! error and the crate is declared unmaintained (RUSTSEC-2025-0141), and bincode 1/2 without a
//! size limit aborts the process on a 13-byte length bomb. postcard decodes from a body whose
//! length the frame header already bounded, and serde's collection visitors cap
//! pre-allocation, so a lying length prefix cannot make us allocate.

pub mod frame;
pub mod meta;
pub mod storage;

use crate::error::{ErrorCode, PfsError, Result, WireError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Protocol version spoken in the handshake.
pub const PROTOCOL_VERSION: u16 = 1;

/// Who is on the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// An application, tool or benchmark using pfs-client.
    Client,
    /// A storage server (talking to pfs-meta).
    Storage,
    /// The metadata server.
    Meta,
}

/// The first request on every connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u16,
    pub role: Role,
    /// Free-form name of the connecting process, for logs ("pfs-cp 1234").
    pub name: String,
}

/// The answer to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    pub version: u16,
    /// The server's name ("pfs-meta", "storage-3").
    pub server: String,
}

/// Encodes a message body.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    postcard::to_allocvec(msg).expect("postcard encodes every pfs message")
}

/// Decodes a message body; `what` names the message kind for the error.
pub fn decode<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T> {
    postcard::from_bytes(body).map_err(|e| PfsError::new(ErrorCode::Protocol, format!("undecodable {what}: {e}")))
}

/// The body of every response: the result of the request.
pub type ResponseBody<T> = std::result::Result<T, WireError>;

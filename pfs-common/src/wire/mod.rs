//! The wire protocol: frames ([`frame`]), the handshake, and the messages of each service.
//!
//! | service | module | spoken by | served by |
//! | --- | --- | --- | --- |
//! | namespace | [`namespace`] | clients | pfs-meta |
//! | tokens | [`tokens`] | clients | pfs-meta |
//! | registry and chunk reports | [`registry`] | storage servers (reports), anyone (queries) | pfs-meta |
//! | chunk data | [`storage`] | clients | pfs-storage |
//! | Raft and node status | [`raft`] | meta nodes (Raft), anyone (status) | pfs-meta |
//!
//! Every call is a struct implementing [`Call`], which names the request enum it travels in
//! and the type of its answer, so a caller gets the answer's type from the call and a server
//! answers each call with [`Call::Reply`] (checked at compile time on both sides).
//!
//! Bodies are postcard-encoded (serde), never bincode: bincode 3.0 is a deliberate compile
//! error and the crate is declared unmaintained (RUSTSEC-2025-0141), and bincode 1/2 without a
//! size limit aborts the process on a 13-byte length bomb. postcard decodes from a body whose
//! length the frame header already bounded, and serde's collection visitors cap
//! pre-allocation, so a lying length prefix cannot make us allocate.

pub mod frame;
pub mod namespace;
pub mod raft;
pub mod registry;
pub mod storage;
pub mod tokens;

use crate::error::WireError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Protocol version spoken in the handshake.
pub const PROTOCOL_VERSION: u16 = 14;

/// Longest peer name accepted in a [`Hello`], bytes.
pub const PEER_NAME_MAX: usize = 256;

pub use crate::auth::PeerRole;

/// The first request on every connection (the handshake: [`crate::auth`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u16,
    pub role: PeerRole,
    /// Free-form name of the connecting process, for logs ("pfs-cp 1234"); at most
    /// [`PEER_NAME_MAX`] bytes.
    pub name: String,
    /// Fresh random bytes for this connection's keys.
    pub nonce: [u8; crate::auth::NONCE_LEN],
    /// The client authenticates (holds a key for its role).
    pub auth: bool,
    /// The client asks for payload MACs.
    pub protect_data: bool,
}

/// The answer to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    pub version: u16,
    /// The server's name ("pfs-meta", "storage-3").
    pub server: String,
    /// Fresh random bytes for this connection's keys.
    pub nonce: [u8; crate::auth::NONCE_LEN],
    /// The server authenticates: a [`HelloProof`] must follow.
    pub auth: bool,
    /// The server asks for payload MACs.
    pub protect_data: bool,
    /// With `auth`: the server's proof over the transcript (this reply with `proof: None`).
    pub proof: Option<crate::auth::Proof>,
}

/// The client's proof over the handshake transcript (the second request of an
/// authenticated connection); answered with `()` or an AuthFailed error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloProof {
    pub proof: crate::auth::Proof,
}

/// One remote call: the message a caller sends, the request enum of the service it belongs
/// to, and the type of its answer.
pub trait Call: Sized {
    /// The request enum of the service (what the server decodes).
    type Request: Serialize + DeserializeOwned + Send + 'static;
    /// The answer to this call.
    type Reply: Serialize + DeserializeOwned + Send + 'static;
    /// Wraps the call in its service's request enum.
    fn into_request(self) -> Self::Request;
}

/// Declares a service's request enum and the [`Call`] impl of each of its calls.
///
/// `pub enum Name in Outer::Variant { V(Call) -> Reply, .. }` nests the service's enum in
/// `Outer` (a server speaking several services); `pub enum Name { .. }` makes it the
/// connection's own request type.
macro_rules! service {
    ($(#[$m:meta])* pub enum $name:ident in $outer:ident :: $ov:ident { $($calls:tt)* }) => {
        service!($(#[$m])* pub enum $name as $outer { $($calls)* });
        impl From<$name> for $outer {
            fn from(r: $name) -> $outer {
                $outer::$ov(r)
            }
        }
    };
    ($(#[$m:meta])* pub enum $name:ident { $($calls:tt)* }) => {
        service!($(#[$m])* pub enum $name as $name { $($calls)* });
    };
    ($(#[$m:meta])* pub enum $name:ident as $req:ty {
        $( $(#[$vm:meta])* $variant:ident($call:ident) -> $reply:ty ),* $(,)?
    }) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name { $( $(#[$vm])* $variant($call) ),* }
        $(
            impl $crate::wire::Call for $call {
                type Request = $req;
                type Reply = $reply;
                fn into_request(self) -> $req {
                    <$req>::from($name::$variant(self))
                }
            }
        )*
    };
}
pub(crate) use service;

/// Every request pfs-meta serves: namespace operations and token traffic from clients,
/// registration and reports from storage servers, cluster queries from anyone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaRequest {
    Namespace(namespace::NamespaceRequest),
    Tokens(tokens::TokenRequest),
    Registry(registry::RegistryRequest),
    Raft(raft::RaftRequest),
}

impl MetaRequest {
    /// Whether sending the request again, when its fate is unknown (the connection broke
    /// before the answer, or the leader changed after proposing it), cannot do anything twice
    /// or answer a false error: every read, token call and size report, and every namespace
    /// change carrying a [`namespace::RequestId`] (pfs-meta answers its repeat from the log).
    /// Not the other namespace changes whose repeat after a success fails (an exclusive
    /// create, a rename, an unlink: Exists or NotFound) or does something again (a link).
    pub fn is_retry_safe(&self) -> bool {
        use namespace::NamespaceRequest as N;
        match self {
            MetaRequest::Namespace(n) => match n {
                N::Create(c) => !c.exclusive || c.request.is_some(),
                N::Mkdir(_) | N::Mknod(_) | N::Symlink(_) | N::Link(_) | N::Rename(_) | N::Unlink(_) | N::Rmdir(_) => {
                    n.request().is_some()
                }
                // The others carry no request id (see `NamespaceRequest::request`).
                _ => true,
            },
            MetaRequest::Tokens(t) => !matches!(t, tokens::TokenRequest::OpenSession(_)),
            MetaRequest::Registry(_) | MetaRequest::Raft(_) => true,
        }
    }
}

impl MetaRequest {
    /// The request without the closes it carries ([`namespace::Create::closed`],
    /// [`namespace::Open::closed`], [`namespace::Close::files`]): what a client sends again
    /// when the first copy's fate is unknown. A close served twice would take away an open the
    /// session made since; one lost only keeps the file open until the session ends.
    pub fn without_closes(self) -> MetaRequest {
        use namespace::NamespaceRequest as N;
        match self {
            MetaRequest::Namespace(N::Create(c)) => {
                MetaRequest::Namespace(N::Create(namespace::Create { closed: Vec::new(), ..c }))
            }
            MetaRequest::Namespace(N::Open(c)) => {
                MetaRequest::Namespace(N::Open(namespace::Open { closed: Vec::new(), ..c }))
            }
            MetaRequest::Namespace(N::Close(c)) => {
                MetaRequest::Namespace(N::Close(namespace::Close { files: Vec::new(), ..c }))
            }
            r => r,
        }
    }
}

/// Encodes a message body.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    postcard::to_allocvec(msg).expect("postcard encodes every pfs message")
}

/// Why a body does not decode (postcard's description of what is wrong).
pub use postcard::Error as DecodeError;

/// Decodes a message body. Errors with postcard's description of what is wrong.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    postcard::from_bytes(body)
}

/// The body of every response: the result of the request.
pub type ResponseBody<T> = std::result::Result<T, WireError>;

//! The token service of pfs-meta: client sessions with leases, byte-range tokens, revokes.
//! A session belongs to the connection that opened it: pfs-meta pushes its revokes there
//! ([`ClientNotify`]), evicts it when that connection closes, and refuses (Denied) every
//! request naming it from another connection. Session ids are unguessable anyway: the high
//! 24 bits are the Raft term of the leader that opened the session, the low 40 random.
//!
//! Sessions are in pfs-meta's log, tokens are not: after a failover the new leader opens a
//! recovery window in which each session, from a new connection, proves it is the holder
//! (the `key` of its [`SessionGrant`]) and reclaims the tokens and opens it holds
//! ([`Reclaim`], Lustre's lock replay). Nothing conflicting is granted until every session
//! has reclaimed or the window (the session lease) is over.

use super::{service, MetaRequest};
use crate::capability::Capability;
use crate::ids::FileId;
use crate::token::{ByteRange, Mode, RevokeId, SessionId, Stride};
use serde::{Deserialize, Serialize};

service! {
    /// Requests of the token service.
    pub enum TokenRequest in MetaRequest::Tokens {
        OpenSession(OpenSession) -> SessionGrant,
        KeepAlive(KeepAlive) -> (),
        Acquire(Acquire) -> Granted,
        RevokeDone(RevokeDone) -> (),
        Release(Release) -> (),
        CloseSession(CloseSession) -> (),
        GetCapability(GetCapability) -> Capability,
        Reclaim(Reclaim) -> Reclaimed,
    }
}

impl TokenRequest {
    /// The session the call speaks for (every call but `OpenSession`).
    pub fn session(&self) -> Option<SessionId> {
        match self {
            TokenRequest::OpenSession(_) => None,
            TokenRequest::KeepAlive(c) => Some(c.session),
            TokenRequest::Acquire(c) => Some(c.session),
            TokenRequest::RevokeDone(c) => Some(c.session),
            TokenRequest::Release(c) => Some(c.session),
            TokenRequest::CloseSession(c) => Some(c.session),
            TokenRequest::GetCapability(c) => Some(c.session),
            // A reclaim comes on a new connection: its key, not the connection, proves it.
            TokenRequest::Reclaim(_) => None,
        }
    }
}

/// A fresh capability for bytes `range` of `file` in `mode`, which the session must hold
/// tokens for (for a capability that expired, or a write-back spanning grants). Errors:
/// Evicted; Denied when the session's tokens do not cover `range` in `mode`; Invalid when the
/// cluster does not authenticate (no capabilities are needed then).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetCapability {
    pub session: SessionId,
    pub file: FileId,
    pub mode: Mode,
    pub range: ByteRange,
}

/// Open a client session (the holder of tokens) on this connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenSession;

/// The answer to [`OpenSession`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionGrant {
    pub session: SessionId,
    /// The lease, ms: renew it (any request of the session does) at least this often.
    pub lease_ms: u64,
    /// The session's secret: shown by [`Reclaim`] to take the session over to a new
    /// connection after a failover (the log keeps only its SHA-256).
    pub key: [u8; 16],
}

/// Most files one [`Reclaim`] may carry; a client with more sends several.
pub const RECLAIM_MAX_FILES: usize = 4096;
/// Most tokens one reclaimed file may carry.
pub const RECLAIM_MAX_TOKENS: usize = 4096;

/// What a session holds of one file, as reclaimed after a failover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReclaimedFile {
    pub file: FileId,
    /// Opens of the file the session has not closed (the count pfs-meta had).
    pub opens: u32,
    /// The tokens held on it, byte ranges with their modes.
    pub tokens: Vec<(ByteRange, Mode)>,
}

/// Takes session `session` over to this connection after its pfs-meta leader changed, and
/// reclaims what it held: `files` (at most [`RECLAIM_MAX_FILES`]); `done` on the last of a
/// session's reclaims ends its part of the recovery window. Answered with the lease. Errors:
/// Forbidden (wrong key); Evicted (the session is not in the log, or was evicted, or the
/// leader's recovery window is over); Invalid (a token that conflicts with another session's
/// reclaim: the session is evicted, since its cache cannot be trusted); NotLeader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reclaim {
    pub session: SessionId,
    pub key: [u8; 16],
    pub files: Vec<ReclaimedFile>,
    pub done: bool,
}

/// The answer to [`Reclaim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reclaimed {
    /// The lease, ms, running from this answer.
    pub lease_ms: u64,
}

/// Keep a session's lease alive; clients send it every third of the lease. Errors: Evicted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepAlive {
    pub session: SessionId,
}

/// Ask for a token on `file`: `required` is what this call needs, `desired` (⊇ required)
/// what the client would like (to end of file for sequential access). Answered once
/// granted, which may wait for revokes of other holders. Errors: Evicted, Invalid (empty
/// range, required ⊄ desired), NotFound (file), IsDir.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acquire {
    pub session: SessionId,
    pub file: FileId,
    pub mode: Mode,
    pub required: ByteRange,
    pub desired: ByteRange,
    /// Records the client will want next, granted where free and never revoked for
    /// (strided I/O; see [`Stride`]). Errors: Invalid if malformed ([`Stride::check`]).
    pub ahead: Option<Stride>,
}

/// The answer to [`Acquire`]: the token granted and the file's size, bytes, as pfs-meta
/// knows it at the grant (after every conflicting holder wrote back and recorded its size).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Granted {
    pub mode: Mode,
    /// Contains the required range, within the desired one.
    pub range: ByteRange,
    /// The records of the request's `ahead` stride granted too: bit `k` for record `k`.
    pub ahead: u64,
    pub size: u64,
    /// The capability storage servers want for `range` in `mode` (`None` when the cluster
    /// does not authenticate).
    pub capability: Option<Capability>,
}

/// The holder wrote back (or dropped) what revoke `revoke` asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeDone {
    pub session: SessionId,
    pub revoke: RevokeId,
}

/// Give back tokens of `file` in `range` (dirty data already written back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub session: SessionId,
    pub file: FileId,
    pub range: ByteRange,
}

/// End a session cleanly: its tokens are dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseSession {
    pub session: SessionId,
}

/// One-way messages pfs-meta pushes to a client on its connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientNotify {
    /// Give up `range` of `file`: write back dirty bytes in it; with `wanted == Write` drop
    /// the cached bytes and the token there, with `wanted == Read` keep them but downgrade a
    /// write token to read. Then answer `RevokeDone { revoke }` within the revoke timeout.
    Revoke { revoke: RevokeId, file: FileId, range: ByteRange, wanted: Mode },
    /// The session was evicted (missed lease or revoke, lost connection); its tokens are
    /// gone and storage servers refuse its writes.
    Evicted { session: SessionId, reason: String },
}

//! Raw protocol access for tests that play a peer by hand (an intruder, a late writer): the
//! connection settings of a config's key, and capabilities minted with it.

use pfs_common::auth::Auth;
use pfs_common::capability::{sign, Capability, CapabilityIssuer};
use pfs_common::chain::ChainRef;
use pfs_common::config::Config;
use pfs_common::rpc::ConnectOptions;
use pfs_common::token::{ByteRange, Mode, SessionId};
use pfs_common::wire::storage::{Extent, WriteChunk};
use pfs_common::wire::PeerRole;
use pfs_common::FileId;
use std::time::Duration;

/// Connection settings as `role` named `name`, authenticating with `auth`.
pub fn connect_options(role: PeerRole, name: &str, auth: Auth) -> ConnectOptions {
    ConnectOptions {
        role,
        name: name.into(),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
        auth,
    }
}

/// Connection settings as `role` with the key `config` names (the cluster secret in a
/// [`crate::LocalCluster`], so any role).
pub fn cluster_options(config: &Config, role: PeerRole, name: &str) -> ConnectOptions {
    connect_options(role, name, config.auth(false).expect("the config's key is readable"))
}

/// A capability as pfs-meta would issue it, minted with `config`'s cluster secret (which the
/// test holds and a real client would not), valid for a minute; `None` when the config does
/// not authenticate.
pub fn mint_capability(
    config: &Config,
    file: FileId,
    range: ByteRange,
    mode: Mode,
    session: SessionId,
    chunk_size: u64,
) -> Option<Capability> {
    let key = config.auth(true).ok()?.capability_key()?;
    Some(CapabilityIssuer::new(key, 60_000).issue(file, range, mode, session, chunk_size))
}

/// A first-block write (4096 bytes at offset 0, block size 4096) of `session` to `chunk` of
/// `file` on `chain`, carrying a Write capability over the whole file minted with `config`'s
/// key: as valid as any a holder of the session was issued, so only the storage server's own
/// checks (fence, lease, chain) can refuse it.
pub fn block_write(
    config: &Config,
    session: SessionId,
    (file, chunk, chunk_size, chain): (FileId, u64, u64, ChainRef),
) -> WriteChunk {
    let cap = mint_capability(config, file, ByteRange::ALL, Mode::Write, session, chunk_size);
    WriteChunk {
        file,
        chunk,
        extents: vec![Extent { offset: 0, len: 4096 }],
        chunk_size,
        block_size: 4096,
        session,
        chain,
        capabilities: cap.into_iter().collect(),
    }
}

/// `cap` re-signed after `change` (an expired or widened capability with a valid tag, as only
/// a holder of the cluster secret could make).
pub fn resign(config: &Config, cap: Capability, change: impl FnOnce(&mut Capability)) -> Capability {
    let mut c = cap;
    change(&mut c);
    sign(&config.auth(true).unwrap().capability_key().unwrap(), c)
}

/// A connection that did the handshake by hand, as an intruder with a key would: the frames
/// it sent (to replay) and its MAC state (to send well-formed or altered frames).
pub struct RawConn {
    pub stream: tokio::net::TcpStream,
    pub send: pfs_common::auth::FrameMac,
    pub receive: pfs_common::auth::FrameMac,
    /// The `Hello` frame and the `HelloProof` frame as sent.
    pub hello_frame: Vec<u8>,
    pub proof_frame: Vec<u8>,
}

/// Encodes one unMAC'd frame (a handshake frame) as bytes.
fn frame_bytes(body: &[u8]) -> Vec<u8> {
    use pfs_common::wire::frame::{FrameHeader, FrameKind};
    let h = FrameHeader { kind: FrameKind::Request, body_len: body.len() as u32, payload_len: 0, request_id: 0 };
    let mut out = h.encode().to_vec();
    out.extend_from_slice(body);
    out
}

/// The next frame on `s` (no MAC); `None` when the peer closed or reset the connection. The
/// deadline only turns a peer that never answers into a failure instead of a hang.
pub async fn next_frame(s: &mut tokio::net::TcpStream) -> Option<pfs_common::wire::frame::Frame> {
    use pfs_common::wire::frame::{read_frame, DEFAULT_LIMITS};
    tokio::time::timeout(Duration::from_secs(60), read_frame(s, &DEFAULT_LIMITS, pfs_common::pool::global(), None))
        .await
        .expect("the server answers or closes")
        .unwrap_or(None)
}

/// Why a handshake done by hand failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Connecting, writing or reading failed.
    #[error("{addr}: {source}")]
    Io {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The server closed the connection after our `after` ("the hello", "the proof").
    #[error("{addr}: closed after {after}")]
    Closed { addr: std::net::SocketAddr, after: &'static str },
    /// The server's answer does not decode.
    #[error("{addr}: undecodable answer: {why}")]
    Undecodable { addr: std::net::SocketAddr, why: String },
    /// The server refused the hello or the proof.
    #[error("{addr} refused: {} ({:?})", .refusal.message, .refusal.code)]
    Refused { addr: std::net::SocketAddr, refusal: pfs_common::error::WireError },
    /// The server's answer carries no proof (it does not authenticate).
    #[error("{addr}: no server proof")]
    NoProof { addr: std::net::SocketAddr },
    /// The server's proof does not check against `key`.
    #[error("{addr}: the server's proof does not check")]
    BadProof { addr: std::net::SocketAddr },
}

/// Does the handshake with `addr` by hand as `role`, proving `key` (a role key). Errors: the
/// server's refusal ([`HandshakeError::Refused`] with its code), or why its proof did not
/// check, or the connection's failure.
pub async fn handshake(
    addr: std::net::SocketAddr,
    role: PeerRole,
    key: &pfs_common::auth::Key,
) -> std::result::Result<RawConn, HandshakeError> {
    use pfs_common::auth::{connection_keys, nonce, transcript};
    use pfs_common::wire::{self, Hello, HelloProof, HelloReply, ResponseBody, PROTOCOL_VERSION};
    use tokio::io::AsyncWriteExt;
    let io = |source| HandshakeError::Io { addr, source };
    let undecodable = |e: pfs_common::wire::DecodeError| HandshakeError::Undecodable { addr, why: e.to_string() };
    let refused = |refusal| HandshakeError::Refused { addr, refusal };
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
    let hello = Hello {
        version: PROTOCOL_VERSION,
        role,
        name: "by hand".into(),
        nonce: nonce(),
        auth: true,
        protect_data: false,
    };
    let hello_body = wire::encode(&hello);
    let hello_frame = frame_bytes(&hello_body);
    stream.write_all(&hello_frame).await.map_err(io)?;
    let f = next_frame(&mut stream).await.ok_or(HandshakeError::Closed { addr, after: "the hello" })?;
    let mut reply = wire::decode::<ResponseBody<HelloReply>>(&f.body).map_err(undecodable)?.map_err(refused)?;
    let proof = reply.proof.take().ok_or(HandshakeError::NoProof { addr })?;
    let th = transcript(&hello_body, &wire::encode(&reply));
    let keys = connection_keys(key, &hello.nonce, &reply.nonce, &th, reply.protect_data, true);
    if !keys.server_proof_matches(&proof) {
        return Err(HandshakeError::BadProof { addr });
    }
    let proof_frame = frame_bytes(&wire::encode(&HelloProof { proof: keys.client_proof() }));
    stream.write_all(&proof_frame).await.map_err(io)?;
    let f = next_frame(&mut stream).await.ok_or(HandshakeError::Closed { addr, after: "the proof" })?;
    wire::decode::<ResponseBody<()>>(&f.body).map_err(undecodable)?.map_err(refused)?;
    Ok(RawConn { stream, send: keys.send, receive: keys.receive, hello_frame, proof_frame })
}

/// The key of `role` from `config`'s cluster secret.
pub fn role_key(config: &Config, role: PeerRole) -> pfs_common::auth::Key {
    config.auth(true).unwrap().credentials.unwrap().role_key(role).unwrap()
}

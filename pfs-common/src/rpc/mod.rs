//! Multiplexed request/response connections over TCP: [`RpcClient`] (many requests in flight
//! on one connection, matched by request id; `rpc/client.rs`) and [`serve`] (the accept loop and
//! per-connection dispatch of every pfs server; `rpc/server.rs`), both opening with the
//! handshake of `rpc/handshake.rs`.
//!
//! Every connection opens with a [`crate::wire::Hello`] handshake naming the protocol version and the
//! peer's role; unless `auth = "none"`, both sides prove they hold the role's key and every
//! later frame carries a MAC ([`crate::auth`]). A frame whose header is bad (wrong magic, a length over the limit) gets an
//! error answer and the connection is closed; a well-framed request whose body does not
//! decode gets an error answer and the connection stays usable. Either way the server logs it
//! and keeps serving everyone else. A connection idle past [`ServeOptions::idle_timeout`]
//! (no frame received, no request in flight) is closed, so abandoned peers do not hold
//! sockets and memory for ever.
//!
//! An [`RpcClient`] is typed by the request enum of the server's service(s), so only calls
//! that server answers can be sent on it, and each call's answer decodes as [`crate::wire::Call::Reply`].

mod client;
mod handshake;
mod server;

pub use client::{ConnectOptions, RpcClient};
pub use server::{serve, Handler, Notifier, Peer, Reply, ServeOptions};

use crate::auth::FrameMac;
use crate::error::{Error, Result, WireError};
use crate::wire;
use crate::wire::frame::{write_frame, FrameError, FrameKind};
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::BufReader;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpListener;
use tracing::info;

/// Socket read buffer, bytes. Small frames (every metadata message) are parsed from it with
/// one `read` syscall for several frames; a payload larger than it is read straight into its
/// pooled buffer, bypassing this one (tokio's `BufReader` skips its buffer for large reads).
pub(super) const READ_BUFFER: usize = 64 << 10;

pub(super) type Reader = BufReader<OwnedReadHalf>;

/// Requests one server connection runs at once; further requests wait (bounded memory).
pub const MAX_INFLIGHT_PER_CONN: usize = 64;

/// The sending half of a connection and the MAC state of its direction: every frame is
/// written (and tagged, in sequence) under the one lock that holds it.
pub(crate) struct Sender {
    pub(super) half: OwnedWriteHalf,
    pub(super) mac: Option<FrameMac>,
}

impl Sender {
    pub(super) async fn send(
        &mut self,
        kind: FrameKind,
        id: u64,
        body: &[u8],
        payload: &[&[u8]],
    ) -> std::result::Result<(), FrameError> {
        write_frame(&mut self.half, kind, id, body, payload, self.mac.as_mut()).await
    }
}

/// A frame error on the connection to `peer`, as this crate's [`Error`].
pub(super) fn frame_error(peer: &str, e: FrameError) -> Error {
    let peer = peer.to_string();
    match e {
        FrameError::Io(source) if source.kind() == std::io::ErrorKind::UnexpectedEof => Error::Closed { peer },
        FrameError::Io(source) => Error::Socket { peer, source: Arc::new(source) },
        FrameError::TooLarge { what, len, limit } => Error::TooLarge { peer, what, len, limit },
        other => Error::Protocol { peer, message: other.to_string() },
    }
}

pub(super) fn decode_body<T: DeserializeOwned>(peer: &str, body: &[u8]) -> Result<T> {
    wire::decode(body)
        .map_err(|e| Error::Protocol { peer: peer.to_string(), message: format!("undecodable answer: {e}") })
}

pub(super) fn remote(peer: &str, e: WireError) -> Error {
    Error::Remote { peer: peer.to_string(), code: e.code, message: e.message, chain: e.chain.map(Box::new) }
}

/// Binds a listener. Errors: Io naming the address.
pub async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    let l = TcpListener::bind(addr).await.map_err(|e| Error::io(format!("{what}: binding {addr}"), e))?;
    info!("{what} listening on {}", l.local_addr().map(|a| a.to_string()).unwrap_or_default());
    Ok(l)
}

#[cfg(test)]
mod tests;

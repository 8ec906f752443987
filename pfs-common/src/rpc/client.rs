//! The client side: [`RpcClient`], one multiplexed connection to a server, typed by the
//! server's request enum.

use super::handshake::client_side;
use super::{decode_body, frame_error, remote, Reader, Sender, READ_BUFFER};
use crate::auth::{Auth, FrameMac};
use crate::error::{Error, Result};
use crate::pool::{self, PooledBuf};
use crate::wire::frame::{read_frame, Frame, FrameKind, DEFAULT_LIMITS};
use crate::wire::{self, Call, PeerRole, ResponseBody};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::debug;

/// One multiplexed connection to a pfs server whose requests are `R` (a service's request
/// enum). Cheap to clone; all clones share the socket.
///
/// Once the connection fails (peer closed, socket error, a request timed out mid-write), every
/// pending and later call fails with an error naming the peer; make a new connection then.
pub struct RpcClient<R> {
    inner: Arc<ClientInner>,
    _service: PhantomData<fn(R)>,
}

impl<R> std::fmt::Debug for RpcClient<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient").field("peer", &self.inner.peer).finish()
    }
}

impl<R> Clone for RpcClient<R> {
    fn clone(&self) -> Self {
        RpcClient { inner: self.inner.clone(), _service: PhantomData }
    }
}

struct ClientInner {
    /// "storage-2 at 127.0.0.1:7402": used in every error.
    peer: String,
    writer: tokio::sync::Mutex<Sender>,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    request_timeout: Duration,
    reader: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Result<Frame>>>,
    closed: Option<Error>,
}

/// Settings for [`RpcClient::connect`].
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Our role, sent in the handshake.
    pub role: PeerRole,
    /// Our name, for the server's logs.
    pub name: String,
    /// Deadline for TCP connect plus handshake.
    pub connect_timeout: Duration,
    /// Deadline for one request's answer.
    pub request_timeout: Duration,
    /// Our key (for `role`), or `auth = "none"`.
    pub auth: Auth,
}

impl<R: Serialize> RpcClient<R> {
    /// Connects to `addr` and performs the handshake. `peer` names the server in errors
    /// ("pfs-meta", "storage-2"). `notify` receives the server's one-way frames, if given.
    ///
    /// Errors: Connect (refused, unreachable), TimedOut, Closed, Remote or Protocol (the
    /// server refused our version or role); each names the peer and its address.
    pub async fn connect(
        addr: SocketAddr,
        peer: &str,
        opts: &ConnectOptions,
        notify: Option<mpsc::Sender<Frame>>,
    ) -> Result<RpcClient<R>> {
        let peer = format!("{peer} at {addr}");
        let setup = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| Error::Connect { peer: peer.clone(), source: Arc::new(e) })?;
            stream.set_nodelay(true).ok();
            let (rd, mut wr) = stream.into_split();
            let mut rd = BufReader::with_capacity(READ_BUFFER, rd);
            let macs = client_side(&mut rd, &mut wr, &peer, opts).await?;
            Ok::<_, Error>((rd, wr, macs))
        };
        let (rd, wr, macs) = match tokio::time::timeout(opts.connect_timeout, setup).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::TimedOut { peer, what: "connection", ms: opts.connect_timeout.as_millis() as u64 })
            }
        };
        let (send_mac, receive_mac) = match macs {
            Some((s, r)) => (Some(s), Some(r)),
            None => (None, None),
        };
        let inner = Arc::new(ClientInner {
            peer,
            writer: tokio::sync::Mutex::new(Sender { half: wr, mac: send_mac }),
            pending: Mutex::new(Pending::default()),
            next_id: AtomicU64::new(1),
            request_timeout: opts.request_timeout,
            reader: Mutex::new(None),
        });
        let task = tokio::spawn(read_responses(Arc::downgrade(&inner), rd, notify, receive_mac));
        *inner.reader.lock() = Some(task);
        Ok(RpcClient { inner, _service: PhantomData })
    }

    /// Connects to the first of `addrs` that takes the connection, trying them in turn from
    /// index `start` on (wrapping around: `start` is usually the one that last worked), and
    /// returns the index of the address that answered with the connection. `peer` and
    /// `notify` are as for [`RpcClient::connect`]; any failure to connect (refused,
    /// unreachable, timed out, the handshake refused) moves on to the next address.
    ///
    /// Errors: when every address fails, with a single address its error as
    /// [`RpcClient::connect`] gives it; with several, the last one's error (its variant and
    /// code), its message naming every address tried and what each answered. Connect when
    /// `addrs` is empty.
    pub async fn connect_any(
        addrs: &[SocketAddr],
        start: usize,
        peer: &str,
        opts: &ConnectOptions,
        notify: Option<mpsc::Sender<Frame>>,
    ) -> Result<(usize, RpcClient<R>)> {
        if addrs.is_empty() {
            return Err(Error::Connect {
                peer: format!("{peer} (no address to connect to)"),
                source: Arc::new(std::io::Error::new(
                    std::io::ErrorKind::AddrNotAvailable,
                    "the address list is empty",
                )),
            });
        }
        let mut failed: Vec<Error> = Vec::new();
        for k in 0..addrs.len() {
            let i = (start + k) % addrs.len();
            match RpcClient::connect(addrs[i], peer, opts, notify.clone()).await {
                Ok(c) => {
                    if !failed.is_empty() {
                        debug!("connected to {peer} at {} after: {}", addrs[i], joined(&failed));
                    }
                    return Ok((i, c));
                }
                Err(e) => failed.push(e),
            }
        }
        let last = failed.pop().expect("one error per address, and there is one at least");
        Err(after_the_others(last, &failed))
    }

    /// The peer's name and address, as used in errors.
    pub fn peer(&self) -> &str {
        &self.inner.peer
    }

    /// True if `self` and `other` are clones of one connection.
    pub fn same_connection(&self, other: &RpcClient<R>) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// True once the connection has failed; calls on it fail at once.
    pub fn is_closed(&self) -> bool {
        self.inner.pending.lock().closed.is_some()
    }

    /// Sends `call` with no payload and waits for its answer.
    ///
    /// Errors: as [`RpcClient::call`].
    pub async fn ask<C: Call<Request = R>>(&self, call: C) -> Result<C::Reply> {
        Ok(self.call(call, &[]).await?.0)
    }

    /// Sends `call` with `payload` (raw bytes, written from the caller's buffer) and waits
    /// for the answer and its payload.
    ///
    /// Errors: Remote (the server's own error for the request), or Closed / Socket /
    /// TimedOut naming the peer when the connection fails or no answer comes within the
    /// request timeout; Protocol for an answer that does not decode.
    pub async fn call<C: Call<Request = R>>(&self, call: C, payload: &[u8]) -> Result<(C::Reply, PooledBuf)> {
        self.call_parts(call, &[payload]).await
    }

    /// [`RpcClient::call`] with a payload in parts, sent back to back with one vectored
    /// write (no copy into one buffer): the peer receives one payload.
    pub async fn call_parts<C: Call<Request = R>>(&self, call: C, payload: &[&[u8]]) -> Result<(C::Reply, PooledBuf)> {
        let inner = &self.inner;
        let body = wire::encode(&call.into_request());
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = inner.pending.lock();
            if let Some(e) = &p.closed {
                return Err(e.clone());
            }
            p.waiting.insert(id, tx);
        }
        let deadline = Instant::now() + inner.request_timeout;
        let write = async { inner.writer.lock().await.send(FrameKind::Request, id, &body, payload).await };
        match tokio::time::timeout_at(deadline.into(), write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // A half-written frame leaves the stream unusable: fail the whole connection.
                let e = frame_error(&inner.peer, e);
                inner.fail(e.clone());
                return Err(e);
            }
            Err(_) => {
                let e = self.timeout_error();
                inner.fail(e.clone());
                return Err(e);
            }
        }
        let frame = match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => return Err(Error::Closed { peer: inner.peer.clone() }),
            Err(_) => {
                inner.pending.lock().waiting.remove(&id);
                return Err(self.timeout_error());
            }
        };
        let answer: ResponseBody<C::Reply> = decode_body(&inner.peer, &frame.body)?;
        match answer {
            Ok(a) => Ok((a, frame.payload)),
            Err(e) => Err(remote(&inner.peer, e)),
        }
    }

    fn timeout_error(&self) -> Error {
        Error::TimedOut {
            peer: self.inner.peer.clone(),
            what: "answer",
            ms: self.inner.request_timeout.as_millis() as u64,
        }
    }

    /// Closes the connection; pending calls fail.
    pub fn close(&self) {
        self.inner.fail(Error::Closed { peer: self.inner.peer.clone() });
    }
}

impl ClientInner {
    fn fail(&self, err: Error) {
        let waiting = {
            let mut p = self.pending.lock();
            if p.closed.is_none() {
                p.closed = Some(err.clone());
            }
            std::mem::take(&mut p.waiting)
        };
        for (_, tx) in waiting {
            let _ = tx.send(Err(err.clone()));
        }
        if let Some(task) = self.reader.lock().take() {
            task.abort();
        }
    }
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        if let Some(task) = self.reader.get_mut().take() {
            task.abort();
        }
    }
}

async fn read_responses(
    inner: std::sync::Weak<ClientInner>,
    mut rd: Reader,
    notify: Option<mpsc::Sender<Frame>>,
    mut mac: Option<FrameMac>,
) {
    loop {
        let result = read_frame(&mut rd, &DEFAULT_LIMITS, pool::global(), mac.as_mut()).await;
        let Some(inner) = inner.upgrade() else { return };
        let err = match result {
            Ok(Some(frame)) => match frame.header.kind {
                FrameKind::Response => {
                    let tx = inner.pending.lock().waiting.remove(&frame.header.request_id);
                    if let Some(tx) = tx {
                        let _ = tx.send(Ok(frame));
                    }
                    continue;
                }
                FrameKind::Notify => {
                    if let Some(n) = &notify {
                        // Bounded: a slow consumer slows this connection, never grows memory.
                        if n.send(frame).await.is_err() {
                            debug!("notification receiver of {} is gone", inner.peer);
                        }
                    }
                    continue;
                }
                FrameKind::Request => {
                    Error::Protocol { peer: inner.peer.clone(), message: "sent a request to a client".into() }
                }
            },
            Ok(None) => Error::Closed { peer: inner.peer.clone() },
            Err(e) => frame_error(&inner.peer, e),
        };
        // Release our own handle first so fail() does not abort the task running it.
        inner.reader.lock().take();
        inner.fail(err);
        return;
    }
}

fn joined(errors: &[Error]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// `last`, the error of the last address [`RpcClient::connect_any`] tried, with what the
/// addresses tried before it answered added to its message (variant and code unchanged).
fn after_the_others(last: Error, before: &[Error]) -> Error {
    if before.is_empty() {
        return last;
    }
    let note = |s: String| format!("{s} (the last of {} addresses tried, after: {})", before.len() + 1, joined(before));
    match last {
        Error::Connect { peer, source } => Error::Connect { peer: note(peer), source },
        Error::TimedOut { peer, what, ms } => Error::TimedOut { peer: note(peer), what, ms },
        Error::Closed { peer } => Error::Closed { peer: note(peer) },
        Error::Socket { peer, source } => Error::Socket { peer: note(peer), source },
        Error::Protocol { peer, message } => Error::Protocol { peer: note(peer), message },
        Error::Auth { peer, message } => Error::Auth { peer: note(peer), message },
        Error::TooLarge { peer, what, len, limit } => Error::TooLarge { peer: note(peer), what, len, limit },
        // Its message is all it shows.
        Error::Remote { peer, code, message, chain } => Error::Remote { peer, code, message: note(message), chain },
        Error::Config(m) => Error::Config(note(m)),
        Error::Layout(m) => Error::Layout(note(m)),
        Error::Io { what, source } => Error::Io { what: note(what), source },
    }
}

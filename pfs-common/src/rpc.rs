//! Multiplexed request/response connections over TCP: [`RpcClient`] (many requests in flight
//! on one connection, matched by request id) and [`serve`] (the accept loop and per-connection
//! dispatch of every pfs server).
//!
//! Every connection opens with a [`Hello`] handshake naming the protocol version and the
//! peer's role. A frame whose header is bad (wrong magic, a length over the limit) gets an
//! error answer and the connection is closed; a well-framed request whose body does not
//! decode gets an error answer and the connection stays usable. Either way the server logs it
//! and keeps serving everyone else.

use crate::error::{ErrorCode, PfsError, Result};
use crate::pool::{self, PooledBuf};
use crate::wire::frame::{read_frame, write_frame, Frame, FrameKind, Limits, DEFAULT_LIMITS};
use crate::wire::{self, Hello, HelloReply, ResponseBody, Role, PROTOCOL_VERSION};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::BufReader;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Socket read buffer, bytes. Small frames (every metadata message) are parsed from it with
/// one `read` syscall for several frames; a payload larger than it is read straight into its
/// pooled buffer, bypassing this one (tokio's `BufReader` skips its buffer for large reads).
const READ_BUFFER: usize = 64 << 10;

type Reader = BufReader<OwnedReadHalf>;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Requests one server connection runs at once; further requests wait (bounded memory).
pub const MAX_INFLIGHT_PER_CONN: usize = 64;
/// Time a new connection has to send its `Hello`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------

/// One multiplexed connection to a pfs server. Cheap to clone; all clones share the socket.
///
/// Once the connection fails (peer closed, socket error, a request timed out mid-write), every
/// pending and later call fails with an error naming the peer; make a new connection then.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    /// "storage-2 at 127.0.0.1:7402": used in every error.
    peer: String,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    request_timeout: Duration,
    reader: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Result<Frame>>>,
    closed: Option<PfsError>,
}

/// Settings for [`RpcClient::connect`].
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Our role, sent in the handshake.
    pub role: Role,
    /// Our name, for the server's logs.
    pub name: String,
    /// Deadline for TCP connect plus handshake.
    pub connect_timeout: Duration,
    /// Deadline for one request's answer.
    pub request_timeout: Duration,
}

impl RpcClient {
    /// Connects to `addr` and performs the handshake. `peer` names the server in errors
    /// ("pfs-meta", "storage-2"). `notify` receives the server's one-way frames, if given.
    ///
    /// Errors: Unavailable (refused, reset), TimedOut, Protocol (version or role refused).
    pub async fn connect(
        addr: SocketAddr,
        peer: &str,
        opts: &ConnectOptions,
        notify: Option<mpsc::Sender<Frame>>,
    ) -> Result<RpcClient> {
        let peer = format!("{peer} at {addr}");
        let setup = async {
            let stream =
                TcpStream::connect(addr).await.map_err(|e| PfsError::io(format!("cannot connect to {peer}"), e))?;
            stream.set_nodelay(true).ok();
            let (rd, mut wr) = stream.into_split();
            let mut rd = BufReader::with_capacity(READ_BUFFER, rd);
            let hello = Hello { version: PROTOCOL_VERSION, role: opts.role, name: opts.name.clone() };
            write_frame(&mut wr, FrameKind::Request, 0, &wire::encode(&hello), &[]).await?;
            let frame = read_frame(&mut rd, &DEFAULT_LIMITS, pool::global())
                .await?
                .ok_or_else(|| PfsError::new(ErrorCode::Unavailable, "closed the connection during the handshake"))?;
            let reply: ResponseBody<HelloReply> = wire::decode(&frame.body, "handshake reply")?;
            let reply = reply.map_err(PfsError::from)?;
            if reply.version != PROTOCOL_VERSION {
                return Err(PfsError::new(ErrorCode::Protocol, format!("speaks protocol version {}", reply.version)));
            }
            Ok::<_, PfsError>((rd, wr))
        };
        let (rd, wr) = match tokio::time::timeout(opts.connect_timeout, setup).await {
            Ok(r) => r.map_err(|e| if e.message.contains(&peer) { e } else { e.context(&peer) })?,
            Err(_) => {
                return Err(PfsError::new(
                    ErrorCode::TimedOut,
                    format!("{peer}: no connection within {} ms", opts.connect_timeout.as_millis()),
                ))
            }
        };
        let inner = Arc::new(ClientInner {
            peer,
            writer: tokio::sync::Mutex::new(wr),
            pending: Mutex::new(Pending::default()),
            next_id: AtomicU64::new(1),
            request_timeout: opts.request_timeout,
            reader: Mutex::new(None),
        });
        let task = tokio::spawn(read_responses(Arc::downgrade(&inner), rd, notify));
        *inner.reader.lock() = Some(task);
        Ok(RpcClient { inner })
    }

    /// The peer's name and address, as used in errors.
    pub fn peer(&self) -> &str {
        &self.inner.peer
    }

    /// True once the connection has failed; calls on it fail at once.
    pub fn is_closed(&self) -> bool {
        self.inner.pending.lock().closed.is_some()
    }

    /// Sends `req` with `payload` (raw bytes, written from the caller's buffer) and waits for
    /// the answer and its payload.
    ///
    /// Errors: the server's own error for the request, or Unavailable / TimedOut naming the
    /// peer when the connection fails or no answer comes within the request timeout.
    pub async fn call<Q: Serialize, A: DeserializeOwned>(&self, req: &Q, payload: &[u8]) -> Result<(A, PooledBuf)> {
        let inner = &self.inner;
        let body = wire::encode(req);
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
        let write = async {
            let mut w = inner.writer.lock().await;
            write_frame(&mut *w, FrameKind::Request, id, &body, payload).await
        };
        match tokio::time::timeout_at(deadline.into(), write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // A half-written frame leaves the stream unusable: fail the whole connection.
                let e = e.context(&inner.peer);
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
            Ok(Err(_)) => {
                return Err(PfsError::new(ErrorCode::Unavailable, format!("{}: connection closed", inner.peer)))
            }
            Err(_) => {
                inner.pending.lock().waiting.remove(&id);
                return Err(self.timeout_error());
            }
        };
        let answer: ResponseBody<A> = wire::decode(&frame.body, "response").map_err(|e| e.context(&inner.peer))?;
        match answer {
            Ok(a) => Ok((a, frame.payload)),
            Err(e) => Err(PfsError::from(e)),
        }
    }

    fn timeout_error(&self) -> PfsError {
        PfsError::new(
            ErrorCode::TimedOut,
            format!("{}: no answer within {} ms", self.inner.peer, self.inner.request_timeout.as_millis()),
        )
    }

    /// Closes the connection; pending calls fail.
    pub fn close(&self) {
        self.inner.fail(PfsError::new(ErrorCode::Unavailable, format!("{}: connection closed by us", self.inner.peer)));
    }
}

impl ClientInner {
    fn fail(&self, err: PfsError) {
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

async fn read_responses(inner: std::sync::Weak<ClientInner>, mut rd: Reader, notify: Option<mpsc::Sender<Frame>>) {
    loop {
        let result = read_frame(&mut rd, &DEFAULT_LIMITS, pool::global()).await;
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
                    PfsError::new(ErrorCode::Protocol, format!("{} sent a request to a client", inner.peer))
                }
            },
            Ok(None) => PfsError::new(ErrorCode::Unavailable, format!("{}: connection closed", inner.peer)),
            Err(e) => e.context(&inner.peer),
        };
        // Release our own handle first so fail() does not abort the task running it.
        inner.reader.lock().take();
        inner.fail(err);
        return;
    }
}

// ---------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------

/// A connected peer, as a handler sees it.
#[derive(Clone)]
pub struct Peer {
    /// Unique per accepted connection within this process.
    pub conn_id: u64,
    pub addr: SocketAddr,
    pub role: Role,
    pub name: String,
    /// Pushes one-way frames to this peer.
    pub notifier: Notifier,
}

/// Sends one-way [`FrameKind::Notify`] frames on a server-side connection.
#[derive(Clone)]
pub struct Notifier {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
}

impl Notifier {
    /// Sends `msg` to the peer. Errors if the connection is gone.
    pub async fn notify<T: Serialize>(&self, msg: &T) -> Result<()> {
        let mut w = self.writer.lock().await;
        write_frame(&mut *w, FrameKind::Notify, 0, &wire::encode(msg), &[]).await
    }
}

/// A handler's answer: an encoded `ResponseBody` and an optional payload.
pub struct Reply {
    body: Vec<u8>,
    payload: Option<PooledBuf>,
}

impl Reply {
    /// The answer to a request: `Ok(value)` or the error.
    pub fn from_result<T: Serialize>(r: Result<T>) -> Reply {
        let body: ResponseBody<T> = r.map_err(|e| e.to_wire());
        Reply { body: wire::encode(&body), payload: None }
    }

    /// An error answer.
    pub fn error(e: PfsError) -> Reply {
        Reply::from_result::<()>(Err(e))
    }

    /// Attaches raw payload bytes.
    pub fn with_payload(mut self, payload: PooledBuf) -> Reply {
        self.payload = Some(payload);
        self
    }
}

/// The request handler of a server.
pub trait Handler: Send + Sync + 'static {
    /// The service's request message.
    type Request: DeserializeOwned + Send + 'static;

    /// Handles one request. Runs concurrently with the connection's other requests.
    fn handle(
        self: Arc<Self>,
        peer: Peer,
        req: Self::Request,
        payload: PooledBuf,
    ) -> impl Future<Output = Reply> + Send;

    /// Called once when a connection ends (after its handshake succeeded).
    fn disconnected(self: Arc<Self>, _peer: Peer) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Settings of [`serve`].
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The server's name in handshake replies and logs.
    pub name: String,
    /// Roles allowed to connect.
    pub roles: Vec<Role>,
    pub limits: Limits,
}

/// Accepts connections on `listener` forever, serving each with `handler`.
pub async fn serve<H: Handler>(listener: TcpListener, handler: Arc<H>, opts: ServeOptions) {
    let opts = Arc::new(opts);
    let conn_ids = AtomicU64::new(1);
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: log, back off briefly, keep accepting.
                warn!("{}: accept failed: {e}", opts.name);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        stream.set_nodelay(true).ok();
        let conn_id = conn_ids.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve_conn(stream, addr, conn_id, handler.clone(), opts.clone()));
    }
}

async fn serve_conn<H: Handler>(
    stream: TcpStream,
    addr: SocketAddr,
    conn_id: u64,
    handler: Arc<H>,
    opts: Arc<ServeOptions>,
) {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(READ_BUFFER, rd);
    let writer = Arc::new(tokio::sync::Mutex::new(wr));
    let peer = match handshake(&mut rd, &writer, addr, conn_id, &opts).await {
        Ok(p) => p,
        Err(e) => {
            warn!("{}: connection from {addr} refused: {e}", opts.name);
            return;
        }
    };
    debug!("{}: {:?} {} connected from {addr}", opts.name, peer.role, peer.name);
    let slots = Arc::new(Semaphore::new(MAX_INFLIGHT_PER_CONN));
    loop {
        let frame = match read_frame(&mut rd, &opts.limits, pool::global()).await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                if e.code == ErrorCode::Unavailable {
                    debug!("{}: {addr} went away: {e}", opts.name);
                } else {
                    warn!("{}: bad frame from {} ({addr}), closing the connection: {e}", opts.name, peer.name);
                    let reply = Reply::error(e);
                    let mut w = writer.lock().await;
                    let _ = write_frame(&mut *w, FrameKind::Response, 0, &reply.body, &[]).await;
                }
                break;
            }
        };
        if frame.header.kind != FrameKind::Request {
            warn!("{}: {} sent a {:?} frame; closing the connection", opts.name, peer.name, frame.header.kind);
            break;
        }
        let id = frame.header.request_id;
        let permit = slots.clone().acquire_owned().await.expect("semaphore is never closed");
        let reply_to = writer.clone();
        match wire::decode::<H::Request>(&frame.body, "request") {
            Ok(req) => {
                let handler = handler.clone();
                let peer = peer.clone();
                tokio::spawn(async move {
                    let reply = handler.handle(peer, req, frame.payload).await;
                    send_reply(&reply_to, id, reply).await;
                    drop(permit);
                });
            }
            Err(e) => {
                warn!("{}: undecodable request from {} ({addr}): {e}", opts.name, peer.name);
                send_reply(&reply_to, id, Reply::error(e)).await;
            }
        }
    }
    handler.disconnected(peer).await;
}

async fn send_reply(writer: &tokio::sync::Mutex<OwnedWriteHalf>, id: u64, reply: Reply) {
    let payload: &[u8] = reply.payload.as_deref().unwrap_or(&[]);
    let mut w = writer.lock().await;
    if let Err(e) = write_frame(&mut *w, FrameKind::Response, id, &reply.body, payload).await {
        debug!("answer {id} not delivered: {e}");
    }
}

async fn handshake(
    rd: &mut Reader,
    writer: &Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    addr: SocketAddr,
    conn_id: u64,
    opts: &ServeOptions,
) -> Result<Peer> {
    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(rd, &opts.limits, pool::global()))
        .await
        .map_err(|_| PfsError::new(ErrorCode::TimedOut, "no handshake"))?;
    let result = match first {
        Ok(Some(f)) if f.header.kind == FrameKind::Request => wire::decode::<Hello>(&f.body, "handshake"),
        Ok(Some(_)) => Err(PfsError::new(ErrorCode::Protocol, "first frame is not a handshake request")),
        Ok(None) => return Err(PfsError::new(ErrorCode::Unavailable, "closed before the handshake")),
        Err(e) => Err(e),
    };
    let result = result.and_then(|hello| {
        if hello.version != PROTOCOL_VERSION {
            Err(PfsError::new(
                ErrorCode::Protocol,
                format!("{} speaks protocol version {}, this server {}", hello.name, hello.version, PROTOCOL_VERSION),
            ))
        } else if !opts.roles.contains(&hello.role) {
            Err(PfsError::new(
                ErrorCode::Protocol,
                format!("{} does not accept {:?} connections", opts.name, hello.role),
            ))
        } else {
            Ok(hello)
        }
    });
    let reply = Reply::from_result(
        result
            .as_ref()
            .map(|_| HelloReply { version: PROTOCOL_VERSION, server: opts.name.clone() })
            .map_err(Clone::clone),
    );
    send_reply(writer, 0, reply).await;
    let hello = result?;
    Ok(Peer { conn_id, addr, role: hello.role, name: hello.name, notifier: Notifier { writer: writer.clone() } })
}

/// Binds a listener, with an error naming the address.
pub async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    let l = TcpListener::bind(addr).await.map_err(|e| PfsError::io(format!("{what}: binding {addr}"), e))?;
    info!("{what} listening on {}", l.local_addr().map(|a| a.to_string()).unwrap_or_default());
    Ok(l)
}

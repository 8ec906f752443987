//! Multiplexed request/response connections over TCP: [`RpcClient`] (many requests in flight
//! on one connection, matched by request id) and [`serve`] (the accept loop and per-connection
//! dispatch of every pfs server).
//!
//! Every connection opens with a [`Hello`] handshake naming the protocol version and the
//! peer's role; unless `auth = "none"`, both sides prove they hold the role's key and every
//! later frame carries a MAC ([`crate::auth`]). A frame whose header is bad (wrong magic, a length over the limit) gets an
//! error answer and the connection is closed; a well-framed request whose body does not
//! decode gets an error answer and the connection stays usable. Either way the server logs it
//! and keeps serving everyone else. A connection idle past [`ServeOptions::idle_timeout`]
//! (no frame received, no request in flight) is closed, so abandoned peers do not hold
//! sockets and memory for ever.
//!
//! An [`RpcClient`] is typed by the request enum of the server's service(s), so only calls
//! that server answers can be sent on it, and each call's answer decodes as [`Call::Reply`].

use crate::auth::{self, Auth, FrameMac};
use crate::error::{Error, Result, WireCode, WireError};
use crate::pool::{self, PooledBuf};
use crate::wire::frame::{read_frame, write_frame, Frame, FrameError, FrameKind, Limits, DEFAULT_LIMITS};
use crate::wire::{self, Call, Hello, HelloProof, HelloReply, PeerRole, ResponseBody, PEER_NAME_MAX, PROTOCOL_VERSION};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Socket read buffer, bytes. Small frames (every metadata message) are parsed from it with
/// one `read` syscall for several frames; a payload larger than it is read straight into its
/// pooled buffer, bypassing this one (tokio's `BufReader` skips its buffer for large reads).
const READ_BUFFER: usize = 64 << 10;

type Reader = BufReader<OwnedReadHalf>;

/// Requests one server connection runs at once; further requests wait (bounded memory).
pub const MAX_INFLIGHT_PER_CONN: usize = 64;

/// The sending half of a connection and the MAC state of its direction: every frame is
/// written (and tagged, in sequence) under the one lock that holds it.
pub(crate) struct Sender {
    half: OwnedWriteHalf,
    mac: Option<FrameMac>,
}

impl Sender {
    async fn send(
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
fn frame_error(peer: &str, e: FrameError) -> Error {
    let peer = peer.to_string();
    match e {
        FrameError::Io(source) if source.kind() == std::io::ErrorKind::UnexpectedEof => Error::Closed { peer },
        FrameError::Io(source) => Error::Socket { peer, source: Arc::new(source) },
        FrameError::TooLarge { what, len, limit } => Error::TooLarge { peer, what, len, limit },
        other => Error::Protocol { peer, message: other.to_string() },
    }
}

// ---------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------

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
            let macs = client_handshake(&mut rd, &mut wr, &peer, opts).await?;
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

    /// The peer's name and address, as used in errors.
    pub fn peer(&self) -> &str {
        &self.inner.peer
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

fn decode_body<T: DeserializeOwned>(peer: &str, body: &[u8]) -> Result<T> {
    wire::decode(body)
        .map_err(|e| Error::Protocol { peer: peer.to_string(), message: format!("undecodable answer: {e}") })
}

fn remote(peer: &str, e: WireError) -> Error {
    Error::Remote { peer: peer.to_string(), code: e.code, message: e.message }
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

// ---------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------

/// A connected peer, as a handler sees it.
#[derive(Clone)]
pub struct Peer {
    /// Unique per accepted connection within this process.
    pub conn_id: u64,
    pub addr: SocketAddr,
    pub role: PeerRole,
    /// Shared: a `Peer` is cloned for every request.
    pub name: Arc<str>,
    /// Pushes one-way frames to this peer.
    pub notifier: Notifier,
}

/// Sends one-way [`FrameKind::Notify`] frames on a server-side connection.
#[derive(Clone)]
pub struct Notifier {
    writer: Arc<tokio::sync::Mutex<Sender>>,
    peer: Arc<str>,
}

impl Notifier {
    /// Sends `msg` to the peer.
    ///
    /// Errors: Socket or Closed naming the peer when the connection is gone.
    pub async fn notify<T: Serialize>(&self, msg: &T) -> Result<()> {
        let mut w = self.writer.lock().await;
        w.send(FrameKind::Notify, 0, &wire::encode(msg), &[]).await.map_err(|e| frame_error(&self.peer, e))
    }
}

/// A handler's answer: an encoded `ResponseBody` and an optional payload.
pub struct Reply {
    body: Vec<u8>,
    payload: Option<PooledBuf>,
}

impl Reply {
    /// The answer to call `C`: its reply, or the error with the error's code. The call type
    /// ties the answer's type to what the caller decodes: `Reply::to::<Mkdir, _>(result)`.
    pub fn to<C: Call, E: WireCode>(r: std::result::Result<C::Reply, E>) -> Reply {
        Reply::result(r)
    }

    fn result<T: Serialize, E: WireCode>(r: std::result::Result<T, E>) -> Reply {
        let body: ResponseBody<T> = r.map_err(|e| e.to_wire());
        Reply { body: wire::encode(&body), payload: None }
    }

    /// An error answer (to any call).
    pub fn error(e: &impl WireCode) -> Reply {
        let body: ResponseBody<()> = Err(e.to_wire());
        Reply { body: wire::encode(&body), payload: None }
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
    pub roles: Vec<PeerRole>,
    pub limits: Limits,
    /// A connection that completed its handshake is closed once no frame arrived from it for
    /// this long while none of its requests was in flight (a peer waiting for a slow answer
    /// is not idle); the peer sees the connection closed. `None`: never.
    pub idle_timeout: Option<Duration>,
    /// A new connection that has not completed its handshake within this long is closed.
    pub handshake_timeout: Duration,
    /// The server's key, or `auth = "none"`.
    pub auth: Auth,
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
    let writer = Arc::new(tokio::sync::Mutex::new(Sender { half: wr, mac: None }));
    let handshake = tokio::time::timeout(opts.handshake_timeout, handshake(&mut rd, &writer, addr, conn_id, &opts));
    let (peer, mut receive_mac) = match handshake.await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            warn!("{}: connection from {addr} refused: {e}", opts.name);
            return;
        }
        Err(_) => {
            let ms = opts.handshake_timeout.as_millis();
            warn!("{}: connection from {addr} closed: no complete handshake within {ms} ms", opts.name);
            return;
        }
    };
    debug!("{}: {:?} {} connected from {addr}", opts.name, peer.role, peer.name);
    let slots = Arc::new(Semaphore::new(MAX_INFLIGHT_PER_CONN));
    let activity = Arc::new(Activity::new());
    loop {
        let read = read_frame(&mut rd, &opts.limits, pool::global(), receive_mac.as_mut());
        let read = match opts.idle_timeout {
            None => Some(read.await),
            Some(idle) => read_unless_idle(read, idle, &activity).await,
        };
        let Some(read) = read else {
            debug!("{}: closing the idle connection of {} ({addr})", opts.name, peer.name);
            // FIN now: the peer's reader sees the end at once, even while a notifier clone
            // keeps the socket open a little longer. Not while a notification is being
            // written (to a peer that may never read it): never wait on the peer here.
            if let Ok(mut w) = writer.try_lock() {
                let _ = w.half.shutdown().await;
            }
            break;
        };
        activity.touch();
        let frame = match read {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(FrameError::Io(e)) => {
                debug!("{}: {addr} went away: {e}", opts.name);
                break;
            }
            Err(e) => {
                warn!("{}: bad frame from {} ({addr}), closing the connection: {e}", opts.name, peer.name);
                let reply = Reply::error(&e);
                let _ = writer.lock().await.send(FrameKind::Response, 0, &reply.body, &[]).await;
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
        match wire::decode::<H::Request>(&frame.body) {
            Ok(req) => {
                activity.begin();
                let mut handling = Box::pin(handler.clone().handle(peer.clone(), req, frame.payload));
                // Most requests (a granted token, a lookup, a cached read) finish at their first
                // poll: answer those here, without a task, its wake-up and a hop to another
                // worker. A request that waits (a queued token, a WAL commit, disk I/O) goes on
                // in its own task, so the connection keeps reading: the others are not held up.
                let first = std::future::poll_fn(|cx| Poll::Ready(handling.as_mut().poll(cx))).await;
                match first {
                    Poll::Ready(reply) => {
                        send_reply(&reply_to, id, reply).await;
                        activity.end();
                        drop(permit);
                    }
                    Poll::Pending => {
                        let activity = activity.clone();
                        tokio::spawn(async move {
                            let reply = handling.await;
                            send_reply(&reply_to, id, reply).await;
                            activity.end();
                            drop(permit);
                        });
                    }
                }
            }
            Err(e) => {
                warn!("{}: undecodable request from {} ({addr}): {e}", opts.name, peer.name);
                let e = Error::Protocol { peer: opts.name.clone(), message: format!("undecodable request: {e}") };
                send_reply(&reply_to, id, Reply::error(&e)).await;
            }
        }
    }
    handler.disconnected(peer).await;
}

/// When a server connection was last busy, for the idle timeout.
struct Activity {
    /// Requests of the connection being handled.
    in_flight: AtomicUsize,
    /// When the last frame arrived or the last request was answered.
    last: Mutex<Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity { in_flight: AtomicUsize::new(0), last: Mutex::new(Instant::now()) }
    }

    fn touch(&self) {
        *self.last.lock() = Instant::now();
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    fn end(&self) {
        // Touch first: whoever sees no request in flight also sees this answer's time.
        self.touch();
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// When the connection will have been idle for `idle`, as things stand: with a request in
    /// flight, not before `idle` after now (its answer will touch `last` again).
    fn idle_at(&self, idle: Duration) -> Instant {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            Instant::now() + idle
        } else {
            *self.last.lock() + idle
        }
    }

    fn is_idle(&self, idle: Duration) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && self.last.lock().elapsed() >= idle
    }
}

/// Waits for `read` (the next frame) unless the connection is idle for `idle` first: then
/// `None`. `read` is polled to its end or dropped with the connection, never restarted, so
/// a frame arriving slowly is not torn.
async fn read_unless_idle<F: Future>(read: F, idle: Duration, activity: &Activity) -> Option<F::Output> {
    tokio::pin!(read);
    loop {
        let at = activity.idle_at(idle);
        tokio::select! {
            biased;
            r = &mut read => return Some(r),
            () = tokio::time::sleep_until(at.into()) => {
                if activity.is_idle(idle) {
                    return None;
                }
            }
        }
    }
}

async fn send_reply(writer: &tokio::sync::Mutex<Sender>, id: u64, reply: Reply) {
    let payload: &[u8] = reply.payload.as_deref().unwrap_or(&[]);
    let mut w = writer.lock().await;
    if let Err(e) = w.send(FrameKind::Response, id, &reply.body, &[payload]).await {
        debug!("answer {id} not delivered: {e}");
    }
}

/// Reads and checks the peer's [`Hello`], answers it, checks the peer's proof when this
/// server authenticates, and returns the peer and the MAC state of the receiving direction
/// (the sending one is installed in `writer`). A refused handshake is answered with the
/// reason before the connection is closed.
async fn handshake(
    rd: &mut Reader,
    writer: &Arc<tokio::sync::Mutex<Sender>>,
    addr: SocketAddr,
    conn_id: u64,
    opts: &ServeOptions,
) -> Result<(Peer, Option<FrameMac>)> {
    let at = addr.to_string();
    // Refusals name this server: the peer reads them (the log line names the peer's address).
    let refuse = |message: String| Error::Protocol { peer: opts.name.clone(), message };
    let deny = |message: String| Error::Auth { peer: opts.name.clone(), message };
    let first = read_frame(rd, &opts.limits, pool::global(), None).await;
    let hello_bytes = match first {
        Ok(Some(f)) if f.header.kind == FrameKind::Request => Ok(f.body),
        Ok(Some(_)) => Err(refuse("the first frame is not a handshake request".into())),
        Ok(None) => return Err(Error::Closed { peer: at }),
        Err(e) => Err(frame_error(&at, e)),
    };
    let result = hello_bytes.and_then(|bytes| {
        let hello = wire::decode::<Hello>(&bytes).map_err(|e| refuse(format!("undecodable handshake: {e}")))?;
        if hello.name.len() > PEER_NAME_MAX {
            return Err(refuse(format!("a peer name of {} bytes (at most {PEER_NAME_MAX})", hello.name.len())));
        }
        if hello.version != PROTOCOL_VERSION {
            return Err(refuse(format!(
                "{} speaks protocol version {}, {} speaks {PROTOCOL_VERSION}",
                hello.name, hello.version, opts.name
            )));
        }
        if !opts.roles.contains(&hello.role) {
            return Err(deny(format!("{} does not accept {:?} connections", opts.name, hello.role)));
        }
        let key = match &opts.auth.credentials {
            None => None,
            Some(_) if !hello.auth => {
                return Err(deny(format!(
                    "{} requires the cluster's key and {} has none (auth = \"none\")",
                    opts.name, hello.name
                )))
            }
            Some(c) => Some(c.role_key(hello.role).expect("a server holds the cluster secret")),
        };
        Ok((hello, bytes, key))
    });
    let (hello, hello_bytes, key) = match result {
        Ok(r) => r,
        Err(e) => {
            send_reply(writer, 0, Reply::error(&e)).await;
            return Err(e);
        }
    };
    let mut reply = HelloReply {
        version: PROTOCOL_VERSION,
        server: opts.name.clone(),
        nonce: auth::nonce(),
        auth: key.is_some(),
        protect_data: opts.auth.protect_data,
        proof: None,
    };
    let keys = key.map(|key| {
        let th = auth::transcript(&hello_bytes, &wire::encode(&reply));
        let protect = hello.protect_data || opts.auth.protect_data;
        let keys = auth::connection_keys(&key, &hello.nonce, &reply.nonce, &th, protect, false);
        reply.proof = Some(keys.server_proof());
        keys
    });
    send_reply(writer, 0, Reply::result::<_, Error>(Ok(reply))).await;
    let notifier = Notifier { writer: writer.clone(), peer: format!("{} at {addr}", hello.name).into() };
    let peer = Peer { conn_id, addr, role: hello.role, name: hello.name.into(), notifier };
    let Some(keys) = keys else { return Ok((peer, None)) };
    let proof = match read_frame(rd, &opts.limits, pool::global(), None).await {
        Ok(Some(f)) if f.header.kind == FrameKind::Request => wire::decode::<HelloProof>(&f.body).ok(),
        Ok(None) => {
            return Err(deny(format!("{} left during the handshake (it holds another cluster key?)", peer.name)))
        }
        _ => None,
    };
    match proof {
        Some(p) if keys.client_proof_matches(&p.proof) => {}
        _ => {
            let e = deny(format!(
                "{} ({:?}) sent a wrong proof: another cluster key, or a replayed handshake",
                peer.name, peer.role
            ));
            send_reply(writer, 0, Reply::error(&e)).await;
            return Err(e);
        }
    }
    send_reply(writer, 0, Reply::result::<_, Error>(Ok(()))).await;
    // Every later frame is MAC'd.
    writer.lock().await.mac = Some(keys.send);
    Ok((peer, Some(keys.receive)))
}

/// The client's side of the handshake; returns the (send, receive) MAC states when the
/// connection is authenticated.
async fn client_handshake(
    rd: &mut Reader,
    wr: &mut OwnedWriteHalf,
    peer: &str,
    opts: &ConnectOptions,
) -> Result<Option<(FrameMac, FrameMac)>> {
    let deny = |message: String| Error::Auth { peer: peer.to_string(), message };
    let key = match &opts.auth.credentials {
        None => None,
        Some(c) => {
            Some(c.role_key(opts.role).ok_or_else(|| deny(format!("a client key cannot connect as {:?}", opts.role)))?)
        }
    };
    let hello = Hello {
        version: PROTOCOL_VERSION,
        role: opts.role,
        name: opts.name.clone(),
        nonce: auth::nonce(),
        auth: key.is_some(),
        protect_data: opts.auth.protect_data,
    };
    let hello_bytes = wire::encode(&hello);
    write_frame(wr, FrameKind::Request, 0, &hello_bytes, &[], None).await.map_err(|e| frame_error(peer, e))?;
    let frame = read_frame(rd, &DEFAULT_LIMITS, pool::global(), None)
        .await
        .map_err(|e| frame_error(peer, e))?
        .ok_or_else(|| Error::Closed { peer: peer.to_string() })?;
    let reply: ResponseBody<HelloReply> = decode_body(peer, &frame.body)?;
    let mut reply = reply.map_err(|e| remote(peer, e))?;
    if reply.version != PROTOCOL_VERSION {
        return Err(Error::Protocol {
            peer: peer.to_string(),
            message: format!("speaks protocol version {}, we speak {PROTOCOL_VERSION}", reply.version),
        });
    }
    let key = match (key, reply.auth) {
        (None, false) => return Ok(None),
        (None, true) => return Err(deny("the server authenticates and we hold no key".into())),
        (Some(_), false) => {
            return Err(deny("the server does not authenticate (auth = \"none\") and we require it".into()))
        }
        (Some(key), true) => key,
    };
    let Some(proof) = reply.proof.take() else {
        return Err(deny("the server sent no proof".into()));
    };
    let th = auth::transcript(&hello_bytes, &wire::encode(&reply));
    let protect = hello.protect_data || reply.protect_data;
    let keys = auth::connection_keys(&key, &hello.nonce, &reply.nonce, &th, protect, true);
    if !keys.server_proof_matches(&proof) {
        return Err(deny("it could not prove it holds this cluster's key (another cluster's secret?)".into()));
    }
    let body = wire::encode(&HelloProof { proof: keys.client_proof() });
    write_frame(wr, FrameKind::Request, 0, &body, &[], None).await.map_err(|e| frame_error(peer, e))?;
    let frame = read_frame(rd, &DEFAULT_LIMITS, pool::global(), None)
        .await
        .map_err(|e| frame_error(peer, e))?
        .ok_or_else(|| deny("the server closed the connection after our proof".into()))?;
    let answer: ResponseBody<()> = decode_body(peer, &frame.body)?;
    answer.map_err(|e| remote(peer, e))?;
    Ok(Some((keys.send, keys.receive)))
}

/// Binds a listener. Errors: Io naming the address.
pub async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    let l = TcpListener::bind(addr).await.map_err(|e| Error::io(format!("{what}: binding {addr}"), e))?;
    info!("{what} listening on {}", l.local_addr().map(|a| a.to_string()).unwrap_or_default());
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ServerId;
    use crate::wire::storage::{GetStatus, StorageRequest, StorageStatus};
    use tokio::io::AsyncWriteExt;

    /// Answers every call after `delay`.
    struct Slow {
        delay: Duration,
    }

    impl Handler for Slow {
        type Request = StorageRequest;

        async fn handle(self: Arc<Self>, _peer: Peer, _req: StorageRequest, _payload: PooledBuf) -> Reply {
            tokio::time::sleep(self.delay).await;
            let status =
                StorageStatus { id: ServerId(1), capacity_bytes: 0, free_bytes: 0, chunks: 0, engine: "slow".into() };
            Reply::to::<GetStatus, Error>(Ok(status))
        }
    }

    /// A server closing connections idle for `idle`, whose answers take `delay`.
    async fn slow_server(idle: Duration, delay: Duration, auth: Auth) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let opts = ServeOptions {
            name: "slow".into(),
            roles: vec![PeerRole::Client],
            limits: DEFAULT_LIMITS,
            idle_timeout: Some(idle),
            handshake_timeout: Duration::from_secs(10),
            auth,
        };
        tokio::spawn(serve(listener, Arc::new(Slow { delay }), opts));
        addr
    }

    /// A raw connection to `addr` that completed its handshake.
    async fn handshaken(addr: SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let hello = Hello {
            version: PROTOCOL_VERSION,
            role: PeerRole::Client,
            name: "raw".into(),
            nonce: [0; 32],
            auth: false,
            protect_data: false,
        };
        write_frame(&mut s, FrameKind::Request, 0, &wire::encode(&hello), &[], None).await.unwrap();
        let f = read_frame(&mut s, &DEFAULT_LIMITS, pool::global(), None).await.unwrap().unwrap();
        wire::decode::<ResponseBody<HelloReply>>(&f.body).unwrap().unwrap();
        s
    }

    /// The next frame, or `None` once the server closed (or reset) the connection. The
    /// deadline only turns a server that never closes into a failure instead of a hang.
    async fn next_frame(s: &mut TcpStream) -> Option<Frame> {
        tokio::time::timeout(Duration::from_secs(60), read_frame(s, &DEFAULT_LIMITS, pool::global(), None))
            .await
            .expect("the server closes idle connections")
            .unwrap_or(None)
    }

    #[tokio::test]
    async fn idle_connections_are_closed_busy_ones_are_not() {
        let idle = Duration::from_millis(100);
        let addr = slow_server(idle, idle * 5, Auth::none()).await;

        // Silent after its handshake: closed.
        let mut silent = handshaken(addr).await;
        assert!(next_frame(&mut silent).await.is_none());

        // Half a frame and then nothing: closed too (a stalled sender holds no connection).
        let mut stalled = handshaken(addr).await;
        let header =
            crate::wire::frame::FrameHeader { kind: FrameKind::Request, body_len: 10, payload_len: 0, request_id: 1 };
        stalled.write_all(&header.encode()[..7]).await.unwrap();
        assert!(next_frame(&mut stalled).await.is_none());

        // A request whose answer takes five idle timeouts: the connection waits for it, and
        // is closed only once it is idle after the answer.
        let mut busy = handshaken(addr).await;
        let body = wire::encode(&GetStatus.into_request());
        write_frame(&mut busy, FrameKind::Request, 7, &body, &[], None).await.unwrap();
        let answer = next_frame(&mut busy).await.expect("answered on the same connection");
        assert_eq!((answer.header.kind, answer.header.request_id), (FrameKind::Response, 7));
        let status: ResponseBody<StorageStatus> = wire::decode(&answer.body).unwrap();
        assert_eq!(status.unwrap().engine, "slow");
        assert!(next_frame(&mut busy).await.is_none());

        // The server goes on serving new connections.
        let opts = ConnectOptions {
            role: PeerRole::Client,
            name: "after".into(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            auth: Auth::none(),
        };
        let c: RpcClient<StorageRequest> = RpcClient::connect(addr, "slow", &opts, None).await.unwrap();
        assert_eq!(c.ask(GetStatus).await.unwrap().engine, "slow");
    }

    fn client_opts(auth: Auth) -> ConnectOptions {
        ConnectOptions {
            role: PeerRole::Client,
            name: "test".into(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            auth,
        }
    }

    #[tokio::test]
    async fn only_holders_of_the_cluster_key_connect_and_both_sides_must_authenticate() {
        let secret = auth::Key::random();
        let addr = slow_server(Duration::from_secs(60), Duration::ZERO, Auth::cluster(secret.clone())).await;
        let connect =
            |a: Auth| async move { RpcClient::<StorageRequest>::connect(addr, "slow", &client_opts(a), None).await };
        // The right key, and the client key derived from it: connected, requests answered.
        let c = connect(Auth::cluster(secret.clone())).await.unwrap();
        assert_eq!(c.ask(GetStatus).await.unwrap().engine, "slow");
        let client_key = auth::Credentials::Cluster(secret.clone()).role_key(PeerRole::Client).unwrap();
        let only_client = Auth { credentials: Some(auth::Credentials::Client(client_key)), protect_data: true };
        let c = connect(only_client).await.unwrap();
        assert_eq!(c.ask(GetStatus).await.unwrap().engine, "slow", "with payload MACs too");
        // Another cluster's key: the client finds the server cannot prove ours.
        let e = connect(Auth::cluster(auth::Key::random())).await.unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::AuthFailed, "{e}");
        // No key at all: the server refuses, saying why.
        let e = connect(Auth::none()).await.unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::AuthFailed, "{e}");
        assert!(e.to_string().contains("authentication failed"), "{e}");
        // A server without authentication is refused by a client that requires it.
        let open = slow_server(Duration::from_secs(60), Duration::ZERO, Auth::none()).await;
        let e = RpcClient::<StorageRequest>::connect(open, "slow", &client_opts(Auth::cluster(secret)), None)
            .await
            .unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::AuthFailed, "{e}");
    }
}

//! The server side: [`serve`] accepts connections and runs each one's requests through a
//! [`Handler`], at most [`super::MAX_INFLIGHT_PER_CONN`] at once.

use super::frame_error;
use super::handshake::server_side;
use super::{Sender, MAX_INFLIGHT_PER_CONN, READ_BUFFER};
use crate::auth::Auth;
use crate::error::{Error, Result, WireCode};
use crate::pool::{self, PooledBuf};
use crate::wire::frame::{read_frame, FrameError, FrameKind, Limits};
use crate::wire::{self, Call, PeerRole, ResponseBody};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

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
    pub(super) writer: Arc<tokio::sync::Mutex<Sender>>,
    pub(super) peer: Arc<str>,
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

    pub(super) fn result<T: Serialize, E: WireCode>(r: std::result::Result<T, E>) -> Reply {
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
    let handshake = tokio::time::timeout(opts.handshake_timeout, server_side(&mut rd, &writer, addr, conn_id, &opts));
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

pub(super) async fn send_reply(writer: &tokio::sync::Mutex<Sender>, id: u64, reply: Reply) {
    let payload: &[u8] = reply.payload.as_deref().unwrap_or(&[]);
    let mut w = writer.lock().await;
    if let Err(e) = w.send(FrameKind::Response, id, &reply.body, &[payload]).await {
        debug!("answer {id} not delivered: {e}");
    }
}

//! Supervised background workers: the hasher, the pfs-meta session, resync and scrub each run
//! as a task whose end (a panic, or a return from a loop meant to run forever) is noticed and
//! acted on, never lost: a detached task that panics would leave a server that keeps
//! accepting writes it can no longer hash, commit or repair.
//!
//! What happens when a worker ends is its [`OnEnd`]:
//!
//! * [`OnEnd::Restart`] for workers whose state lives elsewhere and that start from scratch
//!   anyway (the pfs-meta session registers again and re-sends the full listing; resync and
//!   scrub start their pass again). Restarted after a delay that doubles from
//!   [`RESTART_MIN`] to [`RESTART_MAX`] while it keeps ending, back to the minimum once it ran
//!   for [`RESTART_RESET`], with an error log line naming it each time.
//! * [`OnEnd::StopWrites`] for a worker a restart could not make whole (the hasher takes a
//!   chunk off its dirty set before hashing it: a panic in between loses that chunk's hash and
//!   commit). Every later write is refused (`WritesStopped`, naming the worker; see
//!   [`crate::fence`]), reads go on, and the log says so once.
//!
//! As in Garage's `background::worker`, the decision is kept apart from the tasks:
//! [`Restarts`] is the plain policy (what to do after an end, given when the worker started),
//! and [`spawn`] runs a worker under it.
//!
//! For tests there is one fail point per worker ([`fail_point`]): with the environment
//! variable `PFS_STORAGE_FAIL_POINT` set to a worker's name, that worker panics once, at a
//! point where it has just done its work (the hasher after a hash, the pfs-meta session after
//! registering).

use crate::store::ChunkStore;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tracing::{error, warn};

/// First delay before a worker that ended is restarted.
pub const RESTART_MIN: Duration = Duration::from_millis(100);
/// Longest delay between restarts of a worker that keeps ending.
pub const RESTART_MAX: Duration = Duration::from_secs(10);
/// A worker that ran this long before it ended is restarted after [`RESTART_MIN`] again.
pub const RESTART_RESET: Duration = Duration::from_secs(60);

/// What to do when a worker ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnEnd {
    /// Start it again (after a delay, see [`Restarts`]).
    Restart,
    /// Refuse every write from now on; the worker stays down.
    StopWrites,
}

/// How a worker ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// It panicked, with this message.
    Panicked(String),
    /// Its loop returned, which it never should.
    Returned,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Panicked(why) => write!(f, "panicked: {why}"),
            End::Returned => write!(f, "returned"),
        }
    }
}

/// What the supervisor does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Restart the worker after this delay; it is the `nth` restart (from 1).
    Restart { after: Duration, nth: u64 },
    /// Stop the server's writes, for this reason (names the worker and its end).
    StopWrites { why: String },
}

/// The restart policy of one worker: plain data, time passed in.
#[derive(Clone, Debug)]
pub struct Restarts {
    name: &'static str,
    on_end: OnEnd,
    delay: Duration,
    restarts: u64,
}

impl Restarts {
    /// The policy of worker `name`.
    pub fn new(name: &'static str, on_end: OnEnd) -> Restarts {
        Restarts { name, on_end, delay: RESTART_MIN, restarts: 0 }
    }

    /// The worker, started at `started`, ended as `end` at `now`: what to do.
    pub fn ended(&mut self, end: &End, started: Instant, now: Instant) -> Action {
        match self.on_end {
            OnEnd::StopWrites => Action::StopWrites { why: format!("background worker {} {end}", self.name) },
            OnEnd::Restart => {
                if now.saturating_duration_since(started) >= RESTART_RESET {
                    self.delay = RESTART_MIN;
                }
                let after = self.delay;
                self.delay = (self.delay * 2).min(RESTART_MAX);
                self.restarts += 1;
                Action::Restart { after, nth: self.restarts }
            }
        }
    }
}

/// Runs the worker `name` (each start a fresh future from `start`) as a task under the policy
/// `on_end`, forever: see the module doc. Log lines and stopped writes name `store`'s server.
/// Returns the supervising task (it ends only after [`OnEnd::StopWrites`]).
pub fn spawn<F, Fut>(
    store: &Arc<ChunkStore>,
    name: &'static str,
    on_end: OnEnd,
    mut start: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let store = store.clone();
    tokio::spawn(async move {
        let mut policy = Restarts::new(name, on_end);
        loop {
            let started = Instant::now();
            let end = match tokio::spawn(start()).await {
                Ok(()) => End::Returned,
                Err(e) if e.is_panic() => End::Panicked(panic_message(e.into_panic())),
                // Cancelled: only when the runtime shuts down.
                Err(_) => return,
            };
            match policy.ended(&end, started, Instant::now()) {
                Action::StopWrites { why } => {
                    error!("{}: {why}; writes are refused until this storage server is restarted", store.id());
                    store.fence().stop(why).await;
                    return;
                }
                Action::Restart { after, nth } => {
                    error!(
                        "{}: background worker {name} {end}; restarting it in {after:?} (restart {nth})",
                        store.id()
                    );
                    tokio::time::sleep(after).await;
                    warn!("{}: background worker {name} restarted", store.id());
                }
            }
        }
    })
}

/// The message of a panic's payload (a `&str` or `String`, as `panic!` makes them).
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_string(),
            Err(_) => "a panic without a message".to_string(),
        },
    }
}

/// The environment variable naming the worker whose [`fail_point`] panics (once).
pub const FAIL_POINT_VAR: &str = "PFS_STORAGE_FAIL_POINT";

/// Panics, once per process, if `PFS_STORAGE_FAIL_POINT` names `worker` (for tests of the
/// supervision; the variable is read once).
pub fn fail_point(worker: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    static FIRED: AtomicBool = AtomicBool::new(false);
    let armed = ARMED.get_or_init(|| std::env::var(FAIL_POINT_VAR).ok());
    if armed.as_deref() == Some(worker) && !FIRED.swap(true, Ordering::SeqCst) {
        panic!("fail point {worker} ({FAIL_POINT_VAR})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_and_reset_after_a_long_run() {
        let mut p = Restarts::new("scrub", OnEnd::Restart);
        let t0 = Instant::now();
        let end = End::Panicked("boom".into());
        let delays: Vec<Duration> = (0..10)
            .map(|_| match p.ended(&end, t0, t0) {
                Action::Restart { after, .. } => after,
                a => panic!("{a:?}"),
            })
            .collect();
        assert_eq!(delays[0], RESTART_MIN);
        assert_eq!(delays[1], RESTART_MIN * 2);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        assert_eq!(*delays.last().unwrap(), RESTART_MAX);
        // It ran long enough: back to the shortest delay, and the restarts are still counted.
        assert_eq!(p.ended(&End::Returned, t0, t0 + RESTART_RESET), Action::Restart { after: RESTART_MIN, nth: 11 });
    }

    #[test]
    fn a_worker_writes_need_stops_them_naming_itself() {
        let mut p = Restarts::new("hasher", OnEnd::StopWrites);
        let t0 = Instant::now();
        let a = p.ended(&End::Panicked("index out of bounds".into()), t0, t0);
        assert_eq!(a, Action::StopWrites { why: "background worker hasher panicked: index out of bounds".into() });
    }

    #[test]
    fn panic_messages_are_kept() {
        let caught = std::panic::catch_unwind(|| panic!("with {}", "a format")).unwrap_err();
        assert_eq!(panic_message(caught), "with a format");
        let caught = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_message(caught), "plain");
    }
}

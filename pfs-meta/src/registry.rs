//! The storage-server registry: who registered, from which connection, their capacity, and
//! when they were last heard from. Pure state; the caller passes the current time.
//!
//! A server is up while its registering connection is open, its last heartbeat is less than
//! `down_after` old, and the token manager has not declared it down (a fence it did not
//! confirm, a lease that ran out; see `tokens`). `up` is computed when asked, so no timer has
//! to run for a silent server to be seen as down.

use crate::error::{MetaError, Result};
use pfs_common::config::Config;
use pfs_common::wire::registry::ServerStatus;
use pfs_common::ServerId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::{info, warn};

#[derive(Clone, Debug)]
struct Entry {
    address: SocketAddr,
    capacity_bytes: u64,
    free_bytes: u64,
    /// Last register or heartbeat; `None` if never heard from.
    last_heard: Option<Instant>,
    /// The connection it registered on, while that connection is open.
    conn_id: Option<u64>,
    /// Why it was declared down, until it registers again.
    declared_down: Option<String>,
    /// Its full chunk listing since registering was received and answered (with the chunks
    /// it lost): only then does it serve reads, so only then is it up.
    listed: bool,
}

/// Every storage server known from the configuration or from registration.
#[derive(Debug)]
pub struct Registry {
    servers: BTreeMap<ServerId, Entry>,
    down_after: Duration,
    /// When this registry (this pfs-meta process) started: a server not heard from since
    /// is given the down timeout from then to register again.
    started: Instant,
    /// How long placement waits for known servers at the start of a term (see
    /// [`Registry::settling`]).
    settle_for: Duration,
}

/// Heartbeat periods a live storage server needs, at most, to notice a new leader and register
/// with it: its heartbeat to the old one fails, and it tries the next meta node.
pub const SETTLE_HEARTBEATS: u32 = 4;

impl Registry {
    /// A registry listing the configured servers (down until they register); a server silent
    /// for `config.timeouts.server_down_ms` is down.
    pub fn new(config: &Config) -> Registry {
        let servers = config
            .storage
            .iter()
            .map(|s| {
                (
                    s.id,
                    Entry {
                        address: s.address,
                        capacity_bytes: 0,
                        free_bytes: 0,
                        last_heard: None,
                        conn_id: None,
                        declared_down: None,
                        listed: false,
                    },
                )
            })
            .collect();
        let down_after = Duration::from_millis(config.timeouts.server_down_ms);
        let settle_for = (Duration::from_millis(config.timeouts.heartbeat_ms) * SETTLE_HEARTBEATS).min(down_after);
        Registry { servers, down_after, started: Instant::now(), settle_for }
    }

    /// Records a registration of server `id` on connection `conn_id`.
    ///
    /// Errors (Denied): `id` is not in the configuration, `address` is not the one the
    /// configuration gives it, or `id` is registered on another connection and alive (heard
    /// from within the down timeout, not declared down): nobody takes over a live server's
    /// id. A registration whose old connection went silent replaces it (a restarted server
    /// whose old connection is half-dead).
    pub fn register(
        &mut self,
        id: ServerId,
        address: SocketAddr,
        capacity_bytes: u64,
        free_bytes: u64,
        conn_id: u64,
        now: Instant,
    ) -> Result<()> {
        self.check_register(id, address, conn_id, now)?;
        let e = self.servers.get_mut(&id).expect("checked: a configured server");
        if let Some(old) = e.conn_id.filter(|old| *old != conn_id) {
            warn!("{id} registered again on a new connection; dropping its silent old connection {old}");
        }
        *e = Entry {
            address,
            capacity_bytes,
            free_bytes,
            last_heard: Some(now),
            conn_id: Some(conn_id),
            declared_down: None,
            listed: false,
        };
        info!("{id} registered from {address}: {capacity_bytes} bytes capacity, {free_bytes} free");
        Ok(())
    }

    /// Where storage server `id` serves, if known.
    pub fn address(&self, id: ServerId) -> Option<SocketAddr> {
        self.servers.get(&id).map(|e| e.address)
    }

    /// Whether [`Registry::register`] would accept this registration (see there).
    pub fn check_register(&self, id: ServerId, address: SocketAddr, conn_id: u64, now: Instant) -> Result<()> {
        let Some(e) = self.servers.get(&id) else {
            return Err(MetaError::Denied { what: format!("register {id}: no such storage server in the config") });
        };
        if e.address != address {
            return Err(MetaError::Denied {
                what: format!("register {id} at {address}: the config puts it at {}", e.address),
            });
        }
        let other_conn = e.conn_id.is_some_and(|old| old != conn_id);
        let alive = e.declared_down.is_none() && e.last_heard.is_some_and(|t| now.duration_since(t) < self.down_after);
        if other_conn && alive {
            return Err(MetaError::Denied {
                what: format!("register {id}: it is registered and alive on another connection"),
            });
        }
        Ok(())
    }

    /// Records a heartbeat. Errors (the server should register again): NotRegistered if `id`
    /// has not registered on this connection, DeclaredDown if it was declared down since.
    pub fn heartbeat(
        &mut self,
        id: ServerId,
        capacity_bytes: u64,
        free_bytes: u64,
        conn_id: u64,
        now: Instant,
    ) -> Result<()> {
        self.check_conn(id, conn_id)?;
        if let Some(reason) = self.servers.get(&id).and_then(|e| e.declared_down.clone()) {
            return Err(MetaError::DeclaredDown { server: id, reason });
        }
        if let Some(e) = self.servers.get_mut(&id) {
            e.capacity_bytes = capacity_bytes;
            e.free_bytes = free_bytes;
            e.last_heard = Some(now);
        }
        Ok(())
    }

    /// Errors with NotRegistered unless `id` is registered on connection `conn_id`.
    pub fn check_conn(&self, id: ServerId, conn_id: u64) -> Result<()> {
        match self.servers.get(&id) {
            Some(e) if e.conn_id == Some(conn_id) => Ok(()),
            _ => Err(MetaError::NotRegistered { server: id }),
        }
    }

    /// Declares `id` down (the token manager's verdict): not up, heartbeats refused, until it
    /// registers again.
    pub fn declare_down(&mut self, id: ServerId, reason: &str) {
        if let Some(e) = self.servers.get_mut(&id) {
            if e.declared_down.is_none() {
                warn!("{id} declared down: {reason}; it must register again");
                e.declared_down = Some(reason.to_string());
            }
        }
    }

    /// Marks the server registered on `conn_id` (if any) as disconnected, hence down; returns it.
    pub fn disconnected(&mut self, conn_id: u64) -> Option<ServerId> {
        let (id, e) = self.servers.iter_mut().find(|(_, e)| e.conn_id == Some(conn_id))?;
        e.conn_id = None;
        warn!("{id} disconnected; it is down until it registers again");
        Some(*id)
    }

    /// `id` sent its complete chunk listing (and was answered with its lost chunks).
    pub fn listed(&mut self, id: ServerId) {
        if let Some(e) = self.servers.get_mut(&id) {
            e.listed = true;
        }
    }

    fn is_up(&self, e: &Entry, now: Instant) -> bool {
        e.listed
            && e.conn_id.is_some()
            && e.declared_down.is_none()
            && e.last_heard.is_some_and(|t| now.saturating_duration_since(t) < self.down_after)
    }

    /// True if `id` is registered, has sent its chunk listing, is connected and was heard from
    /// within the down timeout.
    pub fn up(&self, id: ServerId, now: Instant) -> bool {
        self.servers.get(&id).is_some_and(|e| self.is_up(e, now))
    }

    /// True if `id` is not up and its lease is surely over: silent for the down timeout
    /// (which is its lease; it stops writing after half of it), counted from its last
    /// heartbeat, or from this registry's start for a server not heard from since.
    pub fn gone(&self, id: ServerId, now: Instant) -> bool {
        let silent_since = |e: &Entry| e.last_heard.unwrap_or(self.started);
        match self.servers.get(&id) {
            Some(e) => !self.is_up(e, now) && now.saturating_duration_since(silent_since(e)) >= self.down_after,
            None => now.saturating_duration_since(self.started) >= self.down_after,
        }
    }

    /// This node leads a new term: every registration was with the leader of an earlier one,
    /// so every server registers again (its old connection's heartbeats are refused as
    /// NotRegistered), and a server is given the down timeout from now before it counts as
    /// gone: its lease may have been renewed by the old leader until a moment ago.
    pub fn begin_term(&mut self, now: Instant) {
        for e in self.servers.values_mut() {
            e.last_heard = None;
            e.conn_id = None;
            e.declared_down = None;
            e.listed = false;
        }
        self.started = now;
    }

    /// While a server that has registered before (`known`: its boot id is in the log) is not
    /// up and not declared down, and this term (or process) began less than [`SETTLE_HEARTBEATS`]
    /// heartbeat periods (at most the down timeout) ago: how long until then. New files are placed only after it (see
    /// `MetaServer::placement_ready`), so that a file created in the first moments of a
    /// leadership term is not striped over fewer servers than are up, or refused with "no
    /// storage server is up". A server listed in the config that never registered is not
    /// waited for.
    pub fn settling(&self, now: Instant, known: impl Fn(ServerId) -> bool) -> Option<Duration> {
        let left = self.settle_for.checked_sub(now.saturating_duration_since(self.started))?;
        let waiting = self.servers.iter().any(|(id, e)| e.declared_down.is_none() && !self.is_up(e, now) && known(*id));
        (waiting && !left.is_zero()).then_some(left)
    }

    /// Every known server id.
    pub fn ids(&self) -> Vec<ServerId> {
        self.servers.keys().copied().collect()
    }

    /// Ids of the servers that are up, sorted.
    pub fn up_servers(&self, now: Instant) -> Vec<ServerId> {
        self.servers.iter().filter(|(_, e)| self.is_up(e, now)).map(|(id, _)| *id).collect()
    }

    /// Every configured or registered server; `chunks(id)` gives its reported chunk count,
    /// `syncing(id)` the chains it is resyncing in.
    pub fn list(
        &self,
        now: Instant,
        chunks: impl Fn(ServerId) -> u64,
        syncing: impl Fn(ServerId) -> u32,
    ) -> Vec<ServerStatus> {
        self.servers
            .iter()
            .map(|(id, e)| ServerStatus {
                id: *id,
                address: e.address,
                up: self.is_up(e, now),
                capacity_bytes: e.capacity_bytes,
                free_bytes: e.free_bytes,
                last_heartbeat_ms: e
                    .last_heard
                    .map(|t| now.saturating_duration_since(t).as_millis().min(u64::MAX as u128) as u64)
                    .unwrap_or(u64::MAX),
                chunks: chunks(*id),
                syncing_chains: syncing(*id),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn up_and_down() {
        let mut config = Config::local(Path::new("/tmp/x"), 7400, 3);
        config.storage[0].address = "127.0.0.1:9000".parse().unwrap();
        config.storage[2].id = ServerId(9);
        config.storage[2].address = "127.0.0.1:9009".parse().unwrap();
        let mut r = Registry::new(&config);
        let t0 = Instant::now();
        let down_after = Duration::from_millis(config.timeouts.server_down_ms);
        let list = r.list(t0, |_| 0, |_| 0);
        assert_eq!(list.len(), 3);
        assert!(list.iter().all(|s| !s.up && s.last_heartbeat_ms == u64::MAX));
        let addr: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        r.register(ServerId(1), addr, 100, 50, 7, t0).unwrap();
        r.register(ServerId(9), "127.0.0.1:9009".parse().unwrap(), 100, 50, 8, t0).unwrap();
        // Only configured ids, at their configured addresses, never over a live registration.
        let denied = |r: Result<()>| matches!(r, Err(MetaError::Denied { .. }));
        assert!(denied(r.register(ServerId(5), addr, 1, 1, 11, t0)));
        assert!(denied(r.register(ServerId(2), addr, 1, 1, 11, t0)));
        assert!(denied(r.register(ServerId(1), addr, 1, 1, 11, t0)), "storage-1 is alive on connection 7");
        assert!(r.up_servers(t0).is_empty(), "not up before their chunk listings");
        r.listed(ServerId(1));
        r.listed(ServerId(9));
        assert_eq!(r.up_servers(t0), vec![ServerId(1), ServerId(9)]);
        assert_eq!(r.list(t0, |_| 3, |_| 0).len(), 3);
        // Silence past the timeout: down, computed from the time passed in.
        assert!(!r.up(ServerId(1), t0 + down_after));
        r.heartbeat(ServerId(1), 100, 40, 7, t0 + down_after).unwrap();
        assert!(r.up(ServerId(1), t0 + down_after));
        assert!(matches!(r.heartbeat(ServerId(1), 1, 1, 99, t0), Err(MetaError::NotRegistered { .. })));
        assert!(matches!(r.heartbeat(ServerId(2), 1, 1, 7, t0), Err(MetaError::NotRegistered { .. })));
        // Declared down: not up, heartbeats refused until it registers again.
        r.declare_down(ServerId(1), "did not confirm a fence");
        assert!(!r.up(ServerId(1), t0 + down_after));
        assert!(matches!(r.heartbeat(ServerId(1), 1, 1, 7, t0 + down_after), Err(MetaError::DeclaredDown { .. })));
        r.register(ServerId(1), addr, 100, 50, 10, t0 + down_after).unwrap();
        r.listed(ServerId(1));
        assert!(r.up(ServerId(1), t0 + down_after));
        assert_eq!(r.disconnected(8), Some(ServerId(9)));
        assert!(!r.up(ServerId(9), t0));
        assert_eq!(r.disconnected(8), None);
        // Gone (its lease surely over) only after the down timeout, also when never heard of.
        assert!(!r.gone(ServerId(9), t0 + down_after / 2));
        assert!(r.gone(ServerId(9), t0 + down_after * 2));
        assert!(!r.gone(ServerId(2), r.started), "a configured server gets the timeout from the start");
        assert!(r.gone(ServerId(2), r.started + down_after));
        assert!(!r.gone(ServerId(1), t0 + down_after), "up");
    }

    #[test]
    fn a_new_term_forgets_registrations_and_gives_every_server_the_down_timeout_again() {
        let config = Config::local(Path::new("/tmp/x"), 7400, 2);
        let mut r = Registry::new(&config);
        let t0 = Instant::now();
        r.begin_term(t0);
        let down_after = Duration::from_millis(config.timeouts.server_down_ms);
        let settle = r.settle_for;
        assert!(settle <= down_after && settle > Duration::ZERO);
        let (a, b) = (config.storage[0].address, config.storage[1].address);
        let all = |_| true;
        r.register(ServerId(1), a, 100, 50, 7, t0).unwrap();
        r.listed(ServerId(1));
        assert_eq!(r.settling(t0, all), Some(settle), "storage-2 has not registered");
        assert_eq!(r.settling(t0, |id| id == ServerId(1)), None, "storage-2 never registered: not waited for");
        r.register(ServerId(2), b, 100, 50, 8, t0).unwrap();
        r.listed(ServerId(2));
        assert_eq!(r.settling(t0, all), None, "every server is up");
        // Long silent, then this node leads a new term: nobody is gone before the timeout
        // passed again, nobody is up before registering again with it.
        let later = t0 + down_after * 5;
        assert!(r.gone(ServerId(1), later));
        r.begin_term(later);
        assert!(!r.gone(ServerId(1), later + down_after / 2));
        assert!(r.gone(ServerId(1), later + down_after));
        assert!(r.up_servers(later).is_empty());
        assert!(matches!(r.heartbeat(ServerId(1), 1, 1, 7, later), Err(MetaError::NotRegistered { .. })));
        assert_eq!(r.settling(later + settle / 2, all), Some(settle - settle / 2));
        assert_eq!(r.settling(later + settle, all), None, "the wait is bounded");
        r.register(ServerId(1), a, 100, 50, 9, later).unwrap();
        r.listed(ServerId(1));
        r.declare_down(ServerId(2), "did not confirm a fence");
        assert_eq!(r.settling(later, all), None, "a server declared down is not waited for");
    }
}

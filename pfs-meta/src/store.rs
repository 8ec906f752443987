//! The replicated namespace: the [`Namespace`] state machine behind a Raft group, with every
//! mutation committed on a majority of the meta nodes' disks before it is acknowledged.
//!
//! The leader decides each operation on its *working* namespace: the committed namespace as
//! it was when this node's leadership began (when its first entry of the term was applied,
//! so every earlier entry is in it), plus every mutation this leader proposed since, in the
//! order it proposed them. A mutation is applied there and proposed under one lock, so the
//! log's order is the order of the decisions, and concurrent operations see each other
//! without waiting for a round of the log (group commit happens in the log). An answer waits
//! for the commit of what it reveals: its own mutation, or for a refusal or a read, the last
//! mutation of the inodes it looked at.
//!
//! Followers (and a leader whose leadership ended) have no working namespace: they answer
//! [`MetaError::NotLeader`] naming the leader they know.

use crate::error::{MetaError, Result};
use crate::namespace::{Applied, Context, Decision, Inode, Namespace, Op};
use crate::raft::log_store::LogStore;
use crate::raft::state_machine::{ApplyObserver, Committed, StateMachine};
use crate::raft::{Command, LogId, NodeId, Proposal, Raft, TypeConfig};
use futures_util::FutureExt;
use openraft::error::ClientWriteError;
use openraft::{BasicNode, RaftNetworkFactory, ServerState};
use parking_lot::{MappedMutexGuard, Mutex, MutexGuard};
use pfs_common::layout::LayoutPolicy;
use pfs_common::rpc::{ConnectOptions, RpcClient};
use pfs_common::wire::raft::{GetStatus, NodeStatus};
use pfs_common::wire::MetaRequest;
use pfs_common::{FileId, ServerId};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tracing::info;

/// Raft timing of the metadata group, ms: a leader sends heartbeats this often...
pub const HEARTBEAT_MS: u64 = 100;
/// ...and a follower that hears none for a random time in this range stands for election.
/// The leader lease (a follower refuses to vote while it has heard from its leader within
/// the maximum) is the maximum.
pub const ELECTION_MIN_MS: u64 = 400;
pub const ELECTION_MAX_MS: u64 = 800;
/// How long an operation that reaches a node without a leader waits for one to be elected
/// before it is answered NotLeader, ms (an election takes one to two election timeouts).
pub const LEADER_WAIT_MS: u64 = 3 * ELECTION_MAX_MS;
/// Log entries kept after a snapshot, for followers slightly behind.
pub const LOG_KEPT_AFTER_SNAPSHOT: u64 = 1000;

/// The leader's namespace: the committed one plus the mutations proposed in its term.
struct Working {
    term: u64,
    namespace: Namespace,
    /// Sequence number of the last mutation proposed in this term (0: none yet).
    last_seq: u64,
    /// Sequence number of the last mutation that touched each inode ([`Applied::touched`]),
    /// so a read of inodes waits for the changes it could reveal, not for every change in
    /// flight. An inode missing here has no change that is not committed. Entries at or
    /// below the committed sequence number mean nothing more and are pruned now and then.
    touched: HashMap<FileId, u64>,
    /// `touched` is pruned when it grows to this many entries.
    prune_at: usize,
}

/// `touched` is pruned at no fewer entries than this (pruning is a scan of the table).
const PRUNE_MIN: usize = 4096;

/// The part of the store the state machine tells of applies.
struct Leadership {
    me: NodeId,
    /// This process's run (see [`Proposal::run`]).
    run: u64,
    working: Mutex<Option<Working>>,
    /// The leadership term whose working namespace is built once the entry at this index
    /// (the end of the log when the leadership began) is applied. Lock order: taken under
    /// the committed state's lock.
    build: Mutex<Option<(u64, u64)>>,
    /// The last proposal of this run committed: (term, seq); seq 0 when the term's working
    /// namespace was just built. Moves only forward; a newer term with seq 0 tells waiters of
    /// older terms that their leadership ended.
    committed: watch::Sender<(u64, u64)>,
    /// The leader lease: (term, until). While it holds, no other node can have been elected
    /// (a follower refuses to vote for [`ELECTION_MAX_MS`] after it heard from its leader,
    /// openraft's leader lease, and this lease is counted from before the heartbeat round
    /// that a quorum acknowledged, for [`ELECTION_MIN_MS`] only). Renewed by
    /// [`keep_lease`].
    lease: watch::Sender<Option<(u64, std::time::Instant)>>,
    /// The group has one voter, this node: its lease always holds.
    alone: std::sync::atomic::AtomicBool,
    /// The term this node leads with a working namespace (`None`: it does not).
    terms: watch::Sender<Option<u64>>,
}

impl Leadership {
    /// Whether the leader lease of `term` holds now.
    fn holds_lease_of(&self, term: u64) -> bool {
        if self.alone.load(std::sync::atomic::Ordering::Relaxed) {
            return true;
        }
        self.lease.borrow().is_some_and(|(t, until)| t == term && std::time::Instant::now() < until)
    }

    fn advance(&self, term: u64, seq: u64) {
        self.committed.send_if_modified(|c| {
            if (term, seq) > *c {
                *c = (term, seq);
                true
            } else {
                false
            }
        });
    }

    /// Drops the working namespace of `term` (or older): its leadership ended, or one of its
    /// proposals was refused, so it may hold mutations that will never be committed.
    fn end_term(&self, term: u64) {
        let mut w = self.working.lock();
        if w.as_ref().is_some_and(|w| w.term <= term) {
            *w = None;
            self.terms.send_replace(None);
        }
        drop(w);
        self.advance(term + 1, 0);
    }

    /// Starts the working namespace of leadership `term` from `committed`.
    fn build_working(&self, committed: &Committed, term: u64) {
        *self.working.lock() = Some(Working {
            term,
            namespace: committed.namespace.clone(),
            last_seq: 0,
            touched: HashMap::new(),
            prune_at: PRUNE_MIN,
        });
        self.terms.send_replace(Some(term));
        self.advance(term, 0);
        info!(
            "meta-{}: leader in term {term}, namespace ready at entry {}",
            self.me,
            committed.last_applied.map(|l| l.index).unwrap_or(0)
        );
    }

    /// This node leads `term` and its log ended at `log_end` when it began: the working
    /// namespace is built once everything up to there is applied (at once if it is).
    fn lead(&self, committed: &Mutex<Committed>, term: u64, log_end: u64) {
        let c = committed.lock();
        let mut build = self.build.lock();
        if build.is_some_and(|(t, _)| t >= term) || self.working.lock().as_ref().is_some_and(|w| w.term >= term) {
            return;
        }
        if c.last_applied.is_some_and(|l| l.index >= log_end) {
            *build = None;
            self.build_working(&c, term);
        } else {
            *build = Some((term, log_end));
        }
    }
}

impl ApplyObserver for Leadership {
    fn applied(&self, committed: &Committed, log_id: &LogId, proposal: Option<Proposal>) {
        if let Some(p) = proposal.filter(|p| p.run == self.run) {
            self.advance(p.term, p.seq);
        }
        let mut build = self.build.lock();
        if let Some((term, log_end)) = *build {
            if log_id.index >= log_end {
                *build = None;
                self.build_working(committed, term);
            }
        }
    }

    fn installed(&self, _committed: &Committed) {
        // Only a follower is sent a snapshot; a working namespace it had is of an older term.
        self.build.lock().take();
        let t = self.working.lock().as_ref().map(|w| w.term);
        if let Some(t) = t {
            self.end_term(t);
        }
    }
}

/// Wall-clock time, ns since the Unix epoch (0 before it: a clock that far off is wrong).
pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Where a meta node keeps its log and who its peers are.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// This node's id in the group.
    pub id: NodeId,
    /// Its log, state and snapshots.
    pub dir: PathBuf,
    /// Every voter of the group the configuration names (id and address), this node too.
    pub members: BTreeMap<NodeId, BasicNode>,
    /// A snapshot is taken (and the log purged) after this many entries.
    pub snapshot_entries: u64,
    /// The layout policy of a new namespace's root.
    pub root_policy: LayoutPolicy,
    /// How to ask the other members for their status when this node starts with an empty
    /// directory (`None`: do not ask, as in a group of one).
    pub probe: Option<ConnectOptions>,
}

/// What the other members said of the group when this node started with an empty
/// directory: the highest entry any of them had applied, if any had a log.
async fn probe_group(me: NodeId, members: &BTreeMap<NodeId, BasicNode>, connect: &ConnectOptions) -> Option<u64> {
    let mut found = None;
    for (id, node) in members.iter().filter(|(id, _)| **id != me) {
        let Ok(addr) = node.addr.parse() else { continue };
        let asked = async {
            let c: RpcClient<MetaRequest> = RpcClient::connect(addr, &format!("meta-{id}"), connect, None).await?;
            c.ask(GetStatus).await
        };
        match asked.await {
            Ok(st) if st.last_log > 0 || st.applied > 0 => {
                info!("meta-{me}: meta-{id} has the group's log up to entry {} (applied {})", st.last_log, st.applied);
                found = Some(found.unwrap_or(0).max(st.applied));
            }
            Ok(_) => {}
            Err(e) => info!("meta-{me}: meta-{id} did not answer ({e}); it may not be up yet"),
        }
    }
    found
}

/// The namespace plus its replicated log.
pub struct NamespaceStore {
    me: NodeId,
    raft: Raft,
    leadership: Arc<Leadership>,
    committed: Arc<Mutex<Committed>>,
    members: BTreeMap<NodeId, BasicNode>,
    /// Nonzero while this node, started empty in an existing group, has not yet applied this
    /// entry: it does not vote until then.
    catch_up_to: Arc<std::sync::atomic::AtomicU64>,
}

enum Wait {
    /// The state seen is that after this proposal: wait for its commit.
    Seen(Proposal),
    /// The proposal made: wait for openraft's answer.
    Commit(Proposal, tokio::sync::oneshot::Receiver<openraft::raft::ClientWriteResult<TypeConfig>>),
}

impl NamespaceStore {
    /// Opens (recovering) the log and snapshot in `opts.dir` and starts the Raft node, which
    /// reaches its peers through `network`. A node whose directory is new and whose id is the
    /// lowest of `opts.members` founds the group with that membership; the others wait to be
    /// told of it by the leader.
    ///
    /// Errors: Corrupt naming the file and byte offset of a damaged log or snapshot; Io; Raft
    /// if openraft refuses the configuration.
    pub async fn open<N>(opts: NodeOptions, network: N) -> Result<NamespaceStore>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
        let log = LogStore::open(&opts.dir)?;
        let leadership = Arc::new(Leadership {
            me: opts.id,
            run: rand::random(),
            working: Mutex::new(None),
            build: Mutex::new(None),
            committed: watch::channel((0, 0)).0,
            lease: watch::channel(None).0,
            alone: std::sync::atomic::AtomicBool::new(false),
            terms: watch::channel(None).0,
        });
        let observer: Arc<dyn ApplyObserver> = leadership.clone();
        let sm = StateMachine::open(&opts.dir, opts.root_policy, Some(observer))?;
        let committed = sm.committed();
        let config = openraft::Config {
            cluster_name: "pfs-meta".into(),
            heartbeat_interval: HEARTBEAT_MS,
            election_timeout_min: ELECTION_MIN_MS,
            election_timeout_max: ELECTION_MAX_MS,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(opts.snapshot_entries.max(1)),
            max_in_snapshot_log_to_keep: LOG_KEPT_AFTER_SNAPSHOT,
            ..Default::default()
        }
        .validate()
        .map_err(|e| MetaError::Invalid(format!("Raft configuration: {e}")))?;
        let raft = Raft::new(opts.id, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| MetaError::io("starting the Raft node", std::io::Error::other(e.to_string())))?;
        let founder = opts.members.keys().next() == Some(&opts.id);
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| MetaError::io("starting the Raft node", std::io::Error::other(e.to_string())))?;
        // A node with an empty directory in a group that exists (it was wiped, or is new)
        // must not found another group, nor vote before it has caught up: its vote and the
        // entries it had acknowledged are gone, and a vote from it could elect a leader
        // missing committed entries.
        let existing = match (&opts.probe, initialized) {
            (Some(connect), false) => probe_group(opts.id, &opts.members, connect).await,
            _ => None,
        };
        let catch_up_to = Arc::new(std::sync::atomic::AtomicU64::new(0));
        if let Some(applied) = existing {
            info!("meta-{}: started empty in an existing group; catching up to entry {applied} before voting", opts.id);
            catch_up_to.store(applied.max(1), std::sync::atomic::Ordering::Relaxed);
        } else if !initialized && founder {
            info!("meta-{}: founding the metadata group {:?}", opts.id, opts.members.keys().collect::<Vec<_>>());
            if let Err(e) = raft.initialize(opts.members.clone()).await {
                // NotAllowed: another start got there first; the log says who leads.
                info!("meta-{}: not founding the group: {e}", opts.id);
            }
        }
        tokio::spawn(follow_leadership(raft.metrics(), leadership.clone(), committed.clone()));
        tokio::spawn(keep_lease(raft.clone(), leadership.clone()));
        Ok(NamespaceStore { me: opts.id, raft, leadership, committed, members: opts.members, catch_up_to })
    }

    /// Whether this node may vote: not while it catches up after starting with an empty
    /// directory in an existing group (see [`NamespaceStore::open`]).
    pub fn may_vote(&self) -> bool {
        let target = self.catch_up_to.load(std::sync::atomic::Ordering::Relaxed);
        if target == 0 {
            return true;
        }
        let caught_up = self.applied().is_some_and(|l| l.index >= target);
        if caught_up {
            self.catch_up_to.store(0, std::sync::atomic::Ordering::Relaxed);
            info!("meta-{}: caught up to entry {target}; voting again", self.me);
        }
        caught_up
    }

    /// The term this node leads with a working namespace, watched (`None` while it does
    /// not lead).
    pub fn terms(&self) -> watch::Receiver<Option<u64>> {
        self.leadership.terms.subscribe()
    }

    /// The term this node leads now, if it does. Errors: NotLeader.
    pub fn leading_term(&self) -> Result<u64> {
        self.working().map(|w| w.term)
    }

    /// The Raft handle (membership changes, metrics, the RPC server side).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// The NotLeader error of this node, naming the leader it knows.
    pub fn not_leader(&self, maybe_done: bool) -> MetaError {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader.filter(|l| *l != self.me).map(|l| {
            let address = m
                .membership_config
                .membership()
                .get_node(&l)
                .or_else(|| self.members.get(&l))
                .map(|n| n.addr.clone())
                .unwrap_or_default();
            (l, address)
        });
        MetaError::NotLeader { node: self.me, leader, maybe_done }
    }

    /// Waits (up to [`LEADER_WAIT_MS`]) until this node leads with its working namespace
    /// ready and its lease holding, unless another node is known to lead. Errors: NotLeader.
    pub async fn ready(&self) -> Result<()> {
        if self.leads() {
            return Ok(());
        }
        let mut metrics = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(LEADER_WAIT_MS);
        let mut committed = self.leadership.committed.subscribe();
        let mut lease = self.leadership.lease.subscribe();
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.current_leader.is_some_and(|l| l != self.me) {
                    return Err(self.not_leader(false));
                }
            }
            if self.leads() {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Err(self.not_leader(false)),
                changed = metrics.changed() => if changed.is_err() { return Err(self.not_leader(false)) },
                _ = committed.changed() => {}
                _ = lease.changed() => {}
            }
        }
    }

    /// Whether this node leads with a working namespace of its current term, and its leader
    /// lease holds.
    fn leads(&self) -> bool {
        let (state, term) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state, m.current_term)
        };
        state == ServerState::Leader
            && self.leadership.working.lock().as_ref().is_some_and(|w| w.term == term)
            && self.holds_lease_of(term)
    }

    /// Whether this node's leader lease holds: no other node can lead now. A leader grants
    /// tokens, renews storage leases and answers reads only while it does.
    pub fn holds_lease(&self) -> bool {
        let term = self.raft.metrics().borrow().current_term;
        self.holds_lease_of(term)
    }

    /// [`NamespaceStore::holds_lease`] of a given term, callable from outside the store
    /// (the token service asks it before acting on a deadline or fencing).
    pub fn lease_check(&self) -> crate::token_service::LeaseCheck {
        let leadership = self.leadership.clone();
        Box::new(move |term| leadership.holds_lease_of(term))
    }

    fn holds_lease_of(&self, term: u64) -> bool {
        self.leadership.holds_lease_of(term)
    }

    /// Resolves once the leader lease of `term` no longer holds.
    async fn lease_lost(&self, term: u64) {
        let mut lease = self.leadership.lease.subscribe();
        loop {
            if self.leadership.alone.load(std::sync::atomic::Ordering::Relaxed) {
                return std::future::pending().await;
            }
            let until = match *lease.borrow_and_update() {
                Some((t, until)) if t == term && std::time::Instant::now() < until => until,
                _ => return,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = lease.changed() => {}
            }
        }
    }

    /// The working namespace, if this node leads. Errors: NotLeader.
    fn working(&self) -> Result<MappedMutexGuard<'_, Working>> {
        let guard = self.leadership.working.lock();
        MutexGuard::try_map(guard, |w| w.as_mut()).map_err(|_| self.not_leader(false))
    }

    /// Runs a namespace operation: decides it, proposes and applies a mutation, and answers
    /// once the answer is committed. An operation that changes nothing, or is refused, answers
    /// only after the state it saw is committed, so no one sees a change that a failover could
    /// still undo.
    /// `up_servers` are the storage servers new files may be striped over; `is_open` says
    /// whether a session has a file open (it is called under the store's lock, so whatever
    /// lock it takes must never be held while calling into the store).
    ///
    /// Errors: the namespace's errors (see [`Namespace::prepare`]); NotLeader (with
    /// `maybe_done` if the mutation was proposed and its fate is unknown here).
    pub async fn execute(
        &self,
        op: &Op,
        up_servers: &[ServerId],
        is_open: &(dyn Fn(FileId) -> bool + Sync),
    ) -> Result<Applied> {
        self.execute_with(|_| Ok(op.clone()), up_servers, is_open).await
    }

    /// [`NamespaceStore::execute`] of the operation `make` builds from the namespace under
    /// the store's lock (for an operation naming a directory by id: its path cannot change
    /// between the lookup and the change).
    pub async fn execute_with(
        &self,
        make: impl FnOnce(&Namespace) -> Result<Op>,
        up_servers: &[ServerId],
        is_open: &(dyn Fn(FileId) -> bool + Sync),
    ) -> Result<Applied> {
        self.execute_then(make, up_servers, is_open, |_, _| ()).await
    }

    /// [`NamespaceStore::execute_with`], calling `then` with the inode the operation answers
    /// (if it succeeds) still under the store's lock, in the same step as the change: no
    /// other change comes between them (a create that also opens the file); its flag is
    /// true for a request answered from the log as done before ([`Decision::Replayed`]). The
    /// same lock rule as for `is_open` holds for `then`.
    pub async fn execute_then(
        &self,
        make: impl FnOnce(&Namespace) -> Result<Op>,
        up_servers: &[ServerId],
        is_open: &(dyn Fn(FileId) -> bool + Sync),
        then: impl FnOnce(Option<&Inode>, bool),
    ) -> Result<Applied> {
        self.ready().await?;
        let (decided, wait) = {
            let mut w = self.working()?;
            let seen = Proposal { term: w.term, run: self.leadership.run, seq: w.last_seq };
            let ctx = Context { now_ns: now_ns(), up_servers, is_open };
            let decision = make(&w.namespace).and_then(|op| w.namespace.prepare(&op, &ctx));
            match decision {
                // The refusal reveals the state it was judged on (an entry that exists, or
                // not): it waits for that state like an unchanged answer (below) does.
                Err(e) => (Err(e), Wait::Seen(seen)),
                Ok(Decision::Unchanged(inode)) => {
                    then(inode.as_ref(), false);
                    (Ok(Applied { inode, ..Applied::default() }), Wait::Seen(seen))
                }
                // The change it repeats may not be committed yet: it waits like a read.
                Ok(Decision::Replayed(inode)) => {
                    then(inode.as_ref(), true);
                    (Ok(Applied { inode, ..Applied::default() }), Wait::Seen(seen))
                }
                Ok(Decision::Mutate(mutation)) => {
                    // Applied before it is proposed (the lock orders both): a mutation that
                    // does not apply is never proposed.
                    let applied = w.namespace.apply(&mutation)?;
                    let proposal = Proposal { term: w.term, run: self.leadership.run, seq: w.last_seq + 1 };
                    // openraft queues the proposal on an unbounded channel: the future is
                    // ready at once, and the queue's order is the log's.
                    let sent = self.raft.client_write_ff(Command::Namespace { proposal, mutation }).now_or_never();
                    let Some(Ok(rx)) = sent else {
                        let term = w.term;
                        drop(w);
                        self.leadership.end_term(term);
                        return Err(self.not_leader(false));
                    };
                    w.last_seq = proposal.seq;
                    note_touched(&mut w, &applied.touched, proposal.seq, &self.leadership);
                    then(applied.inode.as_ref(), false);
                    (Ok(applied), Wait::Commit(proposal, rx))
                }
            }
        };
        match wait {
            Wait::Seen(p) => self.wait_committed(p).await?,
            Wait::Commit(p, rx) => match tokio::select! {
                r = rx => r,
                // A leader whose lease lapsed cannot know whether another one is elected: it
                // stops waiting (the entry may still be committed, by it or the next leader).
                _ = self.lease_lost(p.term) => return Err(self.not_leader(true)),
            } {
                Ok(Ok(_)) => {}
                Ok(Err(ClientWriteError::ForwardToLeader(_))) => {
                    // Refused before it was appended: not done, and the working namespace
                    // holds a mutation that will never be committed.
                    self.leadership.end_term(p.term);
                    return Err(self.not_leader(false));
                }
                Ok(Err(e)) => return Err(MetaError::Invalid(format!("the metadata log refused a mutation: {e}"))),
                Err(_) => {
                    // openraft dropped the answer: the leadership ended with the entry
                    // appended, and the next leader may or may not commit it.
                    self.leadership.end_term(p.term);
                    return Err(self.not_leader(true));
                }
            },
        }
        decided
    }

    /// Runs `f` on the working namespace and returns its result with the proposal it saw;
    /// pass it to [`NamespaceStore::wait_committed`] before acting on the result outside this
    /// process. Errors: NotLeader.
    pub fn read<R>(&self, f: impl FnOnce(&Namespace) -> R) -> Result<(R, Proposal)> {
        let w = self.working()?;
        Ok((f(&w.namespace), Proposal { term: w.term, run: self.leadership.run, seq: w.last_seq }))
    }

    /// Runs `f` on the working namespace; `f` adds to the list the ids of the inodes its
    /// result depends on (see [`Namespace::lookup_traced`]). Returns the result with the
    /// proposal of the last change of those inodes: pass it to
    /// [`NamespaceStore::wait_committed`] before acting on the result outside this process.
    /// Unlike [`NamespaceStore::read`], this does not wait for changes of other inodes still
    /// being committed. Only for results that depend on inodes alone (not the chunk map,
    /// chains or orphan set). Errors: NotLeader.
    pub fn read_inodes<R>(&self, f: impl FnOnce(&Namespace, &mut Vec<FileId>) -> R) -> Result<(R, Proposal)> {
        let w = self.working()?;
        let mut read = Vec::new();
        let r = f(&w.namespace, &mut read);
        let seq = read.iter().filter_map(|id| w.touched.get(id)).copied().max().unwrap_or(0);
        Ok((r, Proposal { term: w.term, run: self.leadership.run, seq }))
    }

    /// [`NamespaceStore::read`] once this node leads (waiting as an operation does).
    pub async fn read_ready<R>(&self, f: impl FnOnce(&Namespace) -> R) -> Result<(R, Proposal)> {
        self.ready().await?;
        self.read(f)
    }

    /// [`NamespaceStore::read_inodes`] once this node leads (waiting as an operation does).
    pub async fn read_inodes_ready<R>(
        &self,
        f: impl FnOnce(&Namespace, &mut Vec<FileId>) -> R,
    ) -> Result<(R, Proposal)> {
        self.ready().await?;
        self.read_inodes(f)
    }

    /// Waits until proposal `p` of this node is committed. Errors: NotLeader if its term's
    /// leadership ended first (the state read may never be committed).
    pub async fn wait_committed(&self, p: Proposal) -> Result<()> {
        let mut rx = self.leadership.committed.subscribe();
        let seen = *rx.wait_for(|c| c.0 > p.term || *c >= (p.term, p.seq)).await.map_err(|_| self.not_leader(false))?;
        if seen.0 == p.term {
            Ok(())
        } else {
            Err(self.not_leader(false))
        }
    }

    /// Returns when the Raft node has stopped, with the reason.
    ///
    /// Errors: Io naming openraft's fatal error (a failed log write, a storage error).
    pub async fn run_leadership(&self) -> Result<()> {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(e) = metrics.borrow_and_update().running_state.clone().err() {
                return Err(MetaError::io("the Raft node of pfs-meta", std::io::Error::other(e.to_string())));
            }
            if metrics.changed().await.is_err() {
                return Err(MetaError::io("the Raft node of pfs-meta", std::io::Error::other("stopped")));
            }
        }
    }

    /// Adds node `id` at `address`: as a learner (it catches up from the log or a snapshot;
    /// this waits for that), then as a voter. Errors: NotLeader; Invalid naming openraft's
    /// refusal.
    pub async fn add_member(&self, id: NodeId, address: String) -> Result<NodeStatus> {
        self.ready().await?;
        let node = BasicNode::new(address);
        self.raft.add_learner(id, node, true).await.map_err(|e| self.membership_error(e))?;
        let voters: std::collections::BTreeSet<NodeId> = [id].into_iter().collect();
        self.raft
            .change_membership(openraft::ChangeMembers::AddVoterIds(voters), false)
            .await
            .map_err(|e| self.membership_error(e))?;
        info!("meta-{}: meta-{id} joined the group as a voter", self.me);
        Ok(self.status())
    }

    /// Removes node `id` from the group. Errors: NotLeader; Invalid (the last voter, or
    /// openraft's refusal).
    pub async fn remove_member(&self, id: NodeId) -> Result<NodeStatus> {
        self.ready().await?;
        let voters: std::collections::BTreeSet<NodeId> =
            self.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
        if voters.len() == 1 && voters.contains(&id) {
            return Err(MetaError::Invalid(format!("meta-{id} is the only voter of the group; it cannot leave")));
        }
        let gone: std::collections::BTreeSet<NodeId> = [id].into_iter().collect();
        self.raft
            .change_membership(openraft::ChangeMembers::RemoveVoters(gone.clone()), false)
            .await
            .map_err(|e| self.membership_error(e))?;
        self.raft
            .change_membership(openraft::ChangeMembers::RemoveNodes(gone), false)
            .await
            .map_err(|e| self.membership_error(e))?;
        info!("meta-{}: meta-{id} left the group", self.me);
        Ok(self.status())
    }

    fn membership_error(
        &self,
        e: openraft::error::RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
    ) -> MetaError {
        match e.api_error() {
            Some(ClientWriteError::ForwardToLeader(_)) => self.not_leader(false),
            _ => MetaError::Invalid(format!("membership change refused: {e}")),
        }
    }

    /// What this node reports of itself (`pfs meta status`).
    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        let state = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        NodeStatus {
            id: self.me,
            state: state.into(),
            term: m.current_term,
            applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_log: m.last_log_index.unwrap_or(0),
            leader: m.current_leader,
            members: membership.nodes().map(|(id, n)| (*id, n.addr.clone(), voters.contains(id))).collect(),
        }
    }

    /// A copy of the committed namespace (for tests and status).
    pub fn committed(&self) -> Namespace {
        self.committed.lock().namespace.clone()
    }

    /// The last entry applied to the committed namespace.
    pub fn applied(&self) -> Option<LogId> {
        self.committed.lock().last_applied
    }

    /// Stops the Raft node (its log writer finishes what is queued).
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// Records that proposal `seq` touched `ids`; now and then forgets the entries that are
/// committed (amortised: the table is scanned when it has doubled since the last scan).
fn note_touched(w: &mut Working, ids: &[FileId], seq: u64, leadership: &Leadership) {
    for id in ids {
        w.touched.insert(*id, seq);
    }
    if w.touched.len() >= w.prune_at {
        let c = *leadership.committed.borrow();
        let done = if c.0 == w.term { c.1 } else { 0 };
        w.touched.retain(|_, s| *s > done);
        w.prune_at = (w.touched.len() * 2).max(PRUNE_MIN);
    }
}

/// Starts the working namespace when the Raft node begins to lead and ends it when it stops
/// (a newer term, or another state); returns when the Raft node is gone.
async fn follow_leadership(
    mut metrics: watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
    leadership: Arc<Leadership>,
    committed: Arc<Mutex<Committed>>,
) {
    loop {
        let (state, term, log_end) = {
            let m = metrics.borrow_and_update();
            (m.state, m.current_term, m.last_log_index.unwrap_or(0))
        };
        let held = leadership.working.lock().as_ref().map(|w| w.term);
        if let Some(t) = held {
            if state != ServerState::Leader || term != t {
                info!("meta-{}: leadership of term {t} ended ({state:?} in term {term})", leadership.me);
                leadership.end_term(t);
            }
        }
        if state == ServerState::Leader {
            leadership.lead(&committed, term, log_end);
        } else {
            leadership.build.lock().take();
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Renews the leader lease while this node leads: every [`HEARTBEAT_MS`], a heartbeat round
/// that a quorum must acknowledge (openraft's `get_read_log_id`), counted from before it was
/// sent.
async fn keep_lease(raft: Raft, leadership: Arc<Leadership>) {
    let mut metrics = raft.metrics();
    loop {
        let (state, term, alone) = {
            let m = metrics.borrow_and_update();
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            (m.state, m.current_term, voters == [leadership.me])
        };
        leadership.alone.store(alone, std::sync::atomic::Ordering::Relaxed);
        if state != ServerState::Leader || alone {
            leadership.lease.send_replace(None);
            if metrics.changed().await.is_err() {
                return;
            }
            continue;
        }
        let start = std::time::Instant::now();
        let acked = tokio::time::timeout(Duration::from_millis(ELECTION_MIN_MS), raft.get_read_log_id()).await;
        match acked {
            Ok(Ok(_)) => {
                leadership.lease.send_replace(Some((term, start + Duration::from_millis(ELECTION_MIN_MS))));
            }
            _ => {
                // No quorum answered in time: the lease runs out on its own; nothing new is
                // granted after it.
            }
        }
        // A timer, not a wake on every metrics change (they come with every commit).
        tokio::time::sleep_until((start + Duration::from_millis(HEARTBEAT_MS)).into()).await;
    }
}

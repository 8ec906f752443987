//! Raft traffic between meta nodes over pfs's authenticated RPC (role Meta): the client side
//! ([`Network`], openraft's network factory) and the server side ([`serve`]).
//!
//! Each openraft request travels postcard-encoded in a [`RaftMessage`]'s payload; the answer
//! (openraft's `Result`) comes back postcard-encoded in the reply body. A connection is made
//! on first use and made again after it fails; openraft retries with its own backoff.

use super::{NodeId, TypeConfig};
use crate::error::MetaError;
use crate::store::NamespaceStore;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use pfs_common::rpc::{ConnectOptions, Peer, Reply, RpcClient};
use pfs_common::wire::raft::{RaftMessage, RaftRpc};
use pfs_common::wire::{MetaRequest, PeerRole};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::error::Error;
use std::net::SocketAddr;
use tracing::debug;

/// Makes openraft's connection to each peer.
#[derive(Clone)]
pub struct Network {
    /// This node's id (sent with every message).
    pub me: NodeId,
    /// How to connect (role Meta, this node's key).
    pub connect: ConnectOptions,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerLink {
        PeerLink { me: self.me, target, addr: node.addr.clone(), connect: self.connect.clone(), client: None }
    }
}

/// The connection to one peer.
pub struct PeerLink {
    me: NodeId,
    target: NodeId,
    addr: String,
    connect: ConnectOptions,
    client: Option<RpcClient<MetaRequest>>,
}

/// A failure to reach the peer, as a std error for openraft.
#[derive(Debug, thiserror::Error)]
#[error("meta-{target} at {addr}: {why}")]
struct LinkError {
    target: NodeId,
    addr: String,
    why: String,
}

impl PeerLink {
    fn error(&self, why: impl std::fmt::Display) -> LinkError {
        LinkError { target: self.target, addr: self.addr.clone(), why: why.to_string() }
    }

    /// Sends `req` as `rpc` and decodes openraft's answer, within `option`'s hard deadline.
    async fn send<Req: Serialize, Resp: DeserializeOwned, E: Error + DeserializeOwned>(
        &mut self,
        rpc: RaftRpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        let addr: SocketAddr = self
            .addr
            .parse()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&self.error(format!("bad address: {e}")))))?;
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let name = format!("meta-{}", self.target);
            let c = RpcClient::connect(addr, &name, &self.connect, None)
                .await
                .map_err(|e| RPCError::Unreachable(Unreachable::new(&self.error(e))))?;
            self.client = Some(c);
        }
        let client = self.client.as_ref().expect("connected above");
        let payload = postcard::to_allocvec(req).expect("postcard encodes openraft requests");
        let msg = RaftMessage { from: self.me, to: self.target, rpc };
        let answer = match tokio::time::timeout(option.hard_ttl(), client.call(msg, &payload)).await {
            Ok(Ok((body, _))) => body,
            Ok(Err(e)) => {
                debug!("Raft {rpc:?} to meta-{}: {e}", self.target);
                self.client = None;
                return Err(RPCError::Unreachable(Unreachable::new(&self.error(e))));
            }
            Err(_) => {
                self.client = None;
                let e = self.error(format!("no answer within {:?}", option.hard_ttl()));
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
        };
        let decoded: Result<Resp, RaftError<NodeId, E>> = postcard::from_bytes(&answer)
            .map_err(|e| RPCError::Network(NetworkError::new(&self.error(format!("undecodable answer: {e}")))))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(RaftRpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.send(RaftRpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(RaftRpc::Vote, &rpc, &option).await
    }
}

/// Serves one Raft message to this node's `raft`. Only another meta node (role Meta) may
/// send one, and only to this node (`me`).
pub async fn serve(store: &NamespaceStore, peer: &Peer, msg: RaftMessage, payload: &[u8]) -> Reply {
    let (raft, me) = (store.raft(), store.id());
    type Message = RaftMessage;
    if peer.role != PeerRole::Meta {
        return Reply::error(&MetaError::Forbidden {
            peer: format!("{} at {}", peer.name, peer.addr),
            role: "not a meta node",
            what: "send Raft messages".into(),
        });
    }
    if msg.to != me {
        return Reply::error(&MetaError::Denied {
            what: format!("a Raft message for meta-{} reached meta-{me} (two nodes share an address?)", msg.to),
        });
    }
    fn decode<T: DeserializeOwned>(payload: &[u8], rpc: RaftRpc) -> Result<T, MetaError> {
        postcard::from_bytes(payload).map_err(|e| MetaError::Invalid(format!("undecodable Raft {rpc:?}: {e}")))
    }
    fn answer<T: Serialize>(r: &T) -> Reply {
        Reply::to::<Message, MetaError>(Ok(postcard::to_allocvec(r).expect("postcard encodes openraft answers")))
    }
    match msg.rpc {
        RaftRpc::AppendEntries => match decode::<AppendEntriesRequest<TypeConfig>>(payload, msg.rpc) {
            Ok(rpc) => answer(&raft.append_entries(rpc).await),
            Err(e) => Reply::error(&e),
        },
        RaftRpc::Vote if !store.may_vote() => Reply::error(&MetaError::Denied {
            what: format!("meta-{me} started with an empty directory and does not vote before it has caught up"),
        }),
        RaftRpc::Vote => match decode::<VoteRequest<NodeId>>(payload, msg.rpc) {
            Ok(rpc) => answer(&raft.vote(rpc).await),
            Err(e) => Reply::error(&e),
        },
        RaftRpc::InstallSnapshot => match decode::<InstallSnapshotRequest<TypeConfig>>(payload, msg.rpc) {
            Ok(rpc) => answer(&raft.install_snapshot(rpc).await),
            Err(e) => Reply::error(&e),
        },
    }
}

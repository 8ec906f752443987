//! `pfs meta status|add|remove`: the metadata group as an operator sees it.
//!
//! `status` asks every meta node of the config for its own view (one line each, `DOWN` for a
//! node that does not answer) and exits 0 only if one of them leads. `add` and `remove`
//! change the membership online through the leader (openraft's joint consensus); they need
//! the cluster secret (an administrator's connection).

use pfs_cli::{out, Error, Result};
use pfs_common::config::Config;
use pfs_common::rpc::{ConnectOptions, RpcClient};
use pfs_common::wire::raft::{AddMember, GetStatus, NodeStatus, RemoveMember};
use pfs_common::wire::{MetaRequest, PeerRole};
use std::net::SocketAddr;
use std::time::Duration;

/// How long one node gets to answer a status query, ms.
const STATUS_TIMEOUT_MS: u64 = 2000;

fn connect_options(config: &Config, role: PeerRole) -> Result<ConnectOptions> {
    Ok(ConnectOptions {
        role,
        name: format!("pfs meta {}", std::process::id()),
        connect_timeout: Duration::from_millis(config.timeouts.connect_ms.min(STATUS_TIMEOUT_MS)),
        request_timeout: Duration::from_millis(config.timeouts.request_ms),
        auth: config.auth(false)?,
    })
}

/// Asks the node at `addr` for its status, within [`STATUS_TIMEOUT_MS`].
async fn ask_status(addr: SocketAddr, id: u64, opts: &ConnectOptions) -> std::result::Result<NodeStatus, String> {
    let asked = async {
        let c: RpcClient<MetaRequest> = RpcClient::connect(addr, &format!("meta-{id}"), opts, None).await?;
        c.ask(GetStatus).await
    };
    match tokio::time::timeout(Duration::from_millis(STATUS_TIMEOUT_MS), asked).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {STATUS_TIMEOUT_MS} ms")),
    }
}

/// Every configured node's status, in config order.
async fn statuses(config: &Config) -> Result<Vec<(u64, SocketAddr, std::result::Result<NodeStatus, String>)>> {
    let opts = connect_options(config, PeerRole::Client)?;
    let mut all = Vec::new();
    for node in config.meta_nodes() {
        all.push((node.id, node.address, ask_status(node.address, node.id, &opts).await));
    }
    Ok(all)
}

/// `pfs meta status`: `meta-<id> <address> <state> term <T> applied <index>` per node.
/// Errors: Unavailable when no node leads.
pub async fn status(config: &Config) -> Result<()> {
    let mut leader = None;
    for (id, addr, st) in statuses(config).await? {
        match st {
            Ok(s) => {
                out!("meta-{id} {addr} {} term {} applied {}", s.state, s.term, s.applied);
                if s.state == "leader" {
                    leader = Some(id);
                }
            }
            Err(why) => {
                out!("meta-{id} {addr} DOWN term - applied -");
                tracing::debug!("meta-{id}: {why}");
            }
        }
    }
    match leader {
        Some(_) => Ok(()),
        None => Err(Error::Usage("the metadata group has no leader".into())),
    }
}

/// The leader's address, from the nodes' own reports.
async fn leader(config: &Config) -> Result<(u64, SocketAddr)> {
    let all = statuses(config).await?;
    let found = all.iter().find(|(_, _, st)| st.as_ref().is_ok_and(|s| s.state == "leader"));
    match found {
        Some((id, addr, _)) => Ok((*id, *addr)),
        None => Err(Error::Usage("the metadata group has no leader; `pfs meta status` shows each node".into())),
    }
}

async fn admin(config: &Config) -> Result<RpcClient<MetaRequest>> {
    let (id, addr) = leader(config).await?;
    let opts = connect_options(config, PeerRole::Admin)?;
    Ok(RpcClient::connect(addr, &format!("meta-{id}"), &opts, None).await?)
}

/// `pfs meta add ID ADDR`: node `id` at `address` joins (as a learner that catches up, then
/// as a voter). Start the new node first (with an empty data directory).
pub async fn add(config: &Config, id: u64, address: SocketAddr) -> Result<()> {
    let c = admin(config).await?;
    let s = c.ask(AddMember { id, address: address.to_string() }).await?;
    out!("meta-{id} {address} joined; voters now: {}", voters(&s));
    Ok(())
}

/// `pfs meta remove ID`: node `id` leaves the group.
pub async fn remove(config: &Config, id: u64) -> Result<()> {
    let c = admin(config).await?;
    let s = c.ask(RemoveMember { id }).await?;
    out!("meta-{id} removed; voters now: {}", voters(&s));
    Ok(())
}

fn voters(s: &NodeStatus) -> String {
    let v: Vec<String> = s.members.iter().filter(|m| m.2).map(|m| format!("meta-{} {}", m.0, m.1)).collect();
    v.join(", ")
}

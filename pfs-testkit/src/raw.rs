//! Raw protocol access for tests that play a peer by hand (an intruder, a late writer): the
//! connection settings of a config's key, and capabilities minted with it.

use pfs_common::auth::Auth;
use pfs_common::capability::{sign, Capability, CapabilityIssuer};
use pfs_common::config::Config;
use pfs_common::rpc::ConnectOptions;
use pfs_common::token::{ByteRange, Mode, SessionId};
use pfs_common::wire::PeerRole;
use pfs_common::FileId;
use std::time::Duration;

/// Connection settings as `role` named `name`, authenticating with `auth`.
pub fn connect_options(role: PeerRole, name: &str, auth: Auth) -> ConnectOptions {
    ConnectOptions {
        role,
        name: name.into(),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
        auth,
    }
}

/// Connection settings as `role` with the key `config` names (the cluster secret in a
/// [`crate::LocalCluster`], so any role).
pub fn cluster_options(config: &Config, role: PeerRole, name: &str) -> ConnectOptions {
    connect_options(role, name, config.auth(false).expect("the config's key is readable"))
}

/// A capability as pfs-meta would issue it, minted with `config`'s cluster secret (which the
/// test holds and a real client would not), valid for a minute; `None` when the config does
/// not authenticate.
pub fn mint_capability(
    config: &Config,
    file: FileId,
    range: ByteRange,
    mode: Mode,
    session: SessionId,
    chunk_size: u64,
) -> Option<Capability> {
    let key = config.auth(true).ok()?.capability_key()?;
    Some(CapabilityIssuer::new(key, 60_000).issue(file, range, mode, session, chunk_size))
}

/// `cap` re-signed after `change` (an expired or widened capability with a valid tag, as only
/// a holder of the cluster secret could make).
pub fn resign(config: &Config, cap: Capability, change: impl FnOnce(&mut Capability)) -> Capability {
    let mut c = cap;
    change(&mut c);
    sign(&config.auth(true).unwrap().capability_key().unwrap(), c)
}

//! Cluster authentication: the shared secret, the keys derived from it, the handshake that
//! proves both ends of a connection know them, and the MAC on every frame after it.
//!
//! # Keys
//! The cluster secret is 32 random bytes (`pfs keygen`), held by pfs-meta and every storage
//! server. Everything else is derived from it with HKDF-SHA256 (RFC 5869):
//! - a *role key* per peer role (`"pfs v1 role key client"`, `... storage`, `... meta`): a
//!   connection is authenticated with the key of the role the connecting peer claims, so a
//!   node given only the client key (`pfs keygen --client-key`) can connect as a client and
//!   never as a storage server or pfs-meta;
//! - the *capability key* (`"pfs v1 capability key"`), which pfs-meta MACs data-access
//!   capabilities with and storage servers check them with ([`crate::capability`]); a client
//!   key cannot derive it.
//!
//! # Handshake (one round trip and a half, before any request)
//! ```text
//! client -> server  Hello      { version, role, name, nonce_c, auth, protect_data }
//! server -> client  HelloReply { version, server, nonce_s, auth, protect_data, proof_s }
//! client -> server  HelloProof { proof_c }
//! server -> client  Ok | "authentication failed"
//! ```
//! `th` = SHA-256 over the encoded `Hello` and the encoded `HelloReply` without its proof.
//! HKDF-SHA256(salt = nonce_c ‖ nonce_s, ikm = role key, info = "pfs v1 connection" ‖ th)
//! gives four 32-byte keys: one MAC key per direction and one proof key per side;
//! `proof = HMAC-SHA256(proof key, th)`. Both nonces are fresh per connection, so a recorded
//! handshake replayed to either side fails its proof; the transcript binds both roles and
//! names, the versions and the `protect_data` choice (no downgrade). The pattern is that of
//! TLS 1.3's PSK key schedule (RFC 8446 §7.1) without Diffie-Hellman: nothing is encrypted.
//!
//! # Frames
//! After the handshake every frame carries a 16-byte tag: HMAC-SHA256 of the direction's
//! sequence number (from 0), the 20-byte header and the body, and of the payload when
//! `protect_data` is on (either side may ask for it), truncated to 128 bits (RFC 2104 §5).
//! A frame whose tag does not check (altered, replayed, reordered, dropped) closes the
//! connection. Tags are compared in constant time (`hmac`'s `verify_truncated_left`).

use crate::error::{Error, Result};
use hmac::Mac;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;
use zeroize::Zeroizing;

/// Bytes of the cluster secret and of every derived key.
pub const KEY_LEN: usize = 32;
/// Bytes of a handshake nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of a frame tag (HMAC-SHA256 truncated).
pub const TAG_LEN: usize = 16;

type HmacSha256 = hmac::Hmac<Sha256>;

/// A 32-byte key, wiped from memory when dropped. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Zeroizing<[u8; KEY_LEN]>);

impl Key {
    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        Key(Zeroizing::new(bytes))
    }

    /// 32 bytes from the operating system's CSPRNG.
    pub fn random() -> Key {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(&mut k[..]);
        Key(k)
    }

    /// The key's bytes.
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// HKDF-SHA256-Expand of this key (as the pseudo-random key) with `info`.
    fn derive(&self, info: &[u8]) -> Key {
        let hk = hkdf::Hkdf::<Sha256>::from_prk(&self.0[..]).expect("a 32-byte PRK is long enough");
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        hk.expand(info, &mut out[..]).expect("32 bytes is a valid HKDF-SHA256 output length");
        Key(out)
    }

    /// A keyed HMAC-SHA256 instance.
    pub fn hmac(&self) -> HmacSha256 {
        <HmacSha256 as Mac>::new_from_slice(&self.0[..]).expect("HMAC takes keys of any length")
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Who is on the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRole {
    /// An application, tool or benchmark using pfs-client.
    Client,
    /// A storage server (talking to pfs-meta).
    Storage,
    /// The metadata server.
    Meta,
    /// An operator's tool holding the cluster secret (`pfs fsck --repair`): the only peer
    /// that may ask pfs-meta to remove orphaned chunks. A client key cannot connect as one.
    Admin,
}

/// The label of a role in key derivation.
fn role_label(role: PeerRole) -> &'static [u8] {
    match role {
        PeerRole::Client => b"pfs v1 role key client",
        PeerRole::Storage => b"pfs v1 role key storage",
        PeerRole::Meta => b"pfs v1 role key meta",
        PeerRole::Admin => b"pfs v1 role key admin",
    }
}

/// What this process can prove it knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// The cluster secret: every role key and the capability key (pfs-meta, storage
    /// servers, and trusted nodes such as a single-host cluster's tools).
    Cluster(Key),
    /// Only the client role key (`pfs keygen --client-key`): client nodes.
    Client(Key),
}

impl Credentials {
    /// The key a connection of a peer in `role` is authenticated with, if these credentials
    /// hold it.
    pub fn role_key(&self, role: PeerRole) -> Option<Key> {
        match (self, role) {
            (Credentials::Cluster(s), role) => Some(s.derive(role_label(role))),
            (Credentials::Client(k), PeerRole::Client) => Some(k.clone()),
            (Credentials::Client(_), _) => None,
        }
    }

    /// The key capabilities are MAC'd with (the cluster secret's holders only).
    pub fn capability_key(&self) -> Option<Key> {
        match self {
            Credentials::Cluster(s) => Some(s.derive(b"pfs v1 capability key")),
            Credentials::Client(_) => None,
        }
    }
}

/// How a process authenticates its connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    /// `None`: `auth = "none"` (no handshake proofs, no frame MACs).
    pub credentials: Option<Credentials>,
    /// MAC chunk payloads too, not only headers and bodies.
    pub protect_data: bool,
}

impl Auth {
    /// No authentication (`auth = "none"`).
    pub fn none() -> Auth {
        Auth { credentials: None, protect_data: false }
    }

    /// Authentication with the cluster secret.
    pub fn cluster(secret: Key) -> Auth {
        Auth { credentials: Some(Credentials::Cluster(secret)), protect_data: false }
    }

    /// True unless `auth = "none"`.
    pub fn enabled(&self) -> bool {
        self.credentials.is_some()
    }

    /// The capability key, when this process holds the cluster secret.
    pub fn capability_key(&self) -> Option<Key> {
        self.credentials.as_ref().and_then(Credentials::capability_key)
    }
}

/// Logs the warning every daemon gives at start when `auth = "none"`.
pub fn warn_if_off(daemon: &str, auth: &Auth) {
    if !auth.enabled() {
        tracing::warn!(
            "{daemon}: auth = \"none\": connections are not authenticated; anyone who can reach this port \
             can read, change and delete every file"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Key files
// ---------------------------------------------------------------------------------------

/// Writes 32 random bytes to a new file `path`, mode 0400, synced (file and directory).
///
/// Errors: Config if `path` exists (a secret is never overwritten); Io otherwise.
pub fn write_new_key(path: &Path, key: &Key) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o400).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Config(format!("{} already exists; a key file is never overwritten", path.display()))
        } else {
            Error::io(format!("creating key file {}", path.display()), e)
        }
    })?;
    let what = || format!("writing key file {}", path.display());
    f.write_all(key.bytes()).map_err(|e| Error::io(what(), e))?;
    f.sync_all().map_err(|e| Error::io(what(), e))?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(what(), e))?;
    Ok(())
}

/// Reads a key file: exactly 32 bytes, a regular file that neither group nor others may
/// read or write (as ssh demands of private keys).
///
/// Errors: Config naming the file and what is wrong with it (missing, unreadable, wrong
/// length, permissions with the `chmod` that fixes them).
pub fn read_key(path: &Path) -> Result<Key> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let bad = |why: String| Error::Config(format!("key file {}: {why}", path.display()));
    let mut f = std::fs::File::open(path).map_err(|e| bad(format!("cannot open it: {e}")))?;
    let meta = f.metadata().map_err(|e| bad(format!("cannot stat it: {e}")))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(bad(format!(
            "mode {:04o} lets other users read or change it; run `chmod 400 {}`",
            meta.mode() & 0o7777,
            path.display()
        )));
    }
    if meta.len() != KEY_LEN as u64 {
        return Err(bad(format!("{} bytes, a key is {KEY_LEN} (made by `pfs keygen`)", meta.len())));
    }
    let mut k = Zeroizing::new([0u8; KEY_LEN]);
    f.read_exact(&mut k[..]).map_err(|e| bad(format!("cannot read it: {e}")))?;
    Ok(Key(k))
}

// ---------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------

/// A fresh random handshake nonce.
pub fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

/// A handshake proof (HMAC-SHA256).
pub type Proof = [u8; 32];

/// The keys of one authenticated connection, from one side's point of view.
pub struct ConnectionKeys {
    /// MACs the frames this side sends.
    pub send: FrameMac,
    /// Checks the frames this side receives.
    pub receive: FrameMac,
    th: [u8; 32],
    server_proof_key: Key,
    client_proof_key: Key,
}

impl ConnectionKeys {
    /// The server's proof of the transcript.
    pub fn server_proof(&self) -> Proof {
        prove(&self.server_proof_key, &self.th)
    }

    /// The client's proof of the transcript.
    pub fn client_proof(&self) -> Proof {
        prove(&self.client_proof_key, &self.th)
    }

    /// Checks the server's proof (constant time).
    pub fn server_proof_matches(&self, received: &Proof) -> bool {
        check(&self.server_proof_key, &self.th, received)
    }

    /// Checks the client's proof (constant time).
    pub fn client_proof_matches(&self, received: &Proof) -> bool {
        check(&self.client_proof_key, &self.th, received)
    }
}

fn prove(key: &Key, th: &[u8; 32]) -> Proof {
    let mut m = key.hmac();
    m.update(th);
    m.finalize().into_bytes().into()
}

fn check(key: &Key, th: &[u8; 32], received: &Proof) -> bool {
    let mut m = key.hmac();
    m.update(th);
    m.verify_slice(received).is_ok()
}

/// The transcript hash of a handshake: SHA-256 over the encoded `Hello` and the encoded
/// `HelloReply` without its proof, each preceded by its length.
pub fn transcript(hello: &[u8], reply_without_proof: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"pfs v1 handshake");
    h.update((hello.len() as u64).to_le_bytes());
    h.update(hello);
    h.update((reply_without_proof.len() as u64).to_le_bytes());
    h.update(reply_without_proof);
    h.finalize().into()
}

/// Derives a connection's keys from the role key, both nonces and the transcript hash.
/// `client_side` picks which MAC key sends.
pub fn connection_keys(
    role_key: &Key,
    client_nonce: &[u8; NONCE_LEN],
    server_nonce: &[u8; NONCE_LEN],
    th: &[u8; 32],
    protect_data: bool,
    client_side: bool,
) -> ConnectionKeys {
    let mut salt = [0u8; 2 * NONCE_LEN];
    salt[..NONCE_LEN].copy_from_slice(client_nonce);
    salt[NONCE_LEN..].copy_from_slice(server_nonce);
    let hk = hkdf::Hkdf::<Sha256>::new(Some(&salt), role_key.bytes());
    let mut okm = Zeroizing::new([0u8; 4 * KEY_LEN]);
    let mut info = Vec::with_capacity(17 + 32);
    info.extend_from_slice(b"pfs v1 connection");
    info.extend_from_slice(th);
    hk.expand(&info, &mut okm[..]).expect("128 bytes is a valid HKDF-SHA256 output length");
    let key = |i: usize| Key::from_bytes(okm[i * KEY_LEN..(i + 1) * KEY_LEN].try_into().unwrap());
    let (c2s, s2c) = (key(0), key(1));
    let (send, receive) = if client_side { (c2s, s2c) } else { (s2c, c2s) };
    ConnectionKeys {
        send: FrameMac::new(&send, protect_data),
        receive: FrameMac::new(&receive, protect_data),
        th: *th,
        server_proof_key: key(2),
        client_proof_key: key(3),
    }
}

// ---------------------------------------------------------------------------------------
// Frame MACs
// ---------------------------------------------------------------------------------------

/// The MAC state of one direction of a connection: the keyed HMAC (cloned per frame, so the
/// key's two padded blocks are hashed once per connection) and the next sequence number.
#[derive(Clone)]
pub struct FrameMac {
    keyed: HmacSha256,
    seq: u64,
    protect_data: bool,
}

impl fmt::Debug for FrameMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameMac").field("seq", &self.seq).field("protect_data", &self.protect_data).finish()
    }
}

impl FrameMac {
    fn new(key: &Key, protect_data: bool) -> FrameMac {
        FrameMac { keyed: key.hmac(), seq: 0, protect_data }
    }

    /// Whether payload bytes are covered.
    pub fn protects_data(&self) -> bool {
        self.protect_data
    }

    /// The MAC of the next frame; its payload is `payload`'s parts back to back.
    fn mac(&mut self, header: &[u8], body: &[u8], payload: &[&[u8]]) -> HmacSha256 {
        let mut m = self.keyed.clone();
        m.update(&self.seq.to_le_bytes());
        m.update(header);
        m.update(body);
        if self.protect_data {
            for part in payload {
                m.update(part);
            }
        }
        self.seq += 1;
        m
    }

    /// The tag of the next frame sent, whose payload is `payload`'s parts back to back.
    pub fn seal(&mut self, header: &[u8], body: &[u8], payload: &[&[u8]]) -> [u8; TAG_LEN] {
        let full = self.mac(header, body, payload).finalize().into_bytes();
        full[..TAG_LEN].try_into().unwrap()
    }

    /// Checks the tag of the next frame received (constant time). False: the frame was
    /// altered, replayed, reordered or a frame was dropped.
    pub fn open(&mut self, header: &[u8], body: &[u8], payload: &[u8], tag: &[u8; TAG_LEN]) -> bool {
        self.mac(header, body, &[payload]).verify_truncated_left(tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_derive_matching_keys_and_a_changed_transcript_changes_them() {
        let role = Credentials::Cluster(Key::from_bytes([7; 32])).role_key(PeerRole::Client).unwrap();
        let (nc, ns) = (nonce(), nonce());
        let th = transcript(b"hello", b"reply");
        let mut c = connection_keys(&role, &nc, &ns, &th, false, true);
        let mut s = connection_keys(&role, &nc, &ns, &th, false, false);
        assert!(c.server_proof_matches(&s.server_proof()));
        assert!(s.client_proof_matches(&c.client_proof()));
        assert!(!s.client_proof_matches(&c.server_proof()));
        let tag = c.send.seal(b"header", b"body", &[b"payload"]);
        assert!(s.receive.open(b"header", b"body", b"other payload", &tag), "payload not covered by default");
        // The same frame again (a replay) is out of sequence.
        assert!(!s.receive.open(b"header", b"body", b"payload", &tag));
        let other = connection_keys(&role, &nc, &ns, &transcript(b"hello", b"replY"), false, false);
        assert!(!c.server_proof_matches(&other.server_proof()));
        let other = connection_keys(&role, &nc, &nonce(), &th, false, false);
        assert!(!s.client_proof_matches(&other.client_proof()));
    }

    #[test]
    fn protect_data_covers_the_payload_and_altered_frames_fail() {
        let role = Key::from_bytes([1; 32]);
        let (nc, ns, th) = (nonce(), nonce(), [3; 32]);
        let mut c = connection_keys(&role, &nc, &ns, &th, true, true);
        let mut s = connection_keys(&role, &nc, &ns, &th, true, false);
        let tag = c.send.seal(b"h", b"b", &[b"payload"]);
        assert!(!s.receive.clone().open(b"h", b"b", b"pAyload", &tag));
        assert!(!s.receive.clone().open(b"H", b"b", b"payload", &tag));
        assert!(s.receive.open(b"h", b"b", b"payload", &tag));
        // A payload sent in parts (a vectored write) is MACed as the bytes the peer reads.
        let tag = c.send.seal(b"h", b"b", &[b"pay", b"", b"load"]);
        assert!(s.receive.open(b"h", b"b", b"payload", &tag));
    }

    #[test]
    fn a_client_key_holds_only_the_client_role() {
        let secret = Key::from_bytes([9; 32]);
        let cluster = Credentials::Cluster(secret);
        let client = Credentials::Client(cluster.role_key(PeerRole::Client).unwrap());
        assert_eq!(client.role_key(PeerRole::Client), cluster.role_key(PeerRole::Client));
        assert_eq!(client.role_key(PeerRole::Storage), None);
        assert_eq!(client.capability_key(), None);
        assert_ne!(cluster.role_key(PeerRole::Storage), cluster.role_key(PeerRole::Client));
        assert_ne!(cluster.capability_key(), cluster.role_key(PeerRole::Meta));
    }

    #[test]
    fn key_files_must_be_private_and_32_bytes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        let key = Key::random();
        write_new_key(&path, &key).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o400);
        assert_eq!(read_key(&path).unwrap(), key);
        assert!(write_new_key(&path, &Key::random()).unwrap_err().to_string().contains("never overwritten"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_key(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 400") && e.contains("0644"), "{e}");
        let short = dir.path().join("short.key");
        std::fs::write(&short, b"abc").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_key(&short).unwrap_err().to_string().contains("3 bytes"));
        assert!(read_key(&dir.path().join("missing")).unwrap_err().to_string().contains("cannot open"));
    }
}

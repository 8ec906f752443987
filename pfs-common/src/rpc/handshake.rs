//! Both sides of the handshake that opens every connection: [`crate::wire::Hello`], its
//! reply and, when the cluster authenticates, the proofs of [`crate::auth`]. Each side
//! returns the frame MAC states the connection then runs with.

use super::client::ConnectOptions;
use super::server::{send_reply, Notifier, Peer, Reply, ServeOptions};
use super::{decode_body, frame_error, remote, Reader, Sender};
use crate::auth::{self, FrameMac};
use crate::error::{Error, Result};
use crate::pool;
use crate::wire::frame::{read_frame, write_frame, FrameKind, DEFAULT_LIMITS};
use crate::wire::{self, Hello, HelloProof, HelloReply, ResponseBody, PEER_NAME_MAX, PROTOCOL_VERSION};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::tcp::OwnedWriteHalf;

/// Reads and checks the peer's [`Hello`], answers it, checks the peer's proof when this
/// server authenticates, and returns the peer and the MAC state of the receiving direction
/// (the sending one is installed in `writer`). A refused handshake is answered with the
/// reason before the connection is closed.
pub(super) async fn server_side(
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
pub(super) async fn client_side(
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

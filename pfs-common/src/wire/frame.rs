//! Frames: a fixed 20-byte header, a postcard-encoded body, then raw payload bytes.
//!
//! ```text
//! offset  size  field
//!      0     2  magic "PF"
//!      2     1  protocol version (1)
//!      3     1  kind: 1 request, 2 response, 3 notify
//!      4     4  body length, bytes (little-endian)
//!      8     4  payload length, bytes (little-endian)
//!     12     8  request id (little-endian); a response carries its request's id
//! ```
//! On an authenticated connection a 16-byte tag follows the payload ([`crate::auth`]: an
//! HMAC of the direction's sequence number, header, body and, with `protect_data`, payload).
//! Both lengths are checked against [`Limits`] before anything is allocated. Payload bytes
//! (chunk data) never pass through serde: they are read from the socket straight into a pooled
//! buffer and written from the caller's buffer with vectored writes.

use crate::auth::{FrameMac, TAG_LEN};
use crate::error::{ErrorCode, WireCode};
use crate::layout::MAX_CHUNK_SIZE;
use crate::pool::{BufPool, PooledBuf};
use std::io::IoSlice;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Header size in bytes.
pub const HEADER_LEN: usize = 20;
/// The two magic bytes that open every frame.
pub const MAGIC: [u8; 2] = *b"PF";
/// Frame format version.
pub const FRAME_VERSION: u8 = 1;

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// A request; the peer answers with a response carrying the same request id.
    Request = 1,
    /// The answer to a request.
    Response = 2,
    /// A one-way message from a server to a connected peer (request id 0).
    Notify = 3,
}

/// Size limits checked on every received header before allocating.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest body, bytes.
    pub max_body: u32,
    /// Largest payload, bytes.
    pub max_payload: u32,
}

/// Default limits: 4 MiB bodies (a page of directory entries or chunk reports), payloads up to
/// one whole chunk of the largest size (64 MiB).
pub const DEFAULT_LIMITS: Limits = Limits { max_body: 4 << 20, max_payload: MAX_CHUNK_SIZE as u32 };

/// A frame that could not be read or written. Nothing is allocated for a frame whose header
/// fails its checks.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed, or closed in the middle of a frame.
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// The first two bytes are not [`MAGIC`]: not pfs speaking.
    #[error("bad frame magic {0:02x}{1:02x}")]
    BadMagic(u8, u8),
    /// Another frame format version.
    #[error("unsupported frame version {0}")]
    BadVersion(u8),
    /// An unknown frame kind.
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    /// The frame's tag does not check: it was altered, replayed, reordered, or one before it
    /// was dropped.
    #[error("a frame failed its integrity check (altered, replayed or reordered)")]
    BadMac,
    /// A length over its limit.
    #[error("frame {what} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { what: &'static str, len: u64, limit: u64 },
}

impl WireCode for FrameError {
    fn code(&self) -> ErrorCode {
        match self {
            FrameError::Io(_) => ErrorCode::Unavailable,
            FrameError::TooLarge { .. } => ErrorCode::TooLarge,
            FrameError::BadMac => ErrorCode::AuthFailed,
            _ => ErrorCode::Protocol,
        }
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub body_len: u32,
    pub payload_len: u32,
    pub request_id: u64,
}

impl FrameHeader {
    /// The header's 20 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..2].copy_from_slice(&MAGIC);
        h[2] = FRAME_VERSION;
        h[3] = self.kind as u8;
        h[4..8].copy_from_slice(&self.body_len.to_le_bytes());
        h[8..12].copy_from_slice(&self.payload_len.to_le_bytes());
        h[12..20].copy_from_slice(&self.request_id.to_le_bytes());
        h
    }

    /// Parses and checks a header: magic, version, kind and both lengths against `limits`.
    pub fn decode(h: &[u8; HEADER_LEN], limits: &Limits) -> Result<FrameHeader, FrameError> {
        if h[0..2] != MAGIC {
            return Err(FrameError::BadMagic(h[0], h[1]));
        }
        if h[2] != FRAME_VERSION {
            return Err(FrameError::BadVersion(h[2]));
        }
        let kind = match h[3] {
            1 => FrameKind::Request,
            2 => FrameKind::Response,
            3 => FrameKind::Notify,
            k => return Err(FrameError::BadKind(k)),
        };
        let body_len = u32::from_le_bytes(h[4..8].try_into().unwrap());
        let payload_len = u32::from_le_bytes(h[8..12].try_into().unwrap());
        let request_id = u64::from_le_bytes(h[12..20].try_into().unwrap());
        if body_len > limits.max_body {
            return Err(FrameError::TooLarge { what: "body", len: body_len.into(), limit: limits.max_body.into() });
        }
        if payload_len > limits.max_payload {
            return Err(FrameError::TooLarge {
                what: "payload",
                len: payload_len.into(),
                limit: limits.max_payload.into(),
            });
        }
        Ok(FrameHeader { kind, body_len, payload_len, request_id })
    }
}

/// A received frame.
#[derive(Debug)]
pub struct Frame {
    pub header: FrameHeader,
    /// The postcard-encoded message.
    pub body: Vec<u8>,
    /// Raw data bytes (chunk data), possibly empty.
    pub payload: PooledBuf,
}

/// Reads one frame, and with `mac` its tag, which must check. `Ok(None)` on a clean end of
/// stream before a header; an error for a bad header (nothing allocated for it), a short
/// body or payload, a tag that does not check (BadMac), or a socket error.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limits: &Limits,
    pool: &BufPool,
    mac: Option<&mut FrameMac>,
) -> Result<Option<Frame>, FrameError> {
    let mut h = [0u8; HEADER_LEN];
    // Read the first byte separately so a clean close between frames is not an error.
    match r.read(&mut h[..1]).await {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(FrameError::Io(e)),
    }
    r.read_exact(&mut h[1..]).await.map_err(FrameError::Io)?;
    let header = FrameHeader::decode(&h, limits)?;
    let mut body = vec![0u8; header.body_len as usize];
    r.read_exact(&mut body).await.map_err(FrameError::Io)?;
    let payload = if header.payload_len == 0 {
        PooledBuf::empty()
    } else {
        let mut p = pool.get(header.payload_len as usize);
        r.read_exact(&mut p).await.map_err(FrameError::Io)?;
        p
    };
    if let Some(mac) = mac {
        let mut tag = [0u8; TAG_LEN];
        r.read_exact(&mut tag).await.map_err(FrameError::Io)?;
        if !mac.open(&h, &body, &payload, &tag) {
            return Err(FrameError::BadMac);
        }
    }
    Ok(Some(Frame { header, body, payload }))
}

/// Writes one frame (header, body, payload, and with `mac` its tag) with vectored writes; the
/// payload is `payload`'s parts back to back, written from the callers' buffers, not copied.
/// Errors if body or payload exceed what a header can carry.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: FrameKind,
    request_id: u64,
    body: &[u8],
    payload: &[&[u8]],
    mac: Option<&mut FrameMac>,
) -> Result<(), FrameError> {
    let too_large = |what, len: usize| FrameError::TooLarge { what, len: len as u64, limit: u32::MAX.into() };
    let body_len = u32::try_from(body.len()).map_err(|_| too_large("body", body.len()))?;
    let total: usize = payload.iter().map(|p| p.len()).sum();
    let payload_len = u32::try_from(total).map_err(|_| too_large("payload", total))?;
    let header = FrameHeader { kind, body_len, payload_len, request_id }.encode();
    let tag = mac.map(|m| m.seal(&header, body, payload));
    let tag: &[u8] = tag.as_ref().map_or(&[], |t| &t[..]);
    // On the stack for the usual one-part payload; a vectored write's parts (at most a few
    // hundred, well under IOV_MAX) need a list.
    let mut one;
    let mut many;
    let slices: &mut [IoSlice<'_>] = match payload {
        [] | [_] => {
            let p: &[u8] = payload.first().copied().unwrap_or(&[]);
            one = [IoSlice::new(&header), IoSlice::new(body), IoSlice::new(p), IoSlice::new(tag)];
            &mut one
        }
        parts => {
            many = Vec::with_capacity(parts.len() + 3);
            many.push(IoSlice::new(&header));
            many.push(IoSlice::new(body));
            many.extend(parts.iter().map(|p| IoSlice::new(p)));
            many.push(IoSlice::new(tag));
            &mut many
        }
    };
    let mut bufs: &mut [IoSlice<'_>] = slices;
    while !bufs.is_empty() {
        let n = w.write_vectored(bufs).await.map_err(FrameError::Io)?;
        if n == 0 {
            return Err(FrameError::Io(std::io::ErrorKind::WriteZero.into()));
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = FrameHeader { kind: FrameKind::Response, body_len: 12, payload_len: 4096, request_id: 99 };
        assert_eq!(FrameHeader::decode(&h.encode(), &DEFAULT_LIMITS).unwrap(), h);
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocation() {
        let mut h = FrameHeader { kind: FrameKind::Request, body_len: 0, payload_len: 0, request_id: 1 }.encode();
        h[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = FrameHeader::decode(&h, &DEFAULT_LIMITS).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { what: "payload", .. }), "{err}");
        let mut h = FrameHeader { kind: FrameKind::Request, body_len: 0, payload_len: 0, request_id: 1 }.encode();
        h[4..8].copy_from_slice(&(DEFAULT_LIMITS.max_body + 1).to_le_bytes());
        assert_eq!(FrameHeader::decode(&h, &DEFAULT_LIMITS).unwrap_err().code(), ErrorCode::TooLarge);
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let h = *b"GET / HTTP/1.1\r\nHost:";
        let h: [u8; HEADER_LEN] = h[..HEADER_LEN].try_into().unwrap();
        assert!(matches!(FrameHeader::decode(&h, &DEFAULT_LIMITS), Err(FrameError::BadMagic(b'G', b'E'))));
    }

    #[tokio::test]
    async fn frames_round_trip_through_a_socket_pair() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let pool = BufPool::new(1 << 20);
        let payload: Vec<u8> = (0..50_000u32).map(|i| i as u8).collect();
        let writer = tokio::spawn(async move {
            write_frame(&mut a, FrameKind::Request, 7, b"body", &[&payload], None).await.unwrap();
            // The same bytes in parts arrive as one payload.
            let parts = [&payload[..10], &payload[10..10], &payload[10..40_000], &payload[40_000..]];
            write_frame(&mut a, FrameKind::Request, 8, b"body", &parts, None).await.unwrap();
            payload
        });
        let f = read_frame(&mut b, &DEFAULT_LIMITS, &pool, None).await.unwrap().unwrap();
        let g = read_frame(&mut b, &DEFAULT_LIMITS, &pool, None).await.unwrap().unwrap();
        let payload = writer.await.unwrap();
        assert_eq!(f.header.request_id, 7);
        assert_eq!(f.body, b"body");
        assert_eq!(&f.payload[..], &payload[..]);
        assert_eq!((g.header.request_id, g.header.payload_len), (8, payload.len() as u32));
        assert_eq!(&g.payload[..], &payload[..]);
        assert!(read_frame(&mut b, &DEFAULT_LIMITS, &pool, None).await.unwrap().is_none());
    }
}

//! The inbound side of a WebSocket: a small RFC 6455 frame reader.
//!
//! fastwebsockets' own reader allocates an 8 KiB buffer per socket, which an
//! idle connection cannot afford (see `connection.rs`), so client frames are
//! read here over a small `BufReader`. A frame's payload is allocated only
//! while it is being handled, and never above the limit: the length is
//! checked from the header *before* the payload is read.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

#[derive(Debug, PartialEq, Eq)]
pub enum InFrame {
    /// A complete (possibly reassembled) text message.
    Text(Vec<u8>),
    Binary,
    Ping(Vec<u8>),
    Pong,
    Close,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The message is larger than the limit (close 1009).
    TooBig,
    /// RFC 6455 violation (close 1002).
    Protocol(&'static str),
    /// EOF or I/O error.
    Closed,
}

/// A fragmented message being reassembled (opcode, payload so far). The
/// caller keeps it between calls, so a control frame between fragments is
/// returned at once (answered, rate-limited, counted as inbound) without
/// losing the fragments read so far.
#[derive(Debug, Default)]
pub struct Partial(Option<(u8, Vec<u8>)>);

/// Reads one client frame (RFC 6455 §5; client frames must be masked):
/// a control frame, or a complete data message. Fragmented messages are
/// reassembled in `partial`, their total bounded by `max`.
pub async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    max: usize,
    partial: &mut Partial,
) -> Result<InFrame, ReadError> {
    let partial = &mut partial.0;
    loop {
        let mut head = [0u8; 2];
        rd.read_exact(&mut head)
            .await
            .map_err(|_| ReadError::Closed)?;
        let fin = head[0] & 0x80 != 0;
        if head[0] & 0x70 != 0 {
            return Err(ReadError::Protocol("reserved bits set"));
        }
        let opcode = head[0] & 0x0f;
        if head[1] & 0x80 == 0 {
            return Err(ReadError::Protocol("client frames must be masked"));
        }
        let len = match head[1] & 0x7f {
            126 => u64::from(rd.read_u16().await.map_err(|_| ReadError::Closed)?),
            127 => rd.read_u64().await.map_err(|_| ReadError::Closed)?,
            n => u64::from(n),
        };
        let control = opcode & 0x08 != 0;
        if control && (!fin || len > 125) {
            return Err(ReadError::Protocol("bad control frame"));
        }
        let so_far = partial.as_ref().map_or(0, |(_, p)| p.len()) as u64;
        if !control && so_far.saturating_add(len) > max as u64 {
            return Err(ReadError::TooBig);
        }
        let mut mask = [0u8; 4];
        rd.read_exact(&mut mask)
            .await
            .map_err(|_| ReadError::Closed)?;
        let mut payload = vec![0u8; len as usize];
        rd.read_exact(&mut payload)
            .await
            .map_err(|_| ReadError::Closed)?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
        match opcode {
            0x1 | 0x2 => {
                if partial.is_some() {
                    return Err(ReadError::Protocol("new message inside a fragmented one"));
                }
                if fin {
                    return Ok(finish(opcode, payload));
                }
                *partial = Some((opcode, payload));
            }
            0x0 => {
                let Some((op, mut acc)) = partial.take() else {
                    return Err(ReadError::Protocol("continuation without a message"));
                };
                acc.extend_from_slice(&payload);
                if fin {
                    return Ok(finish(op, acc));
                }
                *partial = Some((op, acc));
            }
            0x8 => return Ok(InFrame::Close),
            // Also between fragments: `partial` keeps them for the next call.
            0x9 => return Ok(InFrame::Ping(payload)),
            0xA => return Ok(InFrame::Pong),
            _ => return Err(ReadError::Protocol("unknown opcode")),
        }
    }
}

fn finish(opcode: u8, payload: Vec<u8>) -> InFrame {
    if opcode == 0x1 {
        InFrame::Text(payload)
    } else {
        InFrame::Binary
    }
}

/// After sending a close frame, reads and discards what the client still
/// sends (the rest of an oversize frame, its close reply) for a moment.
/// Closing a socket with unread input makes the kernel send a reset, which
/// can destroy our close frame before the client reads it.
pub async fn linger<R: AsyncRead + Unpin>(rd: &mut R) {
    let mut sink = [0u8; 512];
    let mut total = 0usize;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while total < 1 << 20 {
            match rd.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len < 65536 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [1, 2, 3, 4];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    /// Every pong is returned, inside a fragmented message too (the read
    /// loop rate-limits and counts each one).
    #[tokio::test]
    async fn control_frames_between_fragments_are_returned() {
        let mut bytes = client_frame(false, 1, b"a");
        for _ in 0..3 {
            bytes.extend(client_frame(true, 0xA, b""));
        }
        bytes.extend(client_frame(true, 0, b"b"));
        let mut rd = &bytes[..];
        let p = &mut Partial::default();
        for _ in 0..3 {
            assert_eq!(read_frame(&mut rd, 4096, p).await, Ok(InFrame::Pong));
        }
        assert_eq!(
            read_frame(&mut rd, 4096, p).await,
            Ok(InFrame::Text(b"ab".to_vec()))
        );
    }

    #[tokio::test]
    async fn reads_frames() {
        let mut bytes = client_frame(true, 1, br#"{"type":"ping"}"#);
        bytes.extend(client_frame(false, 1, b"ab"));
        bytes.extend(client_frame(true, 9, b"p"));
        bytes.extend(client_frame(true, 0, b"cd"));
        bytes.extend(client_frame(true, 1, &vec![b'x'; 5000]));
        let mut rd = &bytes[..];
        let p = &mut Partial::default();
        assert_eq!(
            read_frame(&mut rd, 4096, p).await,
            Ok(InFrame::Text(br#"{"type":"ping"}"#.to_vec()))
        );
        // A ping inside a fragmented message is returned (so the caller
        // answers and rate-limits it); the fragments still join.
        assert_eq!(
            read_frame(&mut rd, 4096, p).await,
            Ok(InFrame::Ping(b"p".to_vec()))
        );
        assert_eq!(
            read_frame(&mut rd, 4096, p).await,
            Ok(InFrame::Text(b"abcd".to_vec()))
        );
        let mut rd = &client_frame(true, 1, &vec![b'x'; 5000])[..];
        let p = &mut Partial::default();
        assert_eq!(read_frame(&mut rd, 4096, p).await, Err(ReadError::TooBig));
        let unmasked = [0x81u8, 0x01, b'x'];
        assert!(matches!(
            read_frame(&mut &unmasked[..], 4096, p).await,
            Err(ReadError::Protocol(_))
        ));
        assert_eq!(
            read_frame(&mut &[][..], 4096, p).await,
            Err(ReadError::Closed)
        );
        let huge = [0x81u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            read_frame(&mut &huge[..], 4096, p).await,
            Err(ReadError::TooBig)
        );
    }
}

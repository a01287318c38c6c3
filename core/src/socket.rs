//! A WebSocket's two halves after the upgrade.
//!
//! On plain TCP (every socket core accepts itself) the stream is taken out
//! of hyper's upgrade and shared (`Arc<TcpStream>`) by the reader, the
//! writer and the connection's [`Outbox`](crate::outbox::Outbox), which
//! writes frames straight to it from the room's tick (`try_write`, never
//! blocking; see `outbox.rs`). Anything else (a stream hyper wraps in a
//! way we do not know) keeps tokio's `split` of the upgraded stream and
//! only the writer task writes to it.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::outbox::DirectWrite;

type Other = TokioIo<Upgraded>;

pub enum ReadSide {
    /// Bytes hyper read past the upgrade request first, then the socket.
    Plain(Bytes, Arc<TcpStream>),
    Other(ReadHalf<Other>),
}

pub enum WriteSide {
    Plain(Arc<TcpStream>),
    Other(WriteHalf<Other>),
}

/// Splits an upgraded stream; on plain TCP also returns the socket for
/// direct writes.
pub fn split(io: Other) -> (ReadSide, WriteSide, Option<Arc<TcpStream>>) {
    match io.into_inner().downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let tcp = Arc::new(parts.io.into_inner());
            (
                ReadSide::Plain(parts.read_buf, Arc::clone(&tcp)),
                WriteSide::Plain(Arc::clone(&tcp)),
                Some(tcp),
            )
        }
        Err(upgraded) => {
            let (rd, wr) = tokio::io::split(TokioIo::new(upgraded));
            (ReadSide::Other(rd), WriteSide::Other(wr), None)
        }
    }
}

impl DirectWrite for TcpStream {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        TcpStream::try_write_vectored(self, bufs)
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buf)
    }
}

impl AsyncRead for ReadSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadSide::Plain(pre, tcp) => {
                if pre.has_remaining() {
                    let n = pre.len().min(buf.remaining());
                    buf.put_slice(&pre[..n]);
                    pre.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness, then a non-blocking read; `WouldBlock` clears
                // the readiness, so the next poll registers the waker.
                loop {
                    ready!(tcp.poll_read_ready(cx))?;
                    let unfilled = buf.initialize_unfilled();
                    match tcp.try_read(unfilled) {
                        Ok(n) => {
                            buf.advance(n);
                            return Poll::Ready(Ok(()));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            }
            ReadSide::Other(rd) => Pin::new(rd).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteSide {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Plain(tcp) => loop {
                ready!(tcp.poll_write_ready(cx))?;
                match tcp.try_write_vectored(bufs) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return Poll::Ready(r),
                }
            },
            WriteSide::Other(wr) => Pin::new(wr).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteSide::Plain(_) => true,
            WriteSide::Other(wr) => wr.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            // A socket write is on the wire once accepted: nothing buffered.
            WriteSide::Plain(_) => Poll::Ready(Ok(())),
            WriteSide::Other(wr) => Pin::new(wr).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            // The descriptor closes when its last holder drops it (the
            // connection detaches it from the outbox when it ends).
            WriteSide::Plain(_) => Poll::Ready(Ok(())),
            WriteSide::Other(wr) => Pin::new(wr).poll_shutdown(cx),
        }
    }
}

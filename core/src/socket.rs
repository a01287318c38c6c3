//! A WebSocket's two halves after the upgrade.
//!
//! On plain TCP (every socket core accepts itself) the stream is taken out
//! of hyper's upgrade and shared (`Arc<TcpStream>`) by the reader, the
//! writer and the connection's [`Outbox`](crate::outbox::Outbox), which
//! writes frames straight to it from the room's tick (`try_write`, never
//! blocking; see `outbox.rs`). Anything else (a stream hyper wraps in a
//! way we do not know) keeps tokio's `split` of the upgraded stream and
//! only the writer task writes to it.

use std::io::{self, IoSlice, Read};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::Interest;
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
            // `read_buf` is a view of hyper's 8 KiB read buffer, usually
            // empty: keeping it would keep the buffer (~4 KB of RSS per
            // idle connection, measured); the few bytes it may hold are
            // copied out.
            let pre = Bytes::copy_from_slice(&parts.read_buf);
            drop(parts.read_buf);
            (
                ReadSide::Plain(pre, Arc::clone(&tcp)),
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

/// The direct write is a plain non-blocking `send` on the descriptor, not
/// tokio's `try_write`: that one first reads the socket's readiness in
/// tokio's registration (a cache miss per socket in a 19 000-socket
/// fan-out, ~3 % of its CPU) only to learn what the kernel answers anyway.
/// Bypassing it is safe: a `WouldBlock` here leaves tokio's readiness
/// stale at worst, and the writer's own write then meets the full buffer,
/// clears it and waits for the kernel's next writable event. (`MSG_NOSIGNAL`:
/// a peer gone away is an `EPIPE` error, as with std's own `send`, never a
/// `SIGPIPE`.)
impl DirectWrite for TcpStream {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        socket2::SockRef::from(self).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL)
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        socket2::SockRef::from(self).send_with_flags(buf, libc::MSG_NOSIGNAL)
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
                    if !pre.has_remaining() {
                        *pre = Bytes::new(); // its allocation goes now
                    }
                    return Poll::Ready(Ok(()));
                }
                // Readiness, then a non-blocking read; `WouldBlock` clears
                // the readiness, so the next poll registers the waker.
                loop {
                    ready!(tcp.poll_read_ready(cx))?;
                    let unfilled = buf.initialize_unfilled();
                    let want = unfilled.len();
                    let mut got = 0;
                    // A short read leaves the socket's queue empty: the
                    // readiness is cleared with it (reported as
                    // `WouldBlock` to `try_io`, as tokio's own `TcpStream`
                    // read does), so the next read waits for the next
                    // readiness event instead of paying a `recv` that
                    // answers EAGAIN, once per answer frame. A readiness
                    // event that came in meanwhile is not lost: `try_io`
                    // clears only the one it started from.
                    let read = tcp.try_io(Interest::READABLE, || {
                        got = (&*socket2::SockRef::from(&**tcp)).read(unfilled)?;
                        if got > 0 && got < want {
                            return Err(io::ErrorKind::WouldBlock.into());
                        }
                        Ok(())
                    });
                    match read {
                        Ok(()) => {
                            buf.advance(got);
                            return Poll::Ready(Ok(()));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => {
                            buf.advance(got);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::outbox::{close, text_frame, write_loop, Outbox, Pushed};
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    /// The real path on a loopback socket: the reader stalls until the
    /// kernel buffer is full (direct writes, then a short one, then
    /// queueing), then the writer drains; the client receives every frame
    /// whole, in order, and only the latest board.
    #[tokio::test]
    async fn direct_then_writer_on_a_real_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let tcp = Arc::new(server);
        let o = Outbox::new(4096, CancellationToken::new());
        o.attach(Arc::clone(&tcp) as Arc<dyn DirectWrite>);
        let n = 400;
        for i in 0..n {
            let p = format!("{i:05}").repeat(4000); // 20 000 bytes each
            assert_eq!(o.push_text(Bytes::from(p)), Pushed::Queued);
        }
        assert!(
            o.queued() > 0,
            "8 MB fit the socket buffer: nothing reached the writer"
        );
        o.set_board(Bytes::from_static(b"stale"));
        o.set_board_framed(&Bytes::from_static(b"latest"), &text_frame(b"latest"));
        let metrics = Metrics::new();
        let mut wr = WriteSide::Plain(Arc::clone(&tcp));
        let writer = async {
            write_loop(&metrics, &o, &mut wr, Duration::from_secs(10)).await;
        };
        let reader = async {
            use tokio::io::AsyncReadExt;
            let mut got = Vec::new();
            for _ in 0..=n {
                let mut h = [0u8; 2];
                client.read_exact(&mut h).await.unwrap();
                assert_eq!(h[0], 0x81);
                let len = match h[1] {
                    126 => usize::from(client.read_u16().await.unwrap()),
                    127 => client.read_u64().await.unwrap() as usize,
                    l => usize::from(l),
                };
                let mut p = vec![0u8; len];
                client.read_exact(&mut p).await.unwrap();
                got.push(p);
            }
            o.close(close::NORMAL, "");
            got
        };
        let (_, got) = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(writer, reader)
        })
        .await
        .expect("every frame within 30 s");
        for (i, p) in got[..n].iter().enumerate() {
            assert_eq!(p, format!("{i:05}").repeat(4000).as_bytes(), "frame {i}");
        }
        assert_eq!(got[n], b"latest");
    }
}

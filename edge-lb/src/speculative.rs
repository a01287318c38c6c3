//! Speculative I/O on fresh sockets: try the syscall first, wait for readiness only if it would
//! block.
//!
//! tokio learns a new socket's readiness from its event loop, so the first read of an accepted
//! connection and the first write of a new backend connection each wait for a turn of the I/O
//! driver — which, on a busy runtime, comes after the other ready tasks (up to
//! `event_interval`, 61 polls). That wait is latency on every WebSocket setup, and with a
//! bounded number of setups in flight it is setups per second. Yet both operations can nearly
//! always be done at once: clients send the request right behind the TCP handshake, and a
//! connect to a near backend (loopback, the same rack) completes inside `connect`. HAProxy
//! tries I/O before polling for the same reason.

use std::io;
use std::net::{IpAddr, SocketAddr};

use pingora_core::protocols::Stream;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpStream;

/// What one speculative read may take; the head reader goes on from there if it is longer.
const FIRST_READ: usize = 2048;

/// The bytes already waiting in a freshly accepted plain-TCP connection, read without
/// blocking; `None` when there are none yet, on EOF or error (the normal read then sees the
/// same), and on TLS, where the bytes belong to the TLS layer.
pub fn recv_now(stream: &Stream) -> Option<Vec<u8>> {
    // Only pingora's plain TCP stream, whose own read buffer is still empty (nothing has read
    // from it yet), may be read around.
    if !stream
        .as_any()
        .is::<pingora_core::protocols::l4::stream::Stream>()
    {
        return None;
    }
    let fd = stream.id();
    let mut buf = Vec::<u8>::with_capacity(FIRST_READ);
    // SAFETY: `fd` is the open socket owned by `stream`, borrowed for this call; the pointer
    // and length describe `buf`'s spare capacity, which `recv` writes at most.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.capacity(),
            libc::MSG_DONTWAIT,
        )
    };
    if n <= 0 {
        return None;
    }
    // SAFETY: `recv` initialised the first `n` bytes (n ≤ capacity).
    unsafe { buf.set_len(n as usize) };
    Some(buf)
}

/// Connect to `addr` (from `source`, if given: `crate::upstream_bind`) and send as much of
/// `data` as the socket takes at once. Returns the stream and how many bytes went out (0 when
/// the connection was still being set up: the caller writes the rest as usual).
pub async fn connect_and_send(
    addr: SocketAddr,
    source: Option<IpAddr>,
    data: &[u8],
) -> io::Result<(TcpStream, usize)> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    if let Some(source) = source {
        crate::upstream_bind::bind_source(&socket, source)?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let sent = match socket.send_with_flags(data, libc::MSG_NOSIGNAL) {
        Ok(n) => n,
        // Still connecting.
        Err(e)
            if e.kind() == io::ErrorKind::WouldBlock
                || e.raw_os_error() == Some(libc::ENOTCONN) =>
        {
            0
        }
        Err(e) => return Err(e),
    };
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    if sent == 0 {
        // The usual way: wait until connected, then report the connect's outcome.
        stream.writable().await?;
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    Ok((stream, sent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn connect_and_send_delivers_everything_or_reports_the_connect_error() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (mut s, sent) = connect_and_send(addr, None, b"hello").await.unwrap();
        s.write_all(&b"hello"[sent..]).await.unwrap();
        s.shutdown().await.unwrap();
        let (mut a, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        a.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        drop(l);
        let e = connect_and_send(addr, None, b"x").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }

    #[tokio::test]
    async fn a_source_address_is_where_the_connection_comes_from() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let source: IpAddr = "127.0.0.3".parse().unwrap();
        let (_s, _) = connect_and_send(l.local_addr().unwrap(), Some(source), b"x")
            .await
            .unwrap();
        let (_a, peer) = l.accept().await.unwrap();
        assert_eq!(peer.ip(), source);
    }
}

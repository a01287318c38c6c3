//! The wire: TCP connects from a chosen loopback source address, a minimal
//! HTTP/1.1 client, and a minimal WebSocket client.
//!
//! Why hand-written: a simulated player must cost the generator almost
//! nothing while idle. A general client keeps an 8 KiB read buffer and a write
//! buffer per connection; here an idle connection owns only its socket and an
//! empty `Vec`. Reads go into one per-thread scratch buffer inside a
//! synchronous `recv` (never held across an `.await`), complete frames are
//! handed out as slices, and only a partial frame's tail is copied to the
//! heap. Waiting is `TcpStream::readable()`, which is cancel-safe, so a player
//! can `select!` between the socket and its answer timer.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpSocket, TcpStream};

use crate::target::{ensure_loopback, Target};

#[derive(Debug, Error)]
pub enum NetError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("timeout")]
    Timeout,
    #[error("bad HTTP response: {0}")]
    Http(String),
    #[error("WebSocket handshake refused: HTTP {0}")]
    Handshake(u16),
    #[error("WebSocket protocol: {0}")]
    Protocol(&'static str),
    #[error("{0}")]
    Refused(String),
}

impl NetError {
    /// A short stable name for error counting.
    pub fn kind(&self) -> &'static str {
        match self {
            NetError::Connect(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                "connect_no_port"
            }
            NetError::Connect(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                "connect_refused"
            }
            NetError::Connect(_) => "connect",
            NetError::Io(e) if e.kind() == io::ErrorKind::ConnectionReset => "reset",
            NetError::Io(_) => "io",
            NetError::Timeout => "timeout",
            NetError::Http(_) => "http_parse",
            NetError::Handshake(_) => "ws_handshake",
            NetError::Protocol(_) => "ws_protocol",
            NetError::Refused(_) => "refused",
        }
    }
}

/// Connect to `target` from `source` (any port), with IP_BIND_ADDRESS_NO_PORT
/// so the kernel picks the port at connect time per 4-tuple: one source
/// address then holds far more than the ~28k ephemeral ports a plain bind
/// would allow.
pub async fn connect(target: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, NetError> {
    ensure_loopback(target.ip()).map_err(|e| NetError::Refused(e.to_string()))?;
    let domain = if target.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(NetError::Connect)?;
    sock.set_nonblocking(true).map_err(NetError::Connect)?;
    sock.set_tcp_nodelay(true).map_err(NetError::Connect)?;
    if let Some(src) = source {
        ensure_loopback(src).map_err(|e| NetError::Refused(e.to_string()))?;
        if src.is_ipv4() == target.is_ipv4() {
            set_bind_no_port(&sock).map_err(NetError::Connect)?;
            sock.bind(&SocketAddr::new(src, 0).into())
                .map_err(NetError::Connect)?;
        }
    }
    let std_stream: std::net::TcpStream = sock.into();
    let socket = TcpSocket::from_std_stream(std_stream);
    socket.connect(target).await.map_err(NetError::Connect)
}

fn set_bind_no_port(sock: &socket2::Socket) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid fd, a pointer to a c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raise the soft open-file limit to the hard one (20 000 on this machine).
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a stack struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

const MAX_BODY: usize = 16 << 20;

/// One HTTP/1.1 request on a fresh connection (`Connection: close`, so the
/// server closes first and keeps the TIME_WAIT, not our source port).
pub async fn http_request(
    target: &Target,
    source: Option<IpAddr>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<HttpResponse, NetError> {
    tokio::time::timeout(
        timeout,
        http_request_inner(target, source, method, path, headers, body),
    )
    .await
    .map_err(|_| NetError::Timeout)?
}

async fn http_request_inner(
    target: &Target,
    source: Option<IpAddr>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<HttpResponse, NetError> {
    let mut stream = connect(target.addr, source).await?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\n",
        target.host_header()
    );
    for (k, v) in headers {
        req.push_str(k);
        req.push_str(": ");
        req.push_str(v);
        req.push_str("\r\n");
    }
    let body = body.unwrap_or(b"");
    if !body.is_empty() || method == "POST" {
        req.push_str("Content-Type: application/json\r\n");
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut out = req.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out).await?;
    let mut buf = Vec::with_capacity(1024);
    let (status, header_end, headers) = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(NetError::Http("connection closed before headers".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])
                .map_err(|_| NetError::Http("non-UTF-8 headers".into()))?;
            let status = parse_status(head)?;
            break (status, end + 4, head.to_ascii_lowercase());
        }
        if buf.len() > 64 * 1024 {
            return Err(NetError::Http("headers too large".into()));
        }
    };
    let content_length = header_value(&headers, "content-length").and_then(|v| v.parse().ok());
    let chunked = header_value(&headers, "transfer-encoding")
        .map(|v| v.contains("chunked"))
        .unwrap_or(false);
    let mut rest = buf.split_off(header_end);
    if let Some(len) = content_length {
        if len > MAX_BODY {
            return Err(NetError::Http("body too large".into()));
        }
        while rest.len() < len {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(NetError::Http("body truncated".into()));
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        // Let the server close first (it was asked to), so the TIME_WAIT
        // stays on its side and our source ports are free again at once;
        // off the caller's path, so it does not count as latency.
        tokio::spawn(async move {
            let mut probe = [0u8; 64];
            let _ = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut probe)).await;
        });
        return Ok(HttpResponse { status, body: rest });
    }
    // No length: read to EOF (Connection: close), then de-chunk if needed.
    loop {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        rest.extend_from_slice(&chunk[..n]);
        if rest.len() > MAX_BODY {
            return Err(NetError::Http("body too large".into()));
        }
    }
    let body = if chunked { dechunk(&rest)? } else { rest };
    Ok(HttpResponse { status, body })
}

fn parse_status(head: &str) -> Result<u16, NetError> {
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().and_then(|s| s.parse().ok())) {
        (Some(v), Some(code)) if v.to_ascii_uppercase().starts_with("HTTP/1.") => Ok(code),
        _ => Err(NetError::Http(format!("bad status line `{line}`"))),
    }
}

/// `headers` lower-cased.
fn header_value<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim())
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, NetError> {
    let mut out = Vec::new();
    loop {
        let eol = find(data, b"\r\n").ok_or_else(|| NetError::Http("bad chunk".into()))?;
        let size_str = std::str::from_utf8(&data[..eol])
            .map_err(|_| NetError::Http("bad chunk size".into()))?;
        let size_str = size_str.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| NetError::Http("bad chunk size".into()))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(NetError::Http("truncated chunk".into()));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What a non-blocking read pass found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadState {
    Open,
    /// The server sent a close frame (code, if any).
    Closed(Option<u16>),
    /// TCP closed without a close frame.
    Eof,
}

/// A client WebSocket on a plain TCP stream.
pub struct WsConn {
    stream: TcpStream,
    /// Tail of a partial frame, normally empty (no capacity).
    partial: Vec<u8>,
    /// Payload of a fragmented message being assembled, normally empty.
    fragments: Vec<u8>,
    /// Control replies (pong, close echo) to write after a read pass.
    pending_out: Vec<u8>,
    mask_seed: u32,
    closed: bool,
}

/// Open a WebSocket at `path_and_query` (e.g. `/v1/quizzes/x/ws?token=...`).
/// Returns the connection with any bytes that arrived with the 101 response
/// already buffered.
pub async fn ws_connect(
    target: &Target,
    source: Option<IpAddr>,
    path_and_query: &str,
    seed: u32,
    timeout: Duration,
) -> Result<WsConn, NetError> {
    tokio::time::timeout(timeout, async {
        let mut stream = connect(target.addr, source).await?;
        let req = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            target.host_header()
        );
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(512);
        loop {
            let mut chunk = [0u8; 2048];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(NetError::Http("closed during WebSocket handshake".into()));
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&buf[..end])
                    .map_err(|_| NetError::Http("non-UTF-8 headers".into()))?;
                let status = parse_status(head)?;
                if status != 101 {
                    return Err(NetError::Handshake(status));
                }
                let partial = buf.split_off(end + 4);
                return Ok(WsConn {
                    stream,
                    partial,
                    fragments: Vec::new(),
                    pending_out: Vec::new(),
                    mask_seed: seed | 1,
                    closed: false,
                });
            }
            if buf.len() > 16 * 1024 {
                return Err(NetError::Http("handshake headers too large".into()));
            }
        }
    })
    .await
    .map_err(|_| NetError::Timeout)?
}

/// Size of the per-thread read buffer: large enough that a burst of frames
/// (a question plus a board) is taken in one `recv`.
const SCRATCH_BYTES: usize = 64 * 1024;

thread_local! {
    /// The read buffer shared by every connection of a worker thread. Reads
    /// are synchronous (never held across an `.await`), so one suffices.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice());
}

/// One parsed frame header: (fin, opcode, payload start, payload len, mask).
struct FrameHead {
    fin: bool,
    opcode: u8,
    start: usize,
    len: usize,
    mask: Option<[u8; 4]>,
}

fn parse_head(data: &[u8]) -> Result<Option<FrameHead>, NetError> {
    if data.len() < 2 {
        return Ok(None);
    }
    let fin = data[0] & 0x80 != 0;
    let opcode = data[0] & 0x0f;
    let masked = data[1] & 0x80 != 0;
    let mut len = (data[1] & 0x7f) as usize;
    let mut pos = 2;
    if len == 126 {
        if data.len() < 4 {
            return Ok(None);
        }
        len = u16::from_be_bytes([data[2], data[3]]) as usize;
        pos = 4;
    } else if len == 127 {
        if data.len() < 10 {
            return Ok(None);
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[2..10]);
        let l = u64::from_be_bytes(b);
        if l > MAX_BODY as u64 {
            return Err(NetError::Protocol("frame too large"));
        }
        len = l as usize;
        pos = 10;
    }
    let mask = if masked {
        if data.len() < pos + 4 {
            return Ok(None);
        }
        let m = [data[pos], data[pos + 1], data[pos + 2], data[pos + 3]];
        pos += 4;
        Some(m)
    } else {
        None
    };
    if data.len() < pos + len {
        return Ok(None);
    }
    Ok(Some(FrameHead {
        fin,
        opcode,
        start: pos,
        len,
        mask,
    }))
}

impl WsConn {
    /// Wait until the socket has data (cancel-safe).
    pub async fn readable(&self) -> io::Result<()> {
        if !self.partial.is_empty() && self.has_complete_frame() {
            return Ok(());
        }
        self.stream.readable().await
    }

    fn has_complete_frame(&self) -> bool {
        matches!(parse_head(&self.partial), Ok(Some(_)))
    }

    /// Read everything available without blocking and call `on_text` for
    /// each complete text message. Returns whether the socket is still open.
    ///
    /// Reads go into one per-thread scratch buffer (no per-connection buffer,
    /// no zeroing per read). A read that fills less than the buffer drained
    /// the socket (epoll is edge-triggered), so it also clears tokio's cached
    /// readiness, as tokio's own `poll_read` does: otherwise the next
    /// `readable()` would return at once and cost a second task poll and a
    /// second `recv` that only says `EAGAIN`, for every frame.
    pub fn read_available(
        &mut self,
        mut on_text: impl FnMut(&[u8]),
    ) -> Result<ReadState, NetError> {
        // Frames already buffered (e.g. arrived with the handshake).
        if !self.partial.is_empty() {
            let buffered = std::mem::take(&mut self.partial);
            if let Some(st) = self.consume(&buffered, &mut on_text)? {
                return Ok(st);
            }
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let chunk = &mut scratch[..];
            for _ in 0..16 {
                let (n, drained) = match self.recv_once(chunk) {
                    Ok(r) => r,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(NetError::Io(e)),
                };
                if n == 0 {
                    return Ok(ReadState::Eof);
                }
                let st = if self.partial.is_empty() {
                    self.consume(&chunk[..n], &mut on_text)?
                } else {
                    let mut joined = std::mem::take(&mut self.partial);
                    joined.extend_from_slice(&chunk[..n]);
                    self.consume(&joined, &mut on_text)?
                };
                if let Some(st) = st {
                    return Ok(st);
                }
                if drained {
                    break;
                }
            }
            Ok(ReadState::Open)
        })
    }

    /// One `recv` into `buf`: (bytes, drained). A short read clears the
    /// stream's readiness (see [`WsConn::read_available`]); 0 bytes is EOF.
    fn recv_once(&self, buf: &mut [u8]) -> io::Result<(usize, bool)> {
        let fd = self.stream.as_raw_fd();
        let mut got = 0usize;
        let res = self.stream.try_io(Interest::READABLE, || {
            // SAFETY: a valid socket fd and a writable buffer of buf.len() bytes.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            got = n as usize;
            if got > 0 && got < buf.len() {
                // Drained: report WouldBlock so that tokio clears readiness.
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        match res {
            Ok(()) => Ok((got, false)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok((got, true)),
            Err(e) => Err(e),
        }
    }

    /// Parse complete frames from `data`; keep the tail in `self.partial`.
    fn consume(
        &mut self,
        data: &[u8],
        on_text: &mut impl FnMut(&[u8]),
    ) -> Result<Option<ReadState>, NetError> {
        let mut off = 0;
        while let Some(h) = parse_head(&data[off..])? {
            let s = off + h.start;
            let mut owned;
            let payload: &[u8] = if let Some(m) = h.mask {
                owned = data[s..s + h.len].to_vec();
                for (i, b) in owned.iter_mut().enumerate() {
                    *b ^= m[i & 3];
                }
                &owned
            } else {
                &data[s..s + h.len]
            };
            off = s + h.len;
            match h.opcode {
                0x1 | 0x2 if h.fin && self.fragments.is_empty() => on_text(payload),
                0x1 | 0x2 => self.fragments.extend_from_slice(payload),
                0x0 => {
                    self.fragments.extend_from_slice(payload);
                    if h.fin {
                        let msg = std::mem::take(&mut self.fragments);
                        on_text(&msg);
                    }
                }
                0x8 => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    if !self.closed {
                        let echo = code.unwrap_or(1000).to_be_bytes();
                        self.queue_frame(0x8, &echo);
                    }
                    self.closed = true;
                    return Ok(Some(ReadState::Closed(code)));
                }
                0x9 => {
                    owned = payload.to_vec();
                    self.queue_frame(0xA, &owned);
                }
                0xA => {}
                _ => return Err(NetError::Protocol("unknown opcode")),
            }
        }
        if off < data.len() {
            self.partial.extend_from_slice(&data[off..]);
        } else if self.partial.capacity() > 0 {
            self.partial = Vec::new();
        }
        Ok(None)
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift32: masking keys need not be secret towards our own server.
        let mut x = self.mask_seed;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_seed = x;
        x.to_be_bytes()
    }

    fn encode(&mut self, opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
        out.push(0x80 | opcode);
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
        let m = self.next_mask();
        out.extend_from_slice(&m);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i & 3]));
    }

    fn queue_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mut out = std::mem::take(&mut self.pending_out);
        self.encode(opcode, payload, &mut out);
        self.pending_out = out;
    }

    /// Write queued control replies (pong, close echo).
    pub async fn flush_pending(&mut self) -> Result<(), NetError> {
        if !self.pending_out.is_empty() {
            let out = std::mem::take(&mut self.pending_out);
            self.stream.write_all(&out).await?;
        }
        Ok(())
    }

    pub async fn send_text(&mut self, payload: &[u8]) -> Result<(), NetError> {
        let mut out = Vec::with_capacity(payload.len() + 8);
        self.encode(0x1, payload, &mut out);
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Send a close frame (best effort) and drop the connection.
    pub async fn close(mut self, code: u16) {
        if !self.closed {
            let mut out = Vec::with_capacity(8);
            self.encode(0x8, &code.to_be_bytes(), &mut out);
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                let _ = self.stream.write_all(&out).await;
                let _ = self.stream.shutdown().await;
            })
            .await;
        }
    }

    /// Drop the TCP connection abruptly, with no close frame (a network drop).
    pub fn abort(self) {
        // Zero linger: close sends RST at once, as a dropped network would
        // look to the server; it never blocks.
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
        drop(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frame_headers() {
        assert!(parse_head(&[0x81]).unwrap().is_none());
        let h = parse_head(&[0x81, 0x02, b'h', b'i']).unwrap().unwrap();
        assert!(h.fin && h.opcode == 1 && h.start == 2 && h.len == 2);
        let mut f = vec![0x81, 126, 0x01, 0x00];
        f.extend(std::iter::repeat_n(b'a', 256));
        let h = parse_head(&f).unwrap().unwrap();
        assert_eq!((h.start, h.len), (4, 256));
        assert!(parse_head(&f[..100]).unwrap().is_none());
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
    }

    #[test]
    fn status_and_headers() {
        let raw = "HTTP/1.1 201 Created\r\nContent-Length: 5\r\n";
        assert_eq!(parse_status(raw).unwrap(), 201);
        let h = raw.to_ascii_lowercase();
        assert_eq!(header_value(&h, "content-length"), Some("5"));
    }
}

//! The wire: TCP connects from a chosen loopback source address, a minimal
//! HTTP/1.1 client, and a minimal WebSocket client.
//!
//! Why hand-written: a simulated player must cost the generator almost
//! nothing, idle or per frame. A general client keeps an 8 KiB read buffer
//! and a write buffer per connection, and a task per connection is woken for
//! every frame. Here every WebSocket of a worker is read by one [`Hub`]: one
//! epoll, one 64 KiB read buffer, frames parsed in place, and each message
//! handed to the connection's [`FastPath`] (the player) where it is read:
//! a connection needs no task of its own. Writes never wait: what the
//! socket does not take now goes out on its next EPOLLOUT. An idle
//! connection owns its socket and unallocated buffers; only a partial
//! frame's tail is copied to the heap.

use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpSocket, TcpStream};

use crate::target::{ensure_allowed, ensure_loopback, Target};

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
    /// The upgrade was answered with this status instead of 101, with the
    /// `Retry-After` hint in seconds when the refusal carried one (core's
    /// upgrade admission, edge-lb's per-node tunnel rate).
    #[error("WebSocket handshake refused: HTTP {0}")]
    Handshake(u16, Option<u64>),
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
            NetError::Handshake(..) => "ws_handshake",
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
    ensure_allowed(target.ip()).map_err(|e| NetError::Refused(e.to_string()))?;
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
            descriptors::socket::leave_port_to_connect(&sock).map_err(NetError::Connect)?;
            sock.bind(&SocketAddr::new(src, 0).into())
                .map_err(NetError::Connect)?;
        }
    }
    let std_stream: std::net::TcpStream = sock.into();
    let socket = TcpSocket::from_std_stream(std_stream);
    socket.connect(target).await.map_err(NetError::Connect)
}

pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
    /// `Retry-After` in seconds, when the server gave one (429, 503).
    pub retry_after_s: Option<u64>,
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
    // The body is read into heap buffers too, for the reason `read_head`
    // gives.
    let mut buf = Vec::with_capacity(1024);
    let Head {
        status,
        headers,
        body_at,
    } = read_head(
        &mut stream,
        &mut buf,
        64 * 1024,
        "connection closed before headers",
        "headers too large",
    )
    .await?;
    let content_length =
        header_value(&headers, "content-length").and_then(|v| v.parse::<usize>().ok());
    let retry_after_s = header_value(&headers, "retry-after").and_then(|v| v.parse().ok());
    let chunked = header_value(&headers, "transfer-encoding")
        .map(|v| v.contains("chunked"))
        .unwrap_or(false);
    let mut rest = buf.split_off(body_at);
    if let Some(len) = content_length {
        if len > MAX_BODY {
            return Err(NetError::Http("body too large".into()));
        }
        rest.reserve(len.saturating_sub(rest.len()));
        while rest.len() < len {
            let n = stream.read_buf(&mut rest).await?;
            if n == 0 {
                return Err(NetError::Http("body truncated".into()));
            }
        }
        rest.truncate(len);
        // Let the server close first (it was asked to), so the TIME_WAIT
        // stays on its side and our source ports are free again at once;
        // off the caller's path, so it does not count as latency.
        tokio::spawn(async move {
            let mut probe = [0u8; 64];
            let _ = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut probe)).await;
        });
        return Ok(HttpResponse {
            status,
            body: rest,
            retry_after_s,
        });
    }
    // No length: read to EOF (Connection: close), then de-chunk if needed.
    loop {
        rest.reserve(8192);
        let n = stream.read_buf(&mut rest).await?;
        if n == 0 {
            break;
        }
        if rest.len() > MAX_BODY {
            return Err(NetError::Http("body too large".into()));
        }
    }
    let body = if chunked { dechunk(&rest)? } else { rest };
    Ok(HttpResponse {
        status,
        body,
        retry_after_s,
    })
}

/// A response's head, as `read_head` read it.
struct Head {
    status: u16,
    /// The head's lines, lower-cased (for `header_value`).
    headers: String,
    /// Where what follows the head starts in the buffer.
    body_at: usize,
}

/// Read a response into `buf` until its head is whole, and parse its status
/// line. `closed` is the error if the peer closes first, `too_large` past
/// `max` bytes without the blank line that ends the head.
///
/// Straight into the heap buffer, never through an array on the stack: an
/// array held across an `.await` is part of the future, so of every joining
/// player's task (the join's future was 8.8 KB with its arrays, the
/// WebSocket handshake's 2.4 KB; through edge-lb hundreds of joins are in
/// flight at once during a ramp).
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
    closed: &str,
    too_large: &str,
) -> Result<Head, NetError> {
    let end = loop {
        buf.reserve(1024);
        if stream.read_buf(buf).await? == 0 {
            return Err(NetError::Http(closed.into()));
        }
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end;
        }
        if buf.len() > max {
            return Err(NetError::Http(too_large.into()));
        }
    };
    let head =
        std::str::from_utf8(&buf[..end]).map_err(|_| NetError::Http("non-UTF-8 headers".into()))?;
    Ok(Head {
        status: parse_status(head)?,
        headers: head.to_ascii_lowercase(),
        body_at: end + 4,
    })
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

/// The comeback a close frame's reason asks for, in ms: `retry_after_ms=<n>` as a word of the
/// reason (edge-lb closes the tunnels of a lost, drained or stopping node with 1012 and this,
/// drawn per tunnel; asyncapi.yaml `x-close-codes`). At most 60 s, so a broken reason cannot
/// park a player; `None` when absent or not a plain number of at most 9 digits.
pub fn close_retry_ms(reason: &[u8]) -> Option<u32> {
    let reason = std::str::from_utf8(reason).ok()?;
    reason
        .split([' ', ';', ','])
        .find_map(|w| w.strip_prefix("retry_after_ms="))
        .filter(|v| (1..=9).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u32>().ok())
        .map(|ms| ms.min(60_000))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What a non-blocking read pass found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadState {
    Open,
    /// The server sent a close frame: its code, if any, and the comeback its reason asks for
    /// (edge-lb's 1012 `retry_after_ms=<n>`, see [`close_retry_ms`]).
    Closed(Option<u16>, Option<u32>),
    /// TCP closed without a close frame.
    Eof,
}

/// What drives a connection: the hub calls it where it reads, so a connection
/// needs no task of its own (the player's steady state, `player.rs`).
pub trait FastPath {
    /// `payload` arrived at `now` (wall µs); true = handled, false = queue
    /// it ([`WsConn::read_available`] takes it, in order, with everything
    /// after it).
    fn on_text(&self, payload: &[u8], now: u64) -> bool;

    /// Called after each readiness event of the connection the hub served,
    /// with nothing of the hub borrowed (the connection may be dropped
    /// here). `wake`: the connection has something for its owner to act
    /// on: queued messages, a control reply to write, the end of the read
    /// side, or room to write again after a full send buffer.
    fn after_event(self: Rc<Self>, wake: bool);
}

/// A client WebSocket on a plain TCP stream, read by the worker's [`Hub`].
pub struct WsConn {
    /// Declared first so that it drops first: the socket leaves the hub's
    /// epoll while its fd is still open.
    reg: HubReg,
    /// Non-blocking, registered with the hub only (not with tokio's reactor).
    stream: std::net::TcpStream,
}

/// Open a WebSocket at `path_and_query` (e.g. `/v1/quizzes/x/ws?token=...`).
/// Any frames that arrived with the 101 response are already buffered.
/// Needs the worker's `LocalSet` (the hub's loop is a local task).
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
        let mut buf = Vec::with_capacity(1024);
        let head = read_head(
            &mut stream,
            &mut buf,
            16 * 1024,
            "closed during WebSocket handshake",
            "handshake headers too large",
        )
        .await?;
        if head.status != 101 {
            let hint = header_value(&head.headers, "retry-after").and_then(|v| v.parse().ok());
            return Err(NetError::Handshake(head.status, hint));
        }
        let buffered = buf.split_off(head.body_at);
        // From here on the hub reads this socket: leave tokio's reactor
        // (into_std deregisters; the socket stays non-blocking), or both
        // epolls would report every frame.
        let stream = stream.into_std()?;
        Ok(Hub::current()?.attach(stream, &buffered, seed | 1)?)
    })
    .await
    .map_err(|_| NetError::Timeout)?
}

// ---- The hub: one epoll for every WebSocket of a worker --------------------
//
// Why: with a tokio task per player, every received frame cost a readiness
// wake in tokio's driver, a task notification, a `LocalSet` poll of the
// player's future and its `select!`, each touching cold per-player memory,
// before the one `recv` that matters. Here one local task owns an epoll of
// its own (itself one `AsyncFd` in tokio's reactor), takes ready sockets in
// batches, reads and parses their frames in place and hands each complete
// text message to the connection's [`FastPath`] (the player), then tells it
// when it has more to act on: a close, EOF or an error, a control reply to
// write, room to write again. Messages it declines (or that came with the
// handshake's response) are queued, in order: once one is queued, later
// ones queue behind it.

/// Sockets taken from one `epoll_wait`.
const EVENTS: usize = 1024;

/// Size of the hub's read buffer: large enough that a burst of frames (a
/// question plus a board) is taken in one `recv`.
const SCRATCH_BYTES: usize = 64 * 1024;

/// `recv` calls per socket and readiness event before the hub serves the
/// others (a socket still full after that is revisited on the next turn).
const READS_PER_TURN: usize = 16;

/// Messages queued for one connection's owner, in bytes. It takes them at
/// the end of the same event, so this is never near in a healthy run; at the
/// limit the connection ends with a protocol error (`error.read.ws_protocol`,
/// then the player reconnects) rather than the hub buffering without bound.
const MAX_INBOX: usize = 4 << 20;

thread_local! {
    /// The worker's hub, created on the first WebSocket.
    static HUB: RefCell<Option<Rc<Hub>>> = const { RefCell::new(None) };
}

/// The worker thread's WebSocket reader (see the section comment above).
pub struct Hub {
    epfd: AsyncFd<OwnedFd>,
    slots: RefCell<Slots>,
}

/// Registered connections by epoll key (`generation << 32 | index`): a key
/// of a freed slot never reaches its next tenant.
#[derive(Default)]
struct Slots {
    entries: Vec<Slot>,
    free: Vec<u32>,
}

#[derive(Default)]
struct Slot {
    gen: u32,
    entry: Option<Rc<Entry>>,
    /// Here rather than in the entry so that the hub can prefetch both
    /// from the slot (see [`Hub::prefetch`]).
    fast: Option<Rc<dyn FastPath>>,
}

impl Slots {
    fn get(&self, key: u64) -> Option<&Slot> {
        self.entries
            .get(key as u32 as usize)
            .filter(|s| s.gen == (key >> 32) as u32 && s.entry.is_some())
    }
}

/// The part of a connection that the hub and the connection's owner share.
struct Entry {
    fd: RawFd,
    key: Cell<u64>,
    rd: RefCell<WsRead>,
    /// False after a write met a full send buffer, until EPOLLOUT.
    writable: Cell<bool>,
    /// xorshift32 state for masking keys (need not be secret towards our
    /// own server).
    mask: Cell<u32>,
}

/// Read-side state of one connection; every buffer is normally empty (not
/// even allocated).
#[derive(Default)]
struct WsRead {
    /// Tail of a partial frame.
    partial: LazyBuf,
    /// Payload of a fragmented message being assembled.
    fragments: LazyBuf,
    /// Bytes to write: control replies (pong, close echo) the hub queued,
    /// frames the owner queued, what the socket did not take yet.
    pending_out: LazyBuf,
    /// Messages for the owner, in order: receipt µs (u64 LE), length (u32
    /// LE), payload.
    inbox: LazyBuf,
    /// How the read side ended; nothing is read after it.
    end: Option<ReadEnd>,
}

/// A byte buffer that costs one pointer while it is not in use, which is
/// most of a connection's life (four of them per connection: 32 bytes
/// instead of 96 for every player). The box is the point: the extra
/// allocation is made only while a buffer holds something.
#[derive(Default)]
#[allow(clippy::box_collection)]
struct LazyBuf(Option<Box<Vec<u8>>>);

impl LazyBuf {
    fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|v| v.is_empty())
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |v| v.len())
    }

    fn vec(&mut self) -> &mut Vec<u8> {
        self.0.get_or_insert_with(Default::default)
    }

    /// The contents, leaving nothing allocated.
    fn take(&mut self) -> Vec<u8> {
        self.0.take().map(|v| *v).unwrap_or_default()
    }
}

enum ReadEnd {
    /// Code and comeback, as [`ReadState::Closed`].
    Closed(Option<u16>, Option<u32>),
    Eof,
    Io(io::ErrorKind),
    Protocol(&'static str),
}

/// Room for `n` connections in this thread's hub, made before they come.
pub fn reserve_connections(n: usize) -> io::Result<()> {
    let hub = Hub::current()?;
    let mut slots = hub.slots.borrow_mut();
    let more = n.saturating_sub(slots.entries.len());
    slots.entries.reserve_exact(more);
    Ok(())
}

impl Hub {
    /// This thread's hub, started on first use (its loop is a local task).
    fn current() -> io::Result<Rc<Hub>> {
        HUB.with(|h| {
            if let Some(hub) = &*h.borrow() {
                return Ok(hub.clone());
            }
            // SAFETY: plain syscall; the fd is owned below.
            let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a fresh fd that nothing else owns.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: the `AsyncFd` owns the fd and nothing closes or
            // replaces it while registered.
            let epfd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE)? };
            let hub = Rc::new(Hub {
                epfd,
                slots: RefCell::new(Slots::default()),
            });
            tokio::task::spawn_local(hub.clone().run());
            *h.borrow_mut() = Some(hub.clone());
            Ok(hub)
        })
    }

    fn attach(
        self: Rc<Self>,
        stream: std::net::TcpStream,
        buffered: &[u8],
        mask: u32,
    ) -> io::Result<WsConn> {
        let entry = Rc::new(Entry {
            fd: stream.as_raw_fd(),
            key: Cell::new(0),
            rd: RefCell::new(WsRead::default()),
            writable: Cell::new(true),
            mask: Cell::new(mask),
        });
        if !buffered.is_empty() {
            entry.consume(buffered, crate::clock::wall_us(), None);
        }
        let key = {
            let mut s = self.slots.borrow_mut();
            let idx = match s.free.pop() {
                Some(i) => i,
                None => {
                    s.entries.push(Slot::default());
                    (s.entries.len() - 1) as u32
                }
            };
            let slot = &mut s.entries[idx as usize];
            slot.entry = Some(entry.clone());
            (u64::from(slot.gen) << 32) | u64::from(idx)
        };
        entry.key.set(key);
        let reg = HubReg { hub: self, entry };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: key,
        };
        // SAFETY: valid fds and a valid event struct.
        let rc = unsafe {
            libc::epoll_ctl(
                reg.hub.epfd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                reg.entry.fd,
                &mut ev,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()); // `reg` frees the slot
        }
        Ok(WsConn { reg, stream })
    }

    fn detach(&self, entry: &Entry) {
        let key = entry.key.get();
        // SAFETY: the fd is still open (see `WsConn`'s field order); a
        // failure only means it was not registered.
        unsafe {
            libc::epoll_ctl(
                self.epfd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                entry.fd,
                std::ptr::null_mut(),
            );
        }
        let mut s = self.slots.borrow_mut();
        if s.get(key).is_some() {
            let slot = &mut s.entries[key as u32 as usize];
            slot.gen = slot.gen.wrapping_add(1);
            slot.entry = None;
            slot.fast = None;
            s.free.push(key as u32);
        }
    }

    /// The hub's loop: wait for the epoll fd, take ready sockets in batches
    /// until it is drained, serve each one.
    async fn run(self: Rc<Self>) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        let mut scratch = vec![0u8; SCRATCH_BYTES].into_boxed_slice();
        let mut again: Vec<u64> = Vec::new();
        loop {
            if again.is_empty() {
                match self.epfd.readable().await {
                    // Cleared before draining: an event arriving meanwhile
                    // makes the epoll fd readable again.
                    Ok(mut guard) => guard.clear_ready(),
                    Err(e) => {
                        eprintln!("loadtest: WebSocket hub stopped: {e}");
                        return;
                    }
                }
            } else {
                tokio::task::yield_now().await;
                for key in std::mem::take(&mut again) {
                    self.dispatch(key, libc::EPOLLIN as u32, &mut scratch, &mut again);
                }
            }
            loop {
                // SAFETY: a valid epoll fd and a buffer of EVENTS entries.
                let n = unsafe {
                    libc::epoll_wait(
                        self.epfd.as_raw_fd(),
                        events.as_mut_ptr(),
                        EVENTS as libc::c_int,
                        0,
                    )
                };
                if n <= 0 {
                    break; // nothing ready (or EINTR: the fd stays readable)
                }
                let n = n as usize;
                self.prefetch_slots(&events[..n]);
                for i in 0..n {
                    self.prefetch(&events[..n], i);
                    let (key, flags) = (events[i].u64, events[i].events);
                    self.dispatch(key, flags, &mut scratch, &mut again);
                }
                if n < EVENTS {
                    break;
                }
                // A full batch: let the other tasks (the timers, joins and
                // connects) run before reading the next one, as tokio does
                // for a task that stays ready.
                tokio::task::yield_now().await;
            }
        }
    }

    /// Warm the slots of a whole batch before serving it, and (see
    /// [`Hub::prefetch`]) what each slot points to one event ahead: with
    /// 10 000 connections every entry is cold, and each cache miss cost
    /// about as much as the parse (the profile's top user-space lines were
    /// the first touch of the slot, the entry and the fast path's state).
    fn prefetch_slots(&self, events: &[libc::epoll_event]) {
        let s = self.slots.borrow();
        for ev in events {
            if let Some(slot) = s.entries.get(ev.u64 as u32 as usize) {
                prefetch((slot as *const Slot).cast());
            }
        }
    }

    /// Warm the entry and the fast path's state of event `i + 1` while
    /// event `i` is served: a `recv` worth of time for them to land.
    fn prefetch(&self, events: &[libc::epoll_event], i: usize) {
        let s = self.slots.borrow();
        if let Some(slot) = events.get(i + 1).and_then(|ev| s.get(ev.u64)) {
            if let Some(e) = &slot.entry {
                let p: *const u8 = Rc::as_ptr(e).cast();
                prefetch(p.wrapping_sub(16)); // the counts
                prefetch(p.wrapping_add(48));
                prefetch(p.wrapping_add(112));
            }
            if let Some(f) = &slot.fast {
                prefetch(Rc::as_ptr(f).cast());
            }
        }
    }

    fn dispatch(&self, key: u64, flags: u32, scratch: &mut [u8], again: &mut Vec<u64>) {
        let (entry, fast) = {
            let s = self.slots.borrow();
            match s.get(key) {
                Some(slot) => (slot.entry.clone(), slot.fast.clone()),
                None => return, // deregistered meanwhile
            }
        };
        let Some(entry) = entry else { return };
        let (more, wake) = entry.on_event(flags, scratch, fast.as_deref());
        if more {
            again.push(key);
        }
        if let Some(f) = fast {
            f.after_event(wake);
        }
    }
}

/// A connection's place in the hub; leaving it on drop.
struct HubReg {
    hub: Rc<Hub>,
    entry: Rc<Entry>,
}

impl Drop for HubReg {
    fn drop(&mut self) {
        self.hub.detach(&self.entry);
    }
}

const READ_FLAGS: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
const WRITE_FLAGS: u32 = (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32;

impl Entry {
    /// Serve one readiness event. Returns whether the socket may still hold
    /// data (read cap hit) and whether the connection's owner has something
    /// to act on (see [`FastPath::after_event`]).
    fn on_event(
        &self,
        flags: u32,
        scratch: &mut [u8],
        fast: Option<&dyn FastPath>,
    ) -> (bool, bool) {
        let mut wake = false;
        if flags & WRITE_FLAGS != 0 && !self.writable.get() {
            self.writable.set(true);
            wake = true;
        }
        let mut more = false;
        if flags & READ_FLAGS != 0 {
            more = self.read_ready(scratch, fast);
            let rd = self.rd.borrow();
            wake |= !rd.inbox.is_empty() || rd.end.is_some() || !rd.pending_out.is_empty();
        }
        (more, wake)
    }

    /// Read until the socket is drained (a short read: epoll is
    /// edge-triggered, so one `recv` per frame burst and no `recv` that only
    /// says EAGAIN), at most [`READS_PER_TURN`] times.
    fn read_ready(&self, scratch: &mut [u8], fast: Option<&dyn FastPath>) -> bool {
        for _ in 0..READS_PER_TURN {
            if self.rd.borrow().end.is_some() {
                return false;
            }
            // SAFETY: a valid socket fd and a writable buffer of its length.
            let n = unsafe { libc::recv(self.fd, scratch.as_mut_ptr().cast(), scratch.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => return false,
                    io::ErrorKind::Interrupted => continue,
                    kind => {
                        self.rd.borrow_mut().end = Some(ReadEnd::Io(kind));
                        return false;
                    }
                }
            }
            let n = n as usize;
            if n == 0 {
                self.rd.borrow_mut().end = Some(ReadEnd::Eof);
                return false;
            }
            self.consume(&scratch[..n], crate::clock::wall_us(), fast);
            if n < scratch.len() {
                return false;
            }
        }
        true
    }

    /// Parse complete frames from `data` (after any partial tail), deliver
    /// messages, keep the new tail. Sets `end` on a close frame or a
    /// protocol error.
    fn consume(&self, data: &[u8], now: u64, fast: Option<&dyn FastPath>) {
        let mut rd = self.rd.borrow_mut();
        let joined;
        let data = if rd.partial.is_empty() {
            data
        } else {
            let mut j = rd.partial.take();
            j.extend_from_slice(data);
            joined = j;
            &joined[..]
        };
        let mut off = 0;
        while rd.end.is_none() {
            let h = match parse_head(&data[off..]) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(NetError::Protocol(why)) => {
                    rd.end = Some(ReadEnd::Protocol(why));
                    return;
                }
                Err(_) => {
                    rd.end = Some(ReadEnd::Protocol("bad frame"));
                    return;
                }
            };
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
                0x1 | 0x2 if h.fin && rd.fragments.is_empty() => {
                    deliver(&mut rd, payload, now, fast)
                }
                0x1 | 0x2 => rd.fragments.vec().extend_from_slice(payload),
                0x0 => {
                    rd.fragments.vec().extend_from_slice(payload);
                    if h.fin {
                        let msg = rd.fragments.take();
                        deliver(&mut rd, &msg, now, fast);
                    }
                }
                0x8 => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    let comeback = payload.get(2..).and_then(close_retry_ms);
                    let echo = code.unwrap_or(1000).to_be_bytes();
                    encode_frame(&self.mask, 0x8, &echo, rd.pending_out.vec());
                    rd.end = Some(ReadEnd::Closed(code, comeback));
                    return;
                }
                0x9 => {
                    owned = payload.to_vec();
                    encode_frame(&self.mask, 0xA, &owned, rd.pending_out.vec());
                }
                0xA => {}
                _ => {
                    rd.end = Some(ReadEnd::Protocol("unknown opcode"));
                    return;
                }
            }
        }
        if off < data.len() {
            rd.partial.vec().extend_from_slice(&data[off..]);
        }
    }
}

/// A complete message: the fast path if nothing is queued before it, else
/// (or if it declines) the owner's inbox.
fn deliver(rd: &mut WsRead, payload: &[u8], now: u64, fast: Option<&dyn FastPath>) {
    if rd.inbox.is_empty() && fast.is_some_and(|f| f.on_text(payload, now)) {
        return;
    }
    if rd.inbox.len() + 12 + payload.len() > MAX_INBOX {
        rd.end = Some(ReadEnd::Protocol("backlog for the player over 4 MiB"));
        return;
    }
    let inbox = rd.inbox.vec();
    inbox.extend_from_slice(&now.to_le_bytes());
    inbox.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    inbox.extend_from_slice(payload);
}

/// A hint to load the cache line at `p` (nothing elsewhere than x86-64).
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Append one masked client frame to `out`.
fn encode_frame(mask: &Cell<u32>, opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
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
    let mut x = mask.get();
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    mask.set(x);
    let m = x.to_be_bytes();
    out.extend_from_slice(&m);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i & 3]));
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
    /// Hand this connection's messages to `fast` from now on (see
    /// [`FastPath`]); messages already queued stay queued, in order, for
    /// [`WsConn::read_available`].
    pub fn set_fast_path(&self, fast: Rc<dyn FastPath>) {
        let key = self.reg.entry.key.get();
        let mut s = self.reg.hub.slots.borrow_mut();
        if s.get(key).is_some() {
            s.entries[key as u32 as usize].fast = Some(fast);
        }
    }

    /// Call `on_text(payload, receipt µs)` for each message queued for the
    /// owner (those that came with the handshake's response, and any the
    /// fast path declined), in order; then say whether the socket is still
    /// open.
    pub fn read_available(
        &mut self,
        mut on_text: impl FnMut(&[u8], u64),
    ) -> Result<ReadState, NetError> {
        let entry = &self.reg.entry;
        let inbox = entry.rd.borrow_mut().inbox.take();
        let mut i = 0;
        while i + 12 <= inbox.len() {
            let now = u64::from_le_bytes(inbox[i..i + 8].try_into().unwrap_or_default());
            let len = u32::from_le_bytes(inbox[i + 8..i + 12].try_into().unwrap_or_default());
            let start = i + 12;
            i = start + len as usize;
            on_text(&inbox[start..i], now);
        }
        let mut rd = entry.rd.borrow_mut();
        match &rd.end {
            None => Ok(ReadState::Open),
            Some(ReadEnd::Closed(code, comeback)) => Ok(ReadState::Closed(*code, *comeback)),
            Some(ReadEnd::Eof) => Ok(ReadState::Eof),
            Some(ReadEnd::Io(kind)) => {
                let kind = *kind;
                rd.end = Some(ReadEnd::Eof);
                Err(NetError::Io(kind.into()))
            }
            Some(ReadEnd::Protocol(why)) => {
                let why = *why;
                rd.end = Some(ReadEnd::Eof);
                Err(NetError::Protocol(why))
            }
        }
    }

    /// Queue `payload` as one masked text frame (then [`WsConn::flush`]).
    pub fn frame_text(&self, payload: &[u8]) {
        let entry = &self.reg.entry;
        encode_frame(
            &entry.mask,
            0x1,
            payload,
            entry.rd.borrow_mut().pending_out.vec(),
        );
    }

    /// Write what is queued (frames, and the control replies the hub
    /// prepared: pong, close echo) as far as the socket takes it now,
    /// without waiting: the rest stays queued, and the hub's next EPOLLOUT
    /// calls the fast path's `after_event` with `wake` to go on. Emptied,
    /// the queue gives its memory back (a player writes a few bytes a
    /// question).
    pub fn flush(&self) -> io::Result<()> {
        let entry = &self.reg.entry;
        let out = entry.rd.borrow_mut().pending_out.take();
        let mut done = 0;
        while done < out.len() {
            match (&self.stream).write(&out[done..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    entry.writable.set(false);
                    // Nothing was queued meanwhile: the hub does not run.
                    entry
                        .rd
                        .borrow_mut()
                        .pending_out
                        .vec()
                        .extend_from_slice(&out[done..]);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Send a close frame if the socket takes it now (the server sees EOF
    /// otherwise), shut the write side and drop the connection.
    pub fn close_now(self, code: u16) {
        let entry = &self.reg.entry;
        if !matches!(entry.rd.borrow().end, Some(ReadEnd::Closed(..))) {
            let mut out = Vec::with_capacity(8);
            encode_frame(&entry.mask, 0x8, &code.to_be_bytes(), &mut out);
            let _ = (&self.stream).write(&out);
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
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
    fn a_joining_players_futures_stay_small() {
        // Part of the task of every player joining or connecting, hundreds
        // at once through edge-lb during a ramp: no read buffer on the
        // stack across an `.await` (they were 8.8 KB and 2.4 KB).
        let t = Target::parse("http://127.0.0.1:1").unwrap();
        let join = http_request(&t, None, "POST", "/", &[], None, Duration::from_secs(1));
        let ws = ws_connect(&t, None, "/", 1, Duration::from_secs(1));
        let (join, ws) = (std::mem::size_of_val(&join), std::mem::size_of_val(&ws));
        eprintln!("futures: http_request {join} bytes, ws_connect {ws} bytes");
        assert!(join <= 1536, "http_request's future is {join} bytes");
        assert!(ws <= 1024, "ws_connect's future is {ws} bytes");
    }

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

    /// A server frame (unmasked).
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode, payload.len() as u8];
        f.extend_from_slice(payload);
        f
    }

    /// Takes messages starting with `b`, declines the rest.
    struct Boards(RefCell<Vec<(Vec<u8>, u64)>>);

    impl FastPath for Boards {
        fn on_text(&self, payload: &[u8], now: u64) -> bool {
            let mine = payload.starts_with(b"b");
            if mine {
                self.0.borrow_mut().push((payload.to_vec(), now));
            }
            mine
        }
        fn after_event(self: Rc<Self>, _wake: bool) {}
    }

    fn drain(entry: &Entry) -> Vec<(Vec<u8>, u64)> {
        let inbox = entry.rd.borrow_mut().inbox.take();
        let mut out = Vec::new();
        let mut i = 0;
        while i < inbox.len() {
            let now = u64::from_le_bytes(inbox[i..i + 8].try_into().unwrap());
            let len = u32::from_le_bytes(inbox[i + 8..i + 12].try_into().unwrap()) as usize;
            out.push((inbox[i + 12..i + 12 + len].to_vec(), now));
            i += 12 + len;
        }
        out
    }

    fn entry_for_test() -> Entry {
        Entry {
            fd: -1,
            key: Cell::new(0),
            rd: RefCell::new(WsRead::default()),
            writable: Cell::new(true),
            mask: Cell::new(1),
        }
    }

    #[test]
    fn close_reason_comeback_is_a_bounded_plain_number() {
        assert_eq!(close_retry_ms(b"retry_after_ms=1234"), Some(1234));
        assert_eq!(close_retry_ms(b"retry_after_ms=0"), Some(0));
        assert_eq!(close_retry_ms(b"drain; retry_after_ms=250"), Some(250));
        assert_eq!(close_retry_ms(b"retry_after_ms=999999999"), Some(60_000));
        for r in [
            &b""[..],
            b"bye",
            b"retry_after_ms=",
            b"retry_after_ms=-5",
            b"retry_after_ms=12x",
            b"xretry_after_ms=5",
            b"retry_after_ms=1234567890",
            b"retry_after_ms=\xff",
        ] {
            assert_eq!(close_retry_ms(r), None, "{:?}", String::from_utf8_lossy(r));
        }
    }

    #[test]
    fn hub_fast_path_keeps_order_and_splits_frames() {
        let entry = entry_for_test();
        let fast = Boards(RefCell::new(Vec::new()));
        let f: Option<&dyn FastPath> = Some(&fast);
        // A board is taken by the fast path; a welcome is queued, and the
        // board after it queues behind it (order), even in another read.
        let mut data = frame(1, b"b1");
        data.extend(frame(1, b"welcome"));
        data.extend(frame(1, b"b2"));
        entry.consume(&data, 10, f);
        let split = frame(1, b"b3");
        entry.consume(&split[..2], 11, f);
        assert!(!entry.rd.borrow().partial.is_empty());
        entry.consume(&split[2..], 12, f);
        assert_eq!(*fast.0.borrow(), vec![(b"b1".to_vec(), 10)]);
        assert_eq!(
            drain(&entry),
            vec![
                (b"welcome".to_vec(), 10),
                (b"b2".to_vec(), 10),
                (b"b3".to_vec(), 12)
            ]
        );
        assert!(entry.rd.borrow().partial.0.is_none());
        // Drained: boards go to the fast path again.
        entry.consume(&frame(1, b"b4"), 13, f);
        assert_eq!(fast.0.borrow().len(), 2);
        assert!(entry.rd.borrow().inbox.is_empty());
        // A ping queues a pong; a close frame ends the read side and
        // queues its echo; nothing after it is delivered.
        entry.consume(&frame(9, b"p"), 14, f);
        assert!(!entry.rd.borrow().pending_out.is_empty());
        let mut data = frame(8, &4001u16.to_be_bytes());
        data.extend(frame(1, b"late"));
        entry.consume(&data, 15, f);
        assert!(matches!(
            entry.rd.borrow().end,
            Some(ReadEnd::Closed(Some(4001), None))
        ));
        // edge-lb's 1012 with a comeback in its reason.
        let entry2 = entry_for_test();
        let mut payload = 1012u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"retry_after_ms=2500");
        entry2.consume(&frame(8, &payload), 16, f);
        assert!(matches!(
            entry2.rd.borrow().end,
            Some(ReadEnd::Closed(Some(1012), Some(2500)))
        ));
        assert!(drain(&entry).is_empty());
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

//! WebSocket tunnels: the hot path for long-lived connections.
//!
//! edge-lb forwards the upgrade itself instead of through pingora's `ProxyHttp` duplex loop:
//! - pingora issue #946: when the backend's `101` is read before the upgrade request's empty
//!   body task, pingora ends the tunnel right after the handshake. Here the handshake is a
//!   plain request/response exchange, and every byte the backend sent after its `101` head
//!   (a first frame in the same segment) is forwarded with it.
//! - pingora issue #571: a proxied upgrade cannot be closed from outside. Here each tunnel is
//!   registered per backend with a cancellation token ([`Cluster::register_tunnel`]), so a lost
//!   node's tunnels close at once and a drained node's close at a configured rate.
//! - Idle cut-off is `tunnel.idle_timeout` (no hidden 60 s downstream read timeout).
//!
//! [`Splice`] copies both directions in one task with no per-connection buffer while idle:
//! reads go into a thread-local scratch buffer and are written straight on; only bytes the
//! destination could not take yet are copied into a per-direction `Vec` (backpressure: the
//! source is not read again until it drains). An idle tunnel costs its task and two sockets.

use std::borrow::Cow;
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::access::{Kind, Record};
use crate::cancel::TunnelCancel;
use crate::cluster::{CloseReason, Closing, Cluster, TunnelGuard};
use crate::head::{Head, CLIENT_ADDRESS_HEADERS};
use crate::refusal::{refuse, Refusal};

const SCRATCH: usize = 16 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// Tracks WebSocket frame boundaries in the backend → client stream (server frames), so that
/// edge-lb can append a close frame (1012, "service restart") when it ends a tunnel: clients then
/// see a clean close with a reason instead of a bare TCP close.
#[derive(Default)]
struct FrameTracker {
    hdr: [u8; 14],
    hdr_len: usize,
    remaining: u64,
    /// A malformed stream (or not WebSocket at all): never inject.
    lost: bool,
    /// A close frame passed: this side began (or answered) the WebSocket close handshake.
    close_seen: bool,
}

impl FrameTracker {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.lost {
            if self.remaining > 0 {
                let n = (self.remaining.min(data.len() as u64)) as usize;
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            self.hdr[self.hdr_len] = data[0];
            self.hdr_len += 1;
            data = &data[1..];
            if self.hdr_len < 2 {
                continue;
            }
            let masked = self.hdr[1] & 0x80 != 0;
            let len7 = self.hdr[1] & 0x7f;
            let need =
                2 + match len7 {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                } + if masked { 4 } else { 0 };
            if self.hdr_len < need {
                continue;
            }
            let len = match len7 {
                126 => u64::from(u16::from_be_bytes([self.hdr[2], self.hdr[3]])),
                127 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.hdr[2..10]);
                    u64::from_be_bytes(b)
                }
                n => u64::from(n),
            };
            if len > (1 << 40) {
                self.lost = true;
            }
            if self.hdr[0] & 0x0f == 0x8 {
                self.close_seen = true;
            }
            self.remaining = len;
            self.hdr_len = 0;
        }
    }

    fn at_boundary(&self) -> bool {
        !self.lost && self.hdr_len == 0 && self.remaining == 0
    }
}

#[derive(Default)]
struct Dir {
    pending: Vec<u8>,
    off: usize,
    need_flush: bool,
    eof: bool,
    shut: bool,
    frames: Option<FrameTracker>,
    /// Bytes read from this direction's source (the access record's byte counts).
    bytes: u64,
    /// Backend → client only, while the client has not begun to close: an end of stream with
    /// no close frame before it, at a frame boundary, is not passed on as a shutdown; the
    /// tunnel ends [`End::Vanished`] so a 1012 with a comeback can still be written.
    hold_vanish: bool,
    /// That happened.
    vanished: bool,
}

enum ReadStep {
    Pending,
    Eof,
    Data,
    Err(io::Error),
}

/// Move bytes `src → dst` until blocked. `Ready(Ok)` once `src` hit EOF and `dst` was shut.
fn pump<R, W>(
    cx: &mut Context<'_>,
    src: &mut R,
    dst: &mut W,
    d: &mut Dir,
    moved: &mut bool,
) -> Poll<io::Result<()>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if d.shut {
        return Poll::Ready(Ok(()));
    }
    // Bounded work per poll so one busy tunnel does not starve its neighbours.
    for _ in 0..32 {
        while d.off < d.pending.len() {
            match Pin::new(&mut *dst).poll_write(cx, &d.pending[d.off..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    d.off += n;
                    d.need_flush = true;
                    *moved = true;
                }
            }
        }
        if !d.pending.is_empty() {
            d.pending = Vec::new();
            d.off = 0;
        }
        if d.need_flush {
            match Pin::new(&mut *dst).poll_flush(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => d.need_flush = false,
            }
        }
        if d.eof {
            if d.hold_vanish
                && d.frames
                    .as_ref()
                    .is_some_and(|f| f.at_boundary() && !f.close_seen)
            {
                d.vanished = true;
                return Poll::Ready(Ok(()));
            }
            return match Pin::new(&mut *dst).poll_shutdown(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(_) => {
                    d.shut = true;
                    Poll::Ready(Ok(()))
                }
            };
        }
        let step = SCRATCH_BUF.with(|cell| {
            let mut scratch = cell.borrow_mut();
            let mut rb = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut *src).poll_read(cx, &mut rb) {
                Poll::Pending => ReadStep::Pending,
                // A killed node resets the sockets that still held unread bytes (an answer
                // in flight): for the tunnel that is its node going away, as an end of stream.
                Poll::Ready(Err(e))
                    if d.hold_vanish && e.kind() == io::ErrorKind::ConnectionReset =>
                {
                    ReadStep::Eof
                }
                Poll::Ready(Err(e)) => ReadStep::Err(e),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        return ReadStep::Eof;
                    }
                    d.bytes += n as u64;
                    if let Some(f) = d.frames.as_mut() {
                        f.feed(&scratch[..n]);
                    }
                    // Write straight through; keep only what the destination refused.
                    match Pin::new(&mut *dst).poll_write(cx, &scratch[..n]) {
                        Poll::Ready(Ok(w)) if w == n => d.need_flush = true,
                        Poll::Ready(Ok(w)) => {
                            d.pending = scratch[w..n].to_vec();
                            d.need_flush = true;
                        }
                        Poll::Pending => d.pending = scratch[..n].to_vec(),
                        Poll::Ready(Err(e)) => return ReadStep::Err(e),
                    }
                    ReadStep::Data
                }
            }
        });
        match step {
            ReadStep::Pending => {
                if d.need_flush {
                    continue;
                }
                return Poll::Pending;
            }
            ReadStep::Err(e) => return Poll::Ready(Err(e)),
            ReadStep::Eof => d.eof = true,
            ReadStep::Data => *moved = true,
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed (normal close propagation), or one did and the other did not follow
    /// within the linger; `client_first`: the client's side ended first.
    Closed { client_first: bool },
    /// No byte either way for the idle timeout.
    Idle,
    /// Closed by edge-lb (node lost, drain, rebalance); `at_boundary` when everything the
    /// backend sent has been delivered and ends on a frame boundary.
    Cancelled { at_boundary: bool },
    /// A socket error on either side.
    Error,
    /// The backend's stream ended (or was reset) without a WebSocket close, on a frame
    /// boundary, while the client was not closing: the node went away (killed, crashed). The
    /// client's side is still open, everything the node sent delivered.
    Vanished,
}

/// Bidirectional copy between a client and a backend with idle timeout and cancellation.
pub struct Splice<'a, A, B> {
    client: &'a mut A,
    backend: &'a mut B,
    up: Dir,
    down: Dir,
    idle: Duration,
    linger: Duration,
    last: Instant,
    half_closed_at: Option<Instant>,
    /// Which side ended first (true: the client): the first to send a WebSocket close frame,
    /// else the first end of stream. For the access record: in a WebSocket close the server
    /// closes TCP first (RFC 6455 §7.1.1), so end of stream alone would blame the node for
    /// every close a client began.
    client_first: Option<bool>,
    timer: Pin<Box<tokio::time::Sleep>>,
    cancel: Option<TunnelCancel>,
}

impl<'a, A, B> Splice<'a, A, B> {
    pub fn new(
        client: &'a mut A,
        backend: &'a mut B,
        idle: Duration,
        linger: Duration,
        cancel: Option<TunnelCancel>,
    ) -> Self {
        Splice {
            client,
            backend,
            up: Dir::default(),
            down: Dir::default(),
            idle,
            linger,
            last: Instant::now(),
            half_closed_at: None,
            client_first: None,
            timer: Box::pin(tokio::time::sleep(idle)),
            cancel,
        }
    }

    /// Track WebSocket frames: boundaries of the backend → client direction (where a 1012 may
    /// be appended), and close frames both ways (who ended the tunnel).
    pub fn track_frames(mut self) -> Self {
        self.down.frames = Some(FrameTracker::default());
        self.up.frames = Some(FrameTracker::default());
        self
    }

    /// Bytes moved so far: client → backend, backend → client.
    pub fn bytes(&self) -> (u64, u64) {
        (self.up.bytes, self.down.bytes)
    }

    /// Which side had ended first (true: the client), if one had.
    pub fn closed_first(&self) -> Option<bool> {
        self.client_first
    }
}

impl<A, B> Future for Splice<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    type Output = End;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<End> {
        let this = &mut *self;
        if let Some(c) = this.cancel.as_ref() {
            if c.poll_cancelled(cx).is_ready() {
                let d = &this.down;
                let at_boundary = d.off >= d.pending.len()
                    && !d.need_flush
                    && !d.eof
                    && d.frames.as_ref().is_some_and(FrameTracker::at_boundary);
                return Poll::Ready(End::Cancelled { at_boundary });
            }
        }
        let mut moved = false;
        let up = pump(cx, this.client, this.backend, &mut this.up, &mut moved);
        // A node that vanishes while the client is not closing leaves the client's side open.
        this.down.hold_vanish = this.down.frames.is_some()
            && !this.up.eof
            && !this.up.frames.as_ref().is_some_and(|f| f.close_seen);
        let down = pump(cx, this.backend, this.client, &mut this.down, &mut moved);
        if this.down.vanished {
            return Poll::Ready(End::Vanished);
        }
        if this.client_first.is_none() {
            let closed = |d: &Dir| d.frames.as_ref().is_some_and(|f| f.close_seen);
            if closed(&this.up) || closed(&this.down) {
                this.client_first = Some(closed(&this.up));
            } else if this.up.eof || this.down.eof {
                this.client_first = Some(this.up.eof);
            }
        }
        let closed = End::Closed {
            client_first: this.client_first.unwrap_or(true),
        };
        match (&up, &down) {
            (Poll::Ready(Err(_)), _) | (_, Poll::Ready(Err(_))) => return Poll::Ready(End::Error),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(closed),
            (Poll::Ready(Ok(())), _) | (_, Poll::Ready(Ok(()))) => {
                // One side closed and its close was passed on; give the other side `linger`.
                let now = Instant::now();
                let at = *this.half_closed_at.get_or_insert(now);
                if now.duration_since(at) >= this.linger {
                    return Poll::Ready(closed);
                }
                let deadline = at + this.linger;
                if deadline < this.last + this.idle {
                    this.timer
                        .as_mut()
                        .reset(tokio::time::Instant::from_std(deadline));
                }
            }
            _ => {}
        }
        if moved {
            this.last = Instant::now();
        }
        // The timer is re-armed lazily: activity only moves `last`, the timer fires at the old
        // deadline and is pushed out then (one timer operation per idle period, not per frame).
        loop {
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if let Some(at) = this.half_closed_at {
                if at.elapsed() >= this.linger {
                    return Poll::Ready(closed);
                }
            }
            if this.last.elapsed() >= this.idle {
                return Poll::Ready(End::Idle);
            }
            let next = this.last + this.idle;
            this.timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(next));
        }
    }
}

fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let mut parts = line.split(|b| *b == b' ');
    parts.next()?;
    std::str::from_utf8(parts.next()?).ok()?.trim().parse().ok()
}

/// The upgrade request as the node gets it: the head without the client's own
/// client-address headers (`X-Forwarded-For`, `Forwarded`, `X-Real-IP`), and `X-Forwarded-For`
/// set to exactly the TCP peer. Bytes the client sent after its head are not included: they
/// reach the node only once it has answered `101` (see [`serve_upgrade`]).
fn forward_head(head: &Head, peer: Option<std::net::IpAddr>) -> Vec<u8> {
    use std::io::Write as _;
    let mut out = Vec::with_capacity(head.len + 64);
    // Every line of the head but the final empty one, each with its CRLF.
    let mut lines = head.buf[..head.len - 2].split_inclusive(|b| *b == b'\n');
    if let Some(request_line) = lines.next() {
        out.extend_from_slice(request_line);
    }
    for line in lines {
        let name = line.split(|b| *b == b':').next().unwrap_or(b"");
        let name = name.trim_ascii();
        if CLIENT_ADDRESS_HEADERS
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
        {
            continue;
        }
        out.extend_from_slice(line);
    }
    if let Some(ip) = peer {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "X-Forwarded-For: {ip}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

async fn read_response_head(b: &mut TcpStream, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut scanned: usize = 0;
    loop {
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(2048);
        }
        let n = b.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let from = scanned.saturating_sub(3);
        scanned = buf.len();
        if buf[from..].windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(buf);
        }
        if buf.len() > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head too large",
            ));
        }
    }
}

/// What an upgrade's access record knows from its request, kept small because the tunnel
/// task carries it for the tunnel's life: the client, when the head began, and the path's
/// tail after `/v1/quizzes/{quiz}` (the quiz is in the registry guard). The tail is the
/// static `/ws` in practice, so a tunnel costs no allocation for its record until (and unless)
/// the record is written.
struct Origin {
    client: Option<SocketAddr>,
    started: tokio::time::Instant,
    tail: Cow<'static, str>,
}

impl Origin {
    fn new(client: Option<SocketAddr>, head: &Head, quiz: &str) -> Origin {
        // `tunnel_for` routed this head as `/v1/quizzes/{quiz}…` (origin form, checked by
        // `quiz_path`); the query string is cut here and never stored.
        let path = head.path.split(['?', '#']).next().unwrap_or("");
        let tail = path
            .strip_prefix("/v1/quizzes/")
            .and_then(|p| p.strip_prefix(quiz))
            .unwrap_or("");
        let tail = match tail {
            "/ws" => Cow::Borrowed("/ws"),
            "/ws/" => Cow::Borrowed("/ws/"),
            t => Cow::Owned(t.to_string()),
        };
        Origin {
            client,
            started: head.started,
            tail,
        }
    }

    /// Write the record if sampled (`error`: always). The path is rebuilt only then.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        cluster: &Cluster,
        error: bool,
        quiz: &str,
        node: Option<(&str, SocketAddr)>,
        status: u16,
        bytes: (u64, u64),
        end: &'static str,
        reason: &'static str,
    ) {
        if !cluster.access.sampled(error) {
            return;
        }
        let path = format!("/v1/quizzes/{quiz}{}", self.tail);
        Record {
            kind: Kind::Ws,
            client: self.client,
            method: "GET",
            path: &path,
            quiz: Some(quiz),
            node: node.map(|n| n.0),
            node_addr: node.map(|n| n.1),
            status,
            bytes_received: bytes.0,
            bytes_sent: bytes.1,
            duration: self.started.elapsed(),
            end,
            reason,
        }
        .emit();
    }

    /// Refuse the upgrade (answer, count) and record the refusal (always).
    async fn refuse<C: AsyncWrite + Unpin>(
        &self,
        client: &mut C,
        cluster: &Cluster,
        quiz: &str,
        node: Option<(&str, SocketAddr)>,
        r: Refusal,
    ) {
        self.record(
            cluster,
            true,
            quiz,
            node,
            r.status(),
            (0, 0),
            "refused",
            r.kind(),
        );
        refuse(client, &cluster.metrics, r).await;
    }
}

/// Proxy one WebSocket upgrade for `quiz`; on success hand the tunnel to its own task.
///
/// The handshake runs in the connection task pingora spawned (its future is large: pingora's
/// accept/handshake state plus edge-lb's boxed `process_new`, about 4 KB per connection).
/// Once the backend has answered `101`, the two sockets, the registry guard and `keep` (the
/// caller's per-connection accounting, released when the tunnel ends) move into a new task
/// that holds only [`run_tunnel`]'s state, and this function returns so pingora's task ends
/// and frees its memory. A long-lived tunnel then costs that small task, two sockets and its
/// registry entry. Tasks live on the same runtime as pingora's, so shutdown treats them alike.
pub async fn serve_upgrade<C, K>(
    cluster: &Arc<Cluster>,
    mut client: C,
    head: Head,
    quiz: &str,
    peer: Option<SocketAddr>,
    keep: K,
) where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    K: Send + 'static,
{
    let started = Instant::now();
    let origin = Origin::new(peer, &head, quiz);
    let cfg = cluster.config();
    let pool = &cfg.routes.websocket;
    let m = &cluster.metrics;
    // A player of a quiz spread over several nodes goes to its node of the spread; hosts,
    // ordinary quizzes and unreadable tokens to the quiz's first node (crate::spread).
    let claims = crate::spread::claims_of_target(&head.path, quiz);
    if let Some(k) = claims.as_ref().and_then(|c| c.spread) {
        cluster.spread_seen(quiz, k);
    }
    let player = claims
        .as_ref()
        .filter(|c| c.spreads())
        .map(|c| (c.player_id.as_str(), c.k()));
    let Some(target) = cluster.route_ws(pool, quiz, player) else {
        origin
            .refuse(&mut client, cluster, quiz, None, Refusal::NoBackend)
            .await;
        return;
    };
    let node = Some((&*target.backend, target.addr));
    // A reconnect storm (a node lost, its quizzes moved) must not re-overload the node it
    // lands on: new tunnels per node are paced, the rest told to come back (jittered).
    if let Err(r) = cluster.node_rate.admit(&target.backend) {
        origin.refuse(&mut client, cluster, quiz, node, r).await;
        return;
    }
    let forward = forward_head(&head, peer.map(|a| a.ip()));
    let early = head.buf[head.len..].to_vec();
    drop(head);
    let source = cluster
        .source_addresses
        .pick(&cfg.source_addresses, target.addr);
    let connect = crate::speculative::connect_and_send(target.addr, source, &forward);
    let (mut backend, sent) = match tokio::time::timeout(cfg.tunnel.connect_timeout, connect).await
    {
        Ok(Ok(s)) => s,
        r => {
            if matches!(&r, Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused) {
                cluster.connect_refused(&target.backend);
            }
            origin
                .refuse(
                    &mut client,
                    cluster,
                    quiz,
                    node,
                    Refusal::BackendUnreachable,
                )
                .await;
            return;
        }
    };
    let handshake = async {
        backend.write_all(&forward[sent..]).await?;
        read_response_head(&mut backend, 16 * 1024).await
    };
    let mut resp = match tokio::time::timeout(cfg.tunnel.handshake_timeout, handshake).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) | Err(_) => {
            origin
                .refuse(&mut client, cluster, quiz, node, Refusal::HandshakeFailed)
                .await;
            return;
        }
    };
    drop(forward);
    let status = status_of(&resp);
    // A refused token counts against the client's address; core's marker never reaches it.
    crate::auth::upgrade_answered(cluster, peer.map(|a| a.ip()), status, &mut resp);
    let upgraded = status == Some(101);
    // Bytes the node sent behind its response head (a first frame, or a refusal's body).
    let after_head = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |p| resp.len() - p - 4) as u64;
    // Registered before the client hears of it: once a client has its 101, a drain, a node
    // loss or a rebalance that follows always finds (and closes) its tunnel.
    let guard =
        upgraded.then(|| cluster.register_tunnel(pool, target.backend.clone(), quiz, player));
    // Forward the whole read: the 101 head and any frame the backend sent right behind it.
    // The flush matters on TLS listeners (buffered); on plain ones it is free.
    if client.write_all(&resp).await.is_err() || client.flush().await.is_err() {
        let status = status.unwrap_or(0);
        origin.record(
            cluster,
            true,
            quiz,
            node,
            status,
            (0, 0),
            "error",
            "tunnel_io",
        );
        return;
    }
    let Some(guard) = guard else {
        m.upgrades.with_label_values(&["rejected"]).inc();
        // The node refused the upgrade: pass its answer on and nothing more. No byte of the
        // client's reaches the node after the refused request (otherwise a client could send
        // further requests — `GET /metrics`, say — over a raw connection to the node, past
        // every check of edge-lb's). Half-close toward the node so it ends the connection once
        // its answer is out, and copy the rest of that answer, bounded in time.
        let _ = backend.shutdown().await;
        let copied = tokio::time::timeout(
            cfg.tunnel.handshake_timeout,
            tokio::io::copy(&mut backend, &mut client),
        )
        .await;
        let _ = client.flush().await;
        let _ = tokio::time::timeout(Duration::from_millis(200), client.shutdown()).await;
        let copied = match copied {
            Ok(Ok(n)) => n,
            _ => 0,
        };
        let status = status.unwrap_or(0);
        let error = status == 0 || status >= 400;
        let out = (0, after_head + copied);
        origin.record(cluster, error, quiz, node, status, out, "rejected", "");
        return;
    };
    drop(resp);
    // What the client sent behind its upgrade request goes to the node now that it said 101.
    if !early.is_empty() && backend.write_all(&early).await.is_err() {
        origin.record(cluster, true, quiz, node, 101, (0, 0), "error", "tunnel_io");
        return;
    }
    m.upgrades.with_label_values(&["ok"]).inc();
    m.upgrade_seconds
        .with_label_values(&[&target.backend])
        .observe(started.elapsed().as_secs_f64());
    tokio::spawn(run_tunnel(
        cluster.clone(),
        client,
        backend,
        guard,
        keep,
        cfg.tunnel.idle_timeout,
        cfg.tunnel.close_linger,
        TunnelLog {
            origin,
            node_addr: target.addr,
            pre: (early.len() as u64, after_head),
        },
    ));
}

/// The access record's part of a tunnel task: where it came from, the node's address and the
/// frame bytes that passed during the handshake (client → node, node → client).
struct TunnelLog {
    origin: Origin,
    node_addr: SocketAddr,
    pre: (u64, u64),
}

/// The close frame edge-lb appends when it ends a tunnel: 1012 ("service restart"), with the
/// reason `retry_after_ms=<n>` when edge-lb chose the client's comeback (asyncapi.yaml
/// `x-close-codes`): an unmasked server frame, at most 2 + 22 payload bytes.
fn close_frame_1012(retry_after_ms: Option<u32>) -> Vec<u8> {
    let reason = retry_after_ms.map(|ms| format!("retry_after_ms={ms}"));
    let reason = reason.as_deref().unwrap_or("").as_bytes();
    let mut frame = Vec::with_capacity(4 + reason.len());
    frame.extend_from_slice(&[0x88, (2 + reason.len()) as u8]);
    frame.extend_from_slice(&1012u16.to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

/// Write the 1012 to the client, best effort, within 500 ms (a client that does not read is
/// closed without it).
async fn send_1012<C: AsyncWrite + Unpin>(client: &mut C, retry_after_ms: Option<u32>) {
    let close = close_frame_1012(retry_after_ms);
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let _ = client.write_all(&close).await;
        let _ = client.flush().await;
    })
    .await;
}

/// The access record's words for how a tunnel ended, and whether that is an error (always
/// recorded): a socket error, the idle timeout, and the node lost are; the ends edge-lb
/// chooses in the normal course (drain, rebalance, removal, shutdown) and ordinary closes
/// are sampled like successes.
fn end_words(end: End, closed_by: Option<CloseReason>) -> (&'static str, bool) {
    match end {
        End::Closed { client_first: true } => ("client_closed", false),
        End::Closed {
            client_first: false,
        } => ("node_closed", false),
        End::Idle => ("idle", true),
        End::Error => ("error", true),
        End::Vanished => ("node_vanished", true),
        End::Cancelled { .. } => match closed_by {
            Some(CloseReason::NodeLost) => ("node_lost", true),
            Some(r) => (r.as_str(), false),
            // Cancelled without a recorded pick cannot happen (every cancel picks first);
            // say so rather than guess.
            None => ("cancelled", true),
        },
    }
}

/// The body of a tunnel's own task: splice until the end, then account for how it ended.
///
/// This future's size is the per-tunnel task cost, so it is written for size:
/// - a plain `fn` returning an `async move` block, not an `async fn`: an `async fn` moves its
///   arguments into locals at its first poll and the generator keeps room for both copies
///   (rust-lang/rust#62958), ~370 bytes per tunnel here; the block uses its captures in place;
/// - everything after the splice (the 1012 with its timeout, the access record, the close
///   with its timeout: tokio's `Timeout` holds a whole timer inline) runs in [`finish_tunnel`],
///   boxed, so it is allocated when the tunnel ends instead of being reserved in every open
///   tunnel's task for its whole life.
// Not an `async fn` on purpose (the size of this future, above).
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
fn run_tunnel<C, K>(
    cluster: Arc<Cluster>,
    mut client: C,
    mut backend: TcpStream,
    guard: TunnelGuard,
    keep: K,
    idle: Duration,
    linger: Duration,
    log: TunnelLog,
) -> impl Future<Output = ()> + Send
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    K: Send + 'static,
{
    async move {
        let (end, bytes, closed_first) = {
            let mut splice = Splice::new(
                &mut client,
                &mut backend,
                idle,
                linger,
                Some(guard.token.clone()),
            )
            .track_frames();
            let end = (&mut splice).await;
            (end, splice.bytes(), splice.closed_first())
        };
        let done = Spliced {
            end,
            bytes,
            closed_first,
        };
        Box::pin(finish_tunnel(
            cluster, client, backend, guard, keep, log, done,
        ))
        .await;
    }
}

/// How a tunnel's splice ended: the end, the bytes moved (client → node, node → client) and
/// which side had begun to close.
struct Spliced {
    end: End,
    bytes: (u64, u64),
    closed_first: Option<bool>,
}

/// A tunnel's end: out of the registry, its 1012 if edge-lb ended it or its node vanished, the
/// metrics and the access record, then the client's side closed.
async fn finish_tunnel<C, K>(
    cluster: Arc<Cluster>,
    mut client: C,
    backend: TcpStream,
    mut guard: TunnelGuard,
    keep: K,
    log: TunnelLog,
    done: Spliced,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let Spliced {
        end,
        bytes: (up, down),
        closed_first,
    } = done;
    // Out of the registry first: how edge-lb closed it (if it did) gives the close frame's
    // comeback (a vanished tunnel's is drawn while it still counts in its batch).
    let vanished = (end == End::Vanished).then(|| guard.vanished_comeback());
    let closing = guard.deregister();
    let m = &cluster.metrics;
    match end {
        End::Idle => m.tunnels_closed.with_label_values(&["idle"]).inc(),
        End::Error => m.error("tunnel_io"),
        End::Cancelled { at_boundary: true } => {
            // 1012 "service restart": reconnect (to the quiz's new owner), after the comeback.
            send_1012(&mut client, closing.map(|c| c.retry_after_ms)).await;
        }
        End::Cancelled { at_boundary: false } => {
            tracing::debug!("tunnel closed mid-frame: no 1012 appended");
        }
        End::Vanished => {
            // The node went away without a close: the client still gets a 1012 and when to
            // come back, like the tunnels edge-lb closes itself, so a killed node's crowd does
            // not return at one instant.
            m.tunnels_closed.with_label_values(&["node_vanished"]).inc();
            send_1012(&mut client, vanished).await;
        }
        End::Closed { .. } => {}
    }
    let closed_by = closing.map(|c: Closing| c.reason);
    // A tunnel cancelled, or failing, once one side had begun to close (a close frame or
    // its end of stream) was ending because of that side: say so. The common case is a client
    // that sends its close frame and drops the socket at once: the node's answering close
    // frame then meets a reset (still counted as `tunnel_io` in the metrics), and recording
    // that as a failure would flood the log with ordinary closes.
    let (words, error) = match (end, closed_first) {
        (End::Cancelled { .. } | End::Error, Some(client_first)) => {
            end_words(End::Closed { client_first }, None)
        }
        _ => end_words(end, closed_by),
    };
    log.origin.record(
        &cluster,
        error,
        guard.quiz(),
        Some((guard.backend(), log.node_addr)),
        101,
        (log.pre.0 + up, log.pre.1 + down),
        words,
        if words == "error" { "tunnel_io" } else { "" },
    );
    drop(guard);
    drop(backend);
    let _ = tokio::time::timeout(Duration::from_millis(200), client.shutdown()).await;
    drop(keep);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_tracker_finds_boundaries_across_splits() {
        let mut f = FrameTracker::default();
        assert!(f.at_boundary());
        // "node=a" text frame, then a 300-byte binary frame (16-bit length), split anywhere.
        let mut stream = vec![0x81, 6];
        stream.extend_from_slice(b"node=a");
        stream.extend_from_slice(&[0x82, 126, 0x01, 0x2c]);
        stream.extend(std::iter::repeat_n(7u8, 300));
        for cut in [1, 3, 8, 9, 11, 100, stream.len() - 1] {
            let mut g = FrameTracker::default();
            g.feed(&stream[..cut]);
            assert!(!g.at_boundary() || cut == 8, "cut {cut}");
            g.feed(&stream[cut..]);
            assert!(g.at_boundary(), "cut {cut}");
        }
        f.feed(&stream);
        assert!(f.at_boundary());
    }

    #[test]
    fn the_1012_close_frame_carries_the_comeback_when_there_is_one() {
        assert_eq!(close_frame_1012(None), [0x88, 0x02, 0x03, 0xf4]);
        let f = close_frame_1012(Some(u32::MAX));
        let reason = format!("retry_after_ms={}", u32::MAX);
        assert_eq!(f[..4], [0x88, 2 + reason.len() as u8, 0x03, 0xf4]);
        assert_eq!(&f[4..], reason.as_bytes());
        // A control frame's payload is at most 125 bytes (RFC 6455 5.5).
        assert!(f.len() - 2 <= 125);
    }

    #[test]
    fn status_line() {
        assert_eq!(
            status_of(b"HTTP/1.1 101 Switching Protocols\r\n"),
            Some(101)
        );
        assert_eq!(status_of(b"garbage"), None);
    }
}

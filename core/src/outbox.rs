//! The writer side of a WebSocket: its [`Outbox`], [`the writer`](write_loop)
//! that drains it, and the [`close`] codes the server sends.
//!
//! Each connection owns an [`Outbox`]: a bounded queue of must-deliver frames
//! plus a one-slot mailbox for the leaderboard. Pushing never blocks and
//! never awaits, so one slow player can never delay the others (rooms push
//! to thousands of outboxes in one loop); a newer leaderboard overwrites an
//! unsent one (a slow player skips stale boards); a member whose
//! must-deliver queue is full is closed with 4008 and counted
//! (`quiz_slow_consumer_closes_total`). The writer is the only place that
//! awaits the client.
//!
//! The direct write: on plain TCP the outbox holds the socket, and a frame
//! pushed while nothing is queued and the writer is not mid-batch is
//! written at once with a non-blocking `writev` (`try_write`), under the
//! outbox's lock: a room's board tick writes the one shared frame to each
//! socket like a bare loop would, with no task wake-up and no allocation
//! per socket. Only when the socket's buffer is full (`WouldBlock`), or
//! frames are already waiting, does the frame go to the queue / board slot
//! and the writer take over; a short write leaves the rest of the frame at
//! the queue's front, so the bytes on the wire stay whole frames, in order.
//! The writer then writes everything pending in one `writev`.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Poll};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::gate::Gate;
use crate::metrics::Metrics;

/// Close codes the server uses (documented in `docs/core.md`).
pub mod close {
    /// Internal: close the socket without sending a close frame (the peer
    /// is gone).
    pub const NONE: u16 = 0;
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const BAD_TOKEN: u16 = 4001;
    pub const UNKNOWN_QUIZ: u16 = 4004;
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The same player opened a newer connection: this one is closed
    /// (a client must not reconnect with it, or the two would replace
    /// each other in a loop).
    pub const REPLACED: u16 = 4009;
    /// Nothing came from the client (no frame, no pong to the server's
    /// pings) for `ws_idle_timeout_ms`.
    pub const IDLE: u16 = 4010;
}

/// RFC 6455 opcodes of the frames the server sends.
mod op {
    pub const TEXT: u8 = 0x1;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutFrame {
    Text(Bytes),
    Pong(Bytes),
    /// A server ping (empty payload), from the room's keepalive sweep.
    Ping,
    /// The rest of a frame a direct write began (already framed): it must
    /// be the next bytes on the wire, so it is always the queue's front and
    /// survives a close (a close frame after half a frame would be garbage).
    Raw(Bytes),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

/// What the writer writes next: everything pending, in wire order
/// (must-deliver frames, then the ping, then the latest leaderboard), as
/// one vectored write; or the close.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Batch(Batch),
    Close(CloseReason),
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub frames: VecDeque<OutFrame>,
    pub ping: bool,
    pub board: Option<Bytes>,
}

/// A socket the room's tick (or a push) may write to at once, without the
/// writer task: plain TCP (`socket.rs`). Never blocks: `WouldBlock` (or a
/// short count) hands the rest to the writer.
pub trait DirectWrite: Send + Sync {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;

    /// One buffer: a plain `write` (a `writev` of one slice costs the
    /// kernel an iovec import per call, ~5 % of a board fan-out).
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.try_write_vectored(&[IoSlice::new(buf)])
    }
}

#[derive(Default)]
struct OutState {
    /// Must-deliver frames, in order. Empty `VecDeque`s do not allocate, so
    /// an idle connection pays nothing for it.
    queue: VecDeque<OutFrame>,
    /// The latest leaderboard not yet written.
    board: Option<Bytes>,
    /// A server ping is due (a flag, not a queued frame: queuing it would
    /// make every idle connection's `VecDeque` allocate).
    ping: bool,
    /// The writer took a batch and has not finished writing it: nothing may
    /// be written past it.
    writing: bool,
    close: Option<CloseReason>,
    /// The socket, for direct writes (none for sockets that are not plain
    /// TCP, and after the connection ended).
    direct: Option<Arc<dyn DirectWrite>>,
}

impl OutState {
    /// Nothing is pending or being written: a frame written now is next on
    /// the wire, in order.
    fn idle(&self) -> bool {
        self.close.is_none()
            && !self.writing
            && self.queue.is_empty()
            && self.board.is_none()
            && !self.ping
    }

    /// Drops what is pending, except the rest of a frame already begun.
    fn drop_pending(&mut self) {
        self.queue.retain(|f| matches!(f, OutFrame::Raw(_)));
        self.board = None;
        self.ping = false;
    }
}

/// One frame for a direct write: pre-framed bytes (a room's shared board),
/// or a header and a payload.
#[derive(Clone, Copy)]
enum Wire<'a> {
    Framed(&'a Bytes),
    Parts(&'a [u8], &'a Bytes),
}

/// What a direct write did.
#[derive(PartialEq, Eq)]
enum Direct {
    /// All written, or the rest queued for the writer as `Raw`.
    Done,
    /// Nothing written: queue the frame as usual.
    No,
}

/// What a connection's writer drains. See the module doc.
pub struct Outbox {
    state: Mutex<OutState>,
    notify: Notify,
    /// Fired when the outbox closes, to stop the connection's reader too.
    /// A child of the shutdown token, so shutdown fires it as well.
    cancel: CancellationToken,
    cap: usize,
    /// When the reader last got a frame from the client (pongs included),
    /// in seconds of [`uptime_s`]; read by the room's keepalive sweep.
    last_inbound_s: AtomicU32,
    /// The gate of the connection task's rarely-due futures (the writer,
    /// the wait for the close): here rather than in the task's own state,
    /// whose size is paid in steps of 512 bytes per connection.
    gate: Arc<Gate>,
}

/// Seconds since this process's first call (tokio's clock, so tests with
/// paused time control it). Coarse on purpose: the idle timeout is tens of
/// seconds, and 4 bytes per connection are enough.
pub fn uptime_s() -> u32 {
    static EPOCH: OnceLock<tokio::time::Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    tokio::time::Instant::now()
        .saturating_duration_since(epoch)
        .as_secs() as u32
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued for the writer, or already written to the socket.
    Queued,
    /// The queue was full: the outbox is now closing with 4008.
    Overflowed,
    /// Already closing; dropped.
    Closed,
}

/// A server frame's header (FIN set, unmasked): the bytes and their count.
pub fn header(opcode: u8, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if len <= usize::from(u16::MAX) {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

/// A whole text frame (header and payload) in one buffer: what a room
/// builds once per board and writes to every socket as is.
pub fn text_frame(payload: &[u8]) -> Bytes {
    let (h, n) = header(op::TEXT, payload.len());
    let mut v = Vec::with_capacity(n + payload.len());
    v.extend_from_slice(&h[..n]);
    v.extend_from_slice(payload);
    Bytes::from(v)
}

impl Outbox {
    pub fn new(cap: usize, cancel: CancellationToken) -> Outbox {
        Outbox {
            state: Mutex::new(OutState::default()),
            notify: Notify::new(),
            cancel,
            cap,
            last_inbound_s: AtomicU32::new(uptime_s()),
            gate: Gate::new(),
        }
    }

    /// The gate of the connection task's gated futures (`gate.rs`).
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// Lets frames be written straight to `socket` while nothing is queued
    /// or being written (see `write_direct`).
    pub fn attach(&self, socket: Arc<dyn DirectWrite>) {
        self.state.lock().direct = Some(socket);
    }

    /// Forgets the socket: the connection ended, and its descriptor must
    /// close with it, not when the last holder of this outbox lets go.
    pub fn detach(&self) {
        let socket = self.state.lock().direct.take();
        drop(socket);
    }

    /// Writes one frame straight to the socket, under the state lock, when
    /// it would be the next frame on the wire anyway (nothing queued, no
    /// writer mid-batch): the common case costs one `writev` and no task
    /// wake-up. A short write leaves the rest at the queue's front for the
    /// writer (`Raw`), so the frame still completes, in order.
    fn write_direct(&self, s: &mut OutState, wire: Wire<'_>) -> Direct {
        if !s.idle() {
            return Direct::No;
        }
        let Some(sock) = s.direct.as_deref() else {
            return Direct::No;
        };
        let (written, total) = match wire {
            Wire::Framed(f) => (sock.try_write(f), f.len()),
            Wire::Parts(h, p) => (
                sock.try_write_vectored(&[IoSlice::new(h), IoSlice::new(p)]),
                h.len() + p.len(),
            ),
        };
        // An error other than `WouldBlock` is left to the writer too: its
        // own write meets it and closes the connection.
        let n = match written {
            Ok(n) if n > 0 => n,
            _ => return Direct::No,
        };
        if n < total {
            let rest = match wire {
                Wire::Framed(f) => f.slice(n..),
                Wire::Parts(h, p) if n >= h.len() => p.slice(n - h.len()..),
                Wire::Parts(h, p) => {
                    let mut v = Vec::with_capacity(total - n);
                    v.extend_from_slice(&h[n..]);
                    v.extend_from_slice(p);
                    Bytes::from(v)
                }
            };
            s.queue.push_back(OutFrame::Raw(rest));
            self.notify.notify_one();
        }
        Direct::Done
    }

    /// The reader got a frame from the client (any frame, pongs included).
    pub fn saw_inbound(&self, now_s: u32) {
        self.last_inbound_s.store(now_s, Ordering::Relaxed);
    }

    /// Seconds since the client last sent anything.
    pub fn idle_s(&self, now_s: u32) -> u32 {
        now_s.saturating_sub(self.last_inbound_s.load(Ordering::Relaxed))
    }

    /// Asks the writer to send a ping (at most one pending). Never blocks.
    pub fn ping(&self) {
        let mut s = self.state.lock();
        if s.close.is_some() || s.ping {
            return;
        }
        let (h, n) = header(op::PING, 0);
        if self.write_direct(&mut s, Wire::Parts(&h[..n], &Bytes::new())) == Direct::Done {
            return;
        }
        s.ping = true;
        drop(s);
        self.notify.notify_one();
    }

    /// Queues a must-deliver frame (or writes it at once). Never blocks.
    pub fn push(&self, frame: OutFrame) -> Pushed {
        let mut s = self.state.lock();
        if s.close.is_some() {
            return Pushed::Closed;
        }
        let direct = match &frame {
            OutFrame::Text(p) | OutFrame::Pong(p) => {
                let opcode = if matches!(frame, OutFrame::Text(_)) {
                    op::TEXT
                } else {
                    op::PONG
                };
                let (h, n) = header(opcode, p.len());
                self.write_direct(&mut s, Wire::Parts(&h[..n], p))
            }
            OutFrame::Ping | OutFrame::Raw(_) => Direct::No,
        };
        if direct == Direct::Done {
            return Pushed::Queued;
        }
        if s.queue.len() >= self.cap {
            return self.overflow(s);
        }
        s.queue.push_back(frame);
        drop(s);
        self.notify.notify_one();
        Pushed::Queued
    }

    /// Must-deliver text frames that are due together (a room's
    /// `question_closed` and the next `question`), written at once or
    /// queued. `framed` is their wire bytes back to back (each payload's
    /// [`text_frame`]), built once for every member of a room: a direct
    /// write is then one `send` for all of them, and the client gets them
    /// in one segment and one wake-up instead of one per frame. Never
    /// blocks.
    pub fn push_texts_framed(&self, payloads: &[Bytes], framed: &Bytes) -> Pushed {
        let mut s = self.state.lock();
        if s.close.is_some() {
            return Pushed::Closed;
        }
        if self.write_direct(&mut s, Wire::Framed(framed)) == Direct::Done {
            return Pushed::Queued;
        }
        if s.queue.len() + payloads.len() > self.cap {
            return self.overflow(s);
        }
        s.queue
            .extend(payloads.iter().map(|p| OutFrame::Text(p.clone())));
        drop(s);
        self.notify.notify_one();
        Pushed::Queued
    }

    /// The queue is full: close with 4008 (slow consumer), dropping what
    /// was pending.
    fn overflow(&self, mut s: parking_lot::MutexGuard<'_, OutState>) -> Pushed {
        s.close = Some(CloseReason {
            code: close::SLOW_CONSUMER,
            reason: "slow consumer",
        });
        s.drop_pending();
        drop(s);
        self.notify.notify_one();
        self.cancel.cancel();
        Pushed::Overflowed
    }

    pub fn push_text(&self, bytes: Bytes) -> Pushed {
        self.push(OutFrame::Text(bytes))
    }

    /// Replaces the pending leaderboard (or writes it at once). Returns
    /// true if an unsent one was dropped (a stale board the slow reader
    /// will never see).
    pub fn set_board(&self, bytes: Bytes) -> bool {
        let (h, n) = header(op::TEXT, bytes.len());
        self.offer_board(&bytes, Wire::Parts(&h[..n], &bytes))
    }

    /// [`set_board`](Self::set_board) for a room's tick: `framed` is
    /// `payload` as a whole text frame ([`text_frame`]), built once for
    /// every member, so a direct write is the bare `write` of shared bytes
    /// and `payload` is only cloned (a refcount) when the writer must take
    /// over.
    pub fn set_board_framed(&self, payload: &Bytes, framed: &Bytes) -> bool {
        self.offer_board(payload, Wire::Framed(framed))
    }

    fn offer_board(&self, payload: &Bytes, wire: Wire<'_>) -> bool {
        let mut s = self.state.lock();
        if s.close.is_some() {
            return false;
        }
        if self.write_direct(&mut s, wire) == Direct::Done {
            return false;
        }
        let replaced = s.board.replace(payload.clone()).is_some();
        drop(s);
        self.notify.notify_one();
        replaced
    }

    /// Starts closing (first reason wins). Pending frames are dropped
    /// (the rest of a frame already begun is still written).
    pub fn close(&self, code: u16, reason: &'static str) {
        let mut s = self.state.lock();
        if s.close.is_none() {
            s.close = Some(CloseReason { code, reason });
            s.drop_pending();
        }
        drop(s);
        self.notify.notify_one();
        self.cancel.cancel();
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.state.lock().close
    }

    pub fn cancelled(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The next thing to write: everything pending as one batch, or the
    /// close (after the rest of a begun frame). Calling it again means the
    /// previous batch is written. Cancel-safe.
    pub async fn next(&self) -> Next {
        loop {
            {
                let mut s = self.state.lock();
                s.writing = false;
                let begun = matches!(s.queue.front(), Some(OutFrame::Raw(_)));
                match s.close {
                    Some(c) if !begun => return Next::Close(c),
                    Some(_) => {
                        s.writing = true;
                        return Next::Batch(Batch {
                            frames: std::mem::take(&mut s.queue),
                            ..Batch::default()
                        });
                    }
                    None => {}
                }
                if !s.queue.is_empty() || s.ping || s.board.is_some() {
                    s.writing = true;
                    let frames = std::mem::take(&mut s.queue);
                    let ping = std::mem::take(&mut s.ping);
                    let board = s.board.take();
                    return Next::Batch(Batch {
                        frames,
                        ping,
                        board,
                    });
                }
            }
            // `notify_one` stores a permit when nobody waits, so a push
            // between the check above and this await is not lost.
            self.notify.notified().await;
        }
    }

    /// Frames waiting for the writer (tests).
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// The unsent leaderboard, taken (tests).
    #[cfg(test)]
    pub(crate) fn take_board(&self) -> Option<Bytes> {
        self.state.lock().board.take()
    }
}

/// Most frames in one `writev` (a longer batch takes several).
const MAX_FRAMES: usize = 32;

impl Batch {
    /// Each frame's opcode (none for the rest of a begun frame, already
    /// framed) and payload, in wire order.
    fn pieces(&self) -> impl Iterator<Item = (Option<u8>, &[u8])> {
        let queued = self.frames.iter().map(|f| match f {
            OutFrame::Text(p) => (Some(op::TEXT), &p[..]),
            OutFrame::Pong(p) => (Some(op::PONG), &p[..]),
            OutFrame::Ping => (Some(op::PING), &[][..]),
            OutFrame::Raw(r) => (None, &r[..]),
        });
        queued
            .chain(self.ping.then_some((Some(op::PING), &[][..])))
            .chain(self.board.as_deref().map(|p| (Some(op::TEXT), p)))
    }
}

/// Writes a batch with as few `writev` calls as the socket allows: every
/// frame's header and payload, in order. Headers are rebuilt on the stack
/// at each call from the count of bytes already written, so nothing is
/// allocated and the writer's future (part of every idle connection's
/// task) stays small.
async fn write_batch<W: AsyncWrite + Unpin>(w: &mut W, b: &Batch) -> io::Result<()> {
    let mut done = 0usize;
    poll_fn(|cx| loop {
        let mut heads = [([0u8; 10], 0usize); MAX_FRAMES];
        let mut payloads: [&[u8]; MAX_FRAMES] = [&[]; MAX_FRAMES];
        let (mut nf, mut skip) = (0, done);
        for (opcode, payload) in b.pieces() {
            let head = opcode.map_or(([0u8; 10], 0), |o| header(o, payload.len()));
            let len = head.1 + payload.len();
            if nf == 0 && skip >= len {
                skip -= len; // written in an earlier call
                continue;
            }
            if nf == MAX_FRAMES {
                break;
            }
            heads[nf] = head;
            payloads[nf] = payload;
            nf += 1;
        }
        let mut slices = [IoSlice::new(&[]); 2 * MAX_FRAMES];
        let mut ns = 0;
        for (head, payload) in heads.iter().zip(payloads).take(nf) {
            for part in [&head.0[..head.1], payload] {
                // `skip` (bytes of the first frame already written) is
                // only non-zero on the first parts.
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                slices[ns] = IoSlice::new(&part[skip..]);
                skip = 0;
                ns += 1;
            }
        }
        if ns == 0 {
            return Poll::Ready(Ok(()));
        }
        let n = ready!(Pin::new(&mut *w).poll_write_vectored(cx, &slices[..ns]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        done += n;
    })
    .await
}

/// A close frame: the code and as much of the reason as fits (123 bytes).
async fn write_close<W: AsyncWrite + Unpin>(w: &mut W, c: CloseReason) -> io::Result<()> {
    let reason = &c.reason.as_bytes()[..c.reason.len().min(123)];
    let mut f = [0u8; 2 + 125];
    f[0] = 0x80 | op::CLOSE;
    f[1] = (2 + reason.len()) as u8;
    f[2..4].copy_from_slice(&c.code.to_be_bytes());
    f[4..4 + reason.len()].copy_from_slice(reason);
    w.write_all(&f[..4 + reason.len()]).await?;
    w.flush().await
}

/// A close frame sent outside a connection's writer (authentication
/// failures), bounded in time like every write.
pub async fn send_close<W: AsyncWrite + Unpin>(w: &mut W, code: u16, reason: &'static str) {
    let c = CloseReason { code, reason };
    let _ = tokio::time::timeout(Duration::from_secs(2), write_close(w, c)).await;
}

/// THE WRITER. Drains the outbox; the only place that awaits the client.
/// It only runs when the room or the reader could not write directly (a
/// full socket buffer, or frames already waiting); then it writes all that
/// is pending in one `writev`. A write that takes longer than
/// `write_timeout` means the client is not reading: it is closed as a slow
/// consumer.
pub async fn write_loop<W: AsyncWrite + Unpin>(
    metrics: &Metrics,
    outbox: &Outbox,
    ws: &mut W,
    write_timeout: Duration,
) {
    loop {
        // The batch holds the shared `Bytes`: no per-connection copy.
        let batch = match outbox.next().await {
            Next::Batch(b) => b,
            Next::Close(c) => {
                if c.code != close::NONE {
                    metrics
                        .ws_closes
                        .with_label_values(&[&c.code.to_string()])
                        .inc();
                    let _ = tokio::time::timeout(Duration::from_secs(1), write_close(ws, c)).await;
                }
                return;
            }
        };
        let written = async {
            write_batch(ws, &batch).await?;
            ws.flush().await
        };
        match tokio::time::timeout(write_timeout, written).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return outbox.close(close::NONE, ""),
            Err(_) => {
                metrics.slow_consumer_closes.inc();
                metrics
                    .ws_closes
                    .with_label_values(&[&close::SLOW_CONSUMER.to_string()])
                    .inc();
                return outbox.close(close::SLOW_CONSUMER, "slow consumer");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_overwrites_stale_board_and_closes_slow_consumer() {
        let o = Outbox::new(2, CancellationToken::new());
        assert!(!o.set_board(Bytes::from_static(b"b1")));
        assert!(o.set_board(Bytes::from_static(b"b2")));
        assert_eq!(o.push_text(Bytes::from_static(b"m1")), Pushed::Queued);
        assert_eq!(o.push_text(Bytes::from_static(b"m2")), Pushed::Queued);
        assert_eq!(o.push_text(Bytes::from_static(b"m3")), Pushed::Overflowed);
        assert!(o.cancelled().is_cancelled());
        assert_eq!(o.push_text(Bytes::from_static(b"m4")), Pushed::Closed);
        assert_eq!(o.close_reason().map(|c| c.code), Some(close::SLOW_CONSUMER));
    }

    #[tokio::test]
    async fn outbox_order_must_deliver_then_board() {
        let o = Outbox::new(8, CancellationToken::new());
        o.set_board(Bytes::from_static(b"b"));
        o.push_text(Bytes::from_static(b"m"));
        o.ping();
        assert_eq!(
            o.next().await,
            Next::Batch(Batch {
                frames: [OutFrame::Text(Bytes::from_static(b"m"))].into(),
                ping: true,
                board: Some(Bytes::from_static(b"b")),
            })
        );
        o.close(close::GOING_AWAY, "bye");
        assert!(matches!(o.next().await, Next::Close(c) if c.code == 1001));
    }

    /// A socket that takes at most `room` bytes (then `WouldBlock`), and
    /// keeps what it took.
    #[derive(Default)]
    struct FakeSocket {
        wire: Mutex<Vec<u8>>,
        room: Mutex<usize>,
        /// Writes that took bytes.
        writes: Mutex<usize>,
    }

    impl DirectWrite for FakeSocket {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut room = self.room.lock();
            if *room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(*room - n);
                self.wire.lock().extend_from_slice(&b[..take]);
                n += take;
            }
            *room -= n;
            *self.writes.lock() += 1;
            Ok(n)
        }
    }

    fn frame(op: u8, payload: &[u8]) -> Vec<u8> {
        let (h, n) = header(op, payload.len());
        [&h[..n], payload].concat()
    }

    async fn write_out(b: &Batch) -> Vec<u8> {
        let mut out = Vec::new();
        write_batch(&mut out, b).await.unwrap();
        out
    }

    fn attached(room: usize) -> (Outbox, Arc<FakeSocket>) {
        let o = Outbox::new(8, CancellationToken::new());
        let sock = Arc::new(FakeSocket::default());
        *sock.room.lock() = room;
        o.attach(Arc::clone(&sock) as Arc<dyn DirectWrite>);
        (o, sock)
    }

    /// The direct write: an idle outbox writes the frame at once and wakes
    /// no writer; a short write leaves the rest of the frame first in line,
    /// so the wire holds whole frames in push order; nothing is written
    /// past queued frames or a batch being written.
    #[tokio::test]
    async fn direct_writes_keep_frames_whole_and_in_order() {
        use futures::FutureExt;
        let (o, sock) = attached(1 << 20);
        let b1 = Bytes::from_static(b"board-1");
        assert!(!o.set_board_framed(&b1, &text_frame(&b1)));
        assert_eq!(o.push_text(Bytes::from_static(b"m1")), Pushed::Queued);
        o.ping();
        assert!(o.next().now_or_never().is_none(), "the writer was woken");
        let mut expected = [frame(1, b"board-1"), frame(1, b"m1"), frame(9, b"")].concat();
        assert_eq!(*sock.wire.lock(), expected);

        // The socket takes 3 bytes of the next frame: the rest waits, and
        // the frames pushed after it queue behind it although the socket
        // has room again.
        *sock.room.lock() = 3;
        o.push_text(Bytes::from_static(b"answer-result"));
        *sock.room.lock() = 1 << 20;
        o.push_text(Bytes::from_static(b"m2"));
        let b2 = Bytes::from_static(b"board-2");
        let b3 = Bytes::from_static(b"board-3");
        assert!(!o.set_board_framed(&b2, &text_frame(&b2)));
        // Latest value: the unsent board-2 is replaced.
        assert!(o.set_board(b3.clone()));
        let Next::Batch(batch) = o.next().await else {
            panic!("a batch")
        };
        assert_eq!(batch.frames.len(), 2);
        assert_eq!(batch.board, Some(b3));
        // Mid-batch: a push queues even though the socket has room.
        o.push_text(Bytes::from_static(b"m3"));
        let mut wire = sock.wire.lock().clone();
        wire.extend(write_out(&batch).await);
        expected.extend(frame(1, b"answer-result"));
        expected.extend(frame(1, b"m2"));
        expected.extend(frame(1, b"board-3"));
        assert_eq!(wire, expected);
        let Next::Batch(batch) = o.next().await else {
            panic!("a batch")
        };
        assert_eq!(write_out(&batch).await, frame(1, b"m3"));

        // Writer idle again (it asked for more): direct once more.
        assert!(o.next().now_or_never().is_none());
        let before = sock.wire.lock().len();
        o.push_text(Bytes::from_static(b"m4"));
        assert_eq!(sock.wire.lock()[before..], frame(1, b"m4")[..]);
    }

    /// Frames due together go out in one write when the socket is idle;
    /// otherwise they queue as separate frames, in order, behind what is
    /// queued, and count against the cap one by one.
    #[tokio::test]
    async fn frames_due_together_take_one_write_or_queue_in_order() {
        let (o, sock) = attached(1 << 20);
        let (a, b) = (
            Bytes::from_static(b"closed-1"),
            Bytes::from_static(b"question-2"),
        );
        let framed = [text_frame(&a), text_frame(&b)].concat();
        let framed = Bytes::from(framed);
        assert_eq!(
            o.push_texts_framed(&[a.clone(), b.clone()], &framed),
            Pushed::Queued
        );
        assert_eq!(*sock.writes.lock(), 1, "one write for both frames");
        let mut expected = [frame(1, b"closed-1"), frame(1, b"question-2")].concat();
        assert_eq!(*sock.wire.lock(), expected);

        // A full socket: the frames wait for the writer, after the one before.
        *sock.room.lock() = 0;
        o.push_text(Bytes::from_static(b"m1"));
        assert_eq!(
            o.push_texts_framed(&[a.clone(), b.clone()], &framed),
            Pushed::Queued
        );
        *sock.room.lock() = 1 << 20;
        let Next::Batch(batch) = o.next().await else {
            panic!("a batch")
        };
        assert_eq!(batch.frames.len(), 3);
        expected.extend(write_out(&batch).await);
        assert_eq!(
            expected,
            [
                frame(1, b"closed-1"),
                frame(1, b"question-2"),
                frame(1, b"m1"),
                frame(1, b"closed-1"),
                frame(1, b"question-2"),
            ]
            .concat()
        );

        // Two frames do not fit in a queue with room for one: slow consumer.
        let capped = Outbox::new(1, CancellationToken::new());
        assert_eq!(
            capped.push_texts_framed(&[a, b], &framed),
            Pushed::Overflowed
        );
        assert_eq!(
            capped.close_reason().map(|c| c.code),
            Some(close::SLOW_CONSUMER)
        );
    }

    /// A close after a short direct write still finishes the begun frame
    /// before the close frame; a full socket leaves the frame to the
    /// writer untouched.
    #[tokio::test]
    async fn close_finishes_a_begun_frame() {
        let (o, sock) = attached(0);
        o.push_text(Bytes::from_static(b"queued"));
        assert!(sock.wire.lock().is_empty());
        let Next::Batch(b) = o.next().await else {
            panic!("a batch")
        };
        assert_eq!(write_out(&b).await, frame(1, b"queued"));

        assert!(futures::FutureExt::now_or_never(o.next()).is_none());
        *sock.room.lock() = 1;
        o.push_text(Bytes::from_static(b"half"));
        o.push_text(Bytes::from_static(b"dropped"));
        o.close(close::IDLE, "idle timeout");
        let Next::Batch(b) = o.next().await else {
            panic!("the rest of the begun frame")
        };
        let mut wire = sock.wire.lock().clone();
        wire.extend(write_out(&b).await);
        assert_eq!(wire, frame(1, b"half"));
        assert!(matches!(o.next().await, Next::Close(c) if c.code == close::IDLE));
        o.detach();
        assert_eq!(Arc::strong_count(&sock), 1, "the socket outlived detach");
    }

    /// A writer that takes at most `step` bytes per call.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Every header length (7-, 16- and 64-bit), more frames than one
    /// `writev` holds, and short writes anywhere: the bytes are the frames,
    /// whole and in order.
    #[tokio::test]
    async fn batches_are_framed_exactly() {
        let sizes = [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000];
        let mut b = Batch::default();
        let mut expected = frame(1, b"rest-of-a-frame");
        b.frames
            .push_back(OutFrame::Raw(Bytes::from(expected.clone())));
        for i in 0..(MAX_FRAMES * 2 + 3) {
            let p = Bytes::from(vec![b'a' + (i % 26) as u8; sizes[i % sizes.len()]]);
            expected.extend(frame(1, &p));
            b.frames.push_back(OutFrame::Text(p));
        }
        b.frames
            .push_back(OutFrame::Pong(Bytes::from_static(b"pp")));
        expected.extend(frame(0xA, b"pp"));
        b.ping = true;
        expected.extend(frame(9, b""));
        b.board = Some(Bytes::from_static(b"{}"));
        expected.extend(frame(1, b"{}"));
        assert_eq!(write_out(&b).await, expected);
        for step in [1, 3, 1000] {
            let mut w = Trickle {
                out: Vec::new(),
                step,
            };
            write_batch(&mut w, &b).await.unwrap();
            assert!(w.out == expected, "step {step}");
        }
        assert_eq!(header(1, 126).0[..4], [0x81, 126, 0, 126]);
        assert_eq!(
            header(1, 65_536).0[..10],
            [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }
}

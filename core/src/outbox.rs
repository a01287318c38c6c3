//! The writer side of a WebSocket: its [`Outbox`], [`the writer`](write_loop)
//! that drains it, and the [`close`] codes the server sends.
//!
//! Each connection owns an [`Outbox`]: a bounded queue of must-deliver frames
//! plus a one-slot mailbox for the leaderboard. Pushing never blocks and
//! never awaits, so one slow player can never delay the others (rooms push
//! to hundreds of outboxes in one synchronous loop); a newer leaderboard
//! overwrites an unsent one (a slow player skips stale boards); a member
//! whose must-deliver queue is full is closed with 4008 and counted
//! (`quiz_slow_consumer_closes_total`). The writer is the only place that
//! awaits the client.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketWrite};
use parking_lot::Mutex;
use tokio::io::AsyncWrite;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutFrame {
    Text(Bytes),
    Pong(Bytes),
    /// A server ping (empty payload), from the room's keepalive sweep.
    Ping,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Frame(OutFrame),
    Close(CloseReason),
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
    close: Option<CloseReason>,
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
    Queued,
    /// The queue was full: the outbox is now closing with 4008.
    Overflowed,
    /// Already closing; dropped.
    Closed,
}

impl Outbox {
    pub fn new(cap: usize, cancel: CancellationToken) -> Outbox {
        Outbox {
            state: Mutex::new(OutState::default()),
            notify: Notify::new(),
            cancel,
            cap,
            last_inbound_s: AtomicU32::new(uptime_s()),
        }
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
        s.ping = true;
        drop(s);
        self.notify.notify_one();
    }

    /// Queues a must-deliver frame. Never blocks.
    pub fn push(&self, frame: OutFrame) -> Pushed {
        let mut s = self.state.lock();
        if s.close.is_some() {
            return Pushed::Closed;
        }
        if s.queue.len() >= self.cap {
            s.close = Some(CloseReason {
                code: close::SLOW_CONSUMER,
                reason: "slow consumer",
            });
            s.queue.clear();
            drop(s);
            self.notify.notify_one();
            self.cancel.cancel();
            return Pushed::Overflowed;
        }
        s.queue.push_back(frame);
        drop(s);
        self.notify.notify_one();
        Pushed::Queued
    }

    pub fn push_text(&self, bytes: Bytes) -> Pushed {
        self.push(OutFrame::Text(bytes))
    }

    /// Replaces the pending leaderboard. Returns true if an unsent one was
    /// dropped (a stale board the slow reader will never see).
    pub fn set_board(&self, bytes: Bytes) -> bool {
        let mut s = self.state.lock();
        if s.close.is_some() {
            return false;
        }
        let replaced = s.board.replace(bytes).is_some();
        drop(s);
        self.notify.notify_one();
        replaced
    }

    /// Starts closing (first reason wins). Pending frames are dropped.
    pub fn close(&self, code: u16, reason: &'static str) {
        let mut s = self.state.lock();
        if s.close.is_none() {
            s.close = Some(CloseReason { code, reason });
            s.queue.clear();
            s.board = None;
            s.ping = false;
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

    /// The next thing to write: must-deliver frames first, in order, then
    /// the latest leaderboard. Cancel-safe.
    pub async fn next(&self) -> Next {
        loop {
            {
                let mut s = self.state.lock();
                if let Some(c) = s.close {
                    return Next::Close(c);
                }
                if let Some(f) = s.queue.pop_front() {
                    return Next::Frame(f);
                }
                if std::mem::take(&mut s.ping) {
                    return Next::Frame(OutFrame::Ping);
                }
                if let Some(b) = s.board.take() {
                    return Next::Frame(OutFrame::Text(b));
                }
            }
            // `notify_one` stores a permit when nobody waits, so a push
            // between the check above and this await is not lost.
            self.notify.notified().await;
        }
    }

    /// The unsent leaderboard, taken (tests).
    #[cfg(test)]
    pub(crate) fn take_board(&self) -> Option<Bytes> {
        self.state.lock().board.take()
    }
}

/// THE WRITER. Drains the outbox; the only place that awaits the client.
/// A write that takes longer than `write_timeout` means the client is not
/// reading: it is closed as a slow consumer.
pub async fn write_loop<W: AsyncWrite + Unpin>(
    metrics: &Metrics,
    outbox: &Outbox,
    ws: &mut WebSocketWrite<W>,
    write_timeout: Duration,
) {
    loop {
        // The frame borrows the shared `Bytes`: no per-connection copy.
        let (op, bytes) = match outbox.next().await {
            Next::Frame(OutFrame::Text(b)) => (OpCode::Text, b),
            Next::Frame(OutFrame::Pong(b)) => (OpCode::Pong, b),
            Next::Frame(OutFrame::Ping) => (OpCode::Ping, Bytes::new()),
            Next::Close(c) => {
                if c.code != close::NONE {
                    metrics
                        .ws_closes
                        .with_label_values(&[&c.code.to_string()])
                        .inc();
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        ws.write_frame(Frame::close(c.code, c.reason.as_bytes())),
                    )
                    .await;
                }
                return;
            }
        };
        let frame = Frame::new(true, op, None, Payload::Borrowed(&bytes));
        match tokio::time::timeout(write_timeout, ws.write_frame(frame)).await {
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
        assert_eq!(
            o.next().await,
            Next::Frame(OutFrame::Text(Bytes::from_static(b"m")))
        );
        assert_eq!(
            o.next().await,
            Next::Frame(OutFrame::Text(Bytes::from_static(b"b")))
        );
        o.close(close::GOING_AWAY, "bye");
        assert!(matches!(o.next().await, Next::Close(c) if c.code == 1001));
    }
}

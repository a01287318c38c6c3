//! The request head as edge-lb reads it before deciding between the WebSocket tunnel and the
//! pingora HTTP proxy: bounded read, quiz-id extraction, and [`Rewound`], which hands the
//! bytes already read back to pingora. What is answered to a head that fails is in
//! [`crate::refusal`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Where the quiz id of a path stands.
#[derive(Debug, PartialEq, Eq)]
pub enum QuizPath {
    /// Not a quiz-scoped path (create, health, …).
    None,
    /// `/v1/quizzes/{id}…`; `ws` is true for `/v1/quizzes/{id}/ws`.
    Quiz { id: String, ws: bool },
    /// Quiz-scoped but the id is malformed.
    Invalid(&'static str),
}

/// Quiz ids are 1–64 chars of `[A-Za-z0-9_-]` (CONTRACT.md).
pub fn valid_quiz_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

pub fn quiz_path(path: &str) -> QuizPath {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let Some(rest) = path.strip_prefix("/v1/quizzes") else {
        return QuizPath::None;
    };
    let Some(rest) = rest.strip_prefix('/') else {
        return QuizPath::None;
    };
    let (id, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if id.is_empty() && tail.is_empty() {
        return QuizPath::None;
    }
    if !valid_quiz_id(id) {
        return QuizPath::Invalid("quiz_id must be 1-64 chars of [A-Za-z0-9_-]");
    }
    QuizPath::Quiz {
        id: id.to_string(),
        ws: tail == "/ws" || tail == "/ws/",
    }
}

/// Request headers that carry a client address: edge-lb drops the client's and sets
/// `X-Forwarded-For` to the TCP peer (plain HTTP in [`crate::proxy`], upgrades in
/// [`crate::tunnel`]).
pub const CLIENT_ADDRESS_HEADERS: &[&str] = &["x-forwarded-for", "forwarded", "x-real-ip"];

/// A parsed request head.
#[derive(Debug)]
pub struct Head {
    /// Everything read so far: the head, then possibly the start of a body.
    pub buf: Vec<u8>,
    /// Length of the head including the final CRLFCRLF.
    pub len: usize,
    pub method: String,
    pub path: String,
    pub upgrade_websocket: bool,
    /// When the head's first byte arrived (the whole-request deadline counts from it).
    pub started: tokio::time::Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("request head larger than {0} bytes")]
    TooLarge(usize),
    #[error("malformed request head: {0}")]
    Malformed(String),
    #[error("timed out reading request head")]
    Timeout,
    #[error("connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

fn find_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf[start..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| start + p + 4)
}

/// Read one request head. `first` bounds only the wait for the first byte (keep-alive idle).
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
    idle: Duration,
    timeout: Duration,
) -> Result<Head, HeadError> {
    // Reads go straight into `buf`'s spare capacity: no stack chunk to copy from, and a
    // smaller future (it is boxed per request, so its size is allocated and copied each time).
    let mut buf = Vec::with_capacity(1024);
    // First byte: may wait up to `idle` (keep-alive).
    let n = match tokio::time::timeout(idle, stream.read_buf(&mut buf)).await {
        Err(_) => return Err(HeadError::Closed),
        Ok(r) => r?,
    };
    if n == 0 {
        return Err(HeadError::Closed);
    }
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let mut scanned = 0;
    let len = loop {
        if let Some(end) = find_end(&buf, scanned) {
            if end > max {
                return Err(HeadError::TooLarge(max));
            }
            break end;
        }
        if buf.len() > max {
            return Err(HeadError::TooLarge(max));
        }
        scanned = buf.len();
        buf.reserve(2048);
        let n = match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => return Err(HeadError::Timeout),
            Ok(r) => r?,
        };
        if n == 0 {
            return Err(HeadError::Closed);
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&buf[..len]) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Malformed("incomplete".into())),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge(max)),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    }
    let method = req.method.unwrap_or("").to_string();
    let path = req.path.unwrap_or("").to_string();
    let mut upgrade = false;
    let mut conn_upgrade = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = String::from_utf8_lossy(h.value)
                .split(',')
                .any(|v| v.trim().eq_ignore_ascii_case("websocket"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            conn_upgrade = String::from_utf8_lossy(h.value)
                .split(',')
                .any(|v| v.trim().eq_ignore_ascii_case("upgrade"));
        }
    }
    Ok(Head {
        buf,
        len,
        method,
        path,
        upgrade_websocket: upgrade && conn_upgrade,
        started,
    })
}

/// A stream with bytes already read put back in front: they are read again before the
/// stream's own. The buffer is freed once read.
#[derive(Debug)]
pub struct Prefixed<S> {
    pre: Vec<u8>,
    pos: usize,
    pub inner: S,
}

/// A pingora stream with bytes already read put back in front, so pingora's HTTP session
/// parses the head edge-lb inspected. Reused across keep-alive requests (never nested).
pub type Rewound = Prefixed<Stream>;

impl<S> Prefixed<S> {
    pub fn new(inner: S, pre: Vec<u8>) -> Prefixed<S> {
        Prefixed { pre, pos: 0, inner }
    }

    /// Put `pre` in front of what is still to be read (bytes of an earlier `pre` not read yet
    /// stay behind it).
    pub fn set_pre(&mut self, mut pre: Vec<u8>) {
        if self.pos < self.pre.len() {
            pre.extend_from_slice(&self.pre[self.pos..]);
        }
        self.pre = pre;
        self.pos = 0;
    }
}

impl Rewound {
    /// Unwrap a stream pingora handed back after a keep-alive request.
    pub fn from_stream(s: Stream) -> Rewound {
        if s.as_any().is::<Rewound>() {
            match s.into_any().downcast::<Rewound>() {
                Ok(r) => *r,
                Err(_) => unreachable!("type checked above"),
            }
        } else {
            Rewound::new(s, Vec::new())
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.pre.len() {
            let n = (self.pre.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.pre[start..start + n]);
            self.pos += n;
            if self.pos == self.pre.len() {
                self.pre = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Rewound {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Rewound {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Rewound {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Rewound {
    fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for Rewound {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Rewound {
    fn get_socket_digest(&self) -> Option<Arc<pingora_core::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for Rewound {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiz_paths() {
        assert_eq!(quiz_path("/v1/quizzes"), QuizPath::None);
        assert_eq!(quiz_path("/healthz"), QuizPath::None);
        assert_eq!(
            quiz_path("/v1/quizzes/abc-1_x/ws?token=t"),
            QuizPath::Quiz {
                id: "abc-1_x".into(),
                ws: true
            }
        );
        assert_eq!(
            quiz_path("/v1/quizzes/abc/leaderboard?limit=3"),
            QuizPath::Quiz {
                id: "abc".into(),
                ws: false
            }
        );
        assert!(matches!(
            quiz_path("/v1/quizzes/a%20b/ws"),
            QuizPath::Invalid(_)
        ));
        assert!(matches!(quiz_path("/v1/quizzes//ws"), QuizPath::Invalid(_)));
        assert!(matches!(
            quiz_path(&format!("/v1/quizzes/{}", "a".repeat(65))),
            QuizPath::Invalid(_)
        ));
        assert_eq!(quiz_path("/v1/quizzesX"), QuizPath::None);
    }

    #[tokio::test]
    async fn head_limits() {
        let big = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(20_000));
        let mut r = big.as_bytes();
        let e = read_head(
            &mut r,
            16 * 1024,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(e, Err(HeadError::TooLarge(_))));
        let ok = "GET /v1/quizzes/q/ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\nxx";
        let mut r = ok.as_bytes();
        let h = read_head(
            &mut r,
            16 * 1024,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert!(h.upgrade_websocket);
        assert_eq!(h.len, ok.len() - 2);
    }
}

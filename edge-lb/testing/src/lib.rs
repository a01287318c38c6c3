//! edge-lb-testing: support for edge-lb's integration tests and the `edge-lb-bench` load tool
//! (a dev-only crate, not linked into the proxy): a real WebSocket/HTTP backend that reports
//! its node name, and a minimal WebSocket client.
//!
//! The backend answers the upgrade with its `101` head *and* a first text frame
//! (`node=<name>`) in a single write, the exact shape of pingora issue #946, then echoes every
//! frame (fastwebsockets, close handshake included). `GET /readyz` answers 200 or 503 as set
//! by [`Backend::set_ready`]; any other HTTP request gets `{"node": name, "path": path, "xff":
//! …}` (`xff`: every `X-Forwarded-For` value it received, joined). An upgrade's `101` carries
//! the same as `X-Seen-Forwarded-For`; an upgrade whose path contains `refuse` is answered
//! `403` on a kept-alive connection. Core's answers to a refused token: an upgrade whose path
//! contains `forged` gets a `101` marked `x-quiz-auth: refused` followed by a close frame 4001
//! `bad token` (then the connection ends; not counted in `ws_total`), and a plain request
//! whose path contains `unauthorized` gets `401`. [`Backend::peers`] keeps the source address
//! of every upgrade and plain request it answered (health checks aside).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use edge_lb::head::read_head;

/// A TCP stream with bytes already read put back in front.
pub type Prefixed = edge_lb::head::Prefixed<TcpStream>;

fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

fn header<'a>(head: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Every value of header `name`, joined with ", " (how a proxy chain would read them).
fn header_all(head: &[u8], name: &str) -> String {
    let text = String::from_utf8_lossy(head);
    text.split("\r\n")
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A test backend (one "core node").
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    ready: Arc<AtomicBool>,
    /// Open WebSocket connections.
    pub ws_open: Arc<AtomicUsize>,
    /// Upgrades served since start.
    pub ws_total: Arc<AtomicUsize>,
    /// Where each upgrade and plain request (not `/readyz`) came from, in order.
    pub peers: Arc<Mutex<Vec<IpAddr>>>,
    stop: CancellationToken,
}

impl Backend {
    /// Start on `addr` (use port 0 for any) on the current tokio runtime.
    pub async fn start(name: &str, addr: &str) -> std::io::Result<Backend> {
        let l = TcpListener::bind(addr).await?;
        let addr = l.local_addr()?;
        let b = Backend {
            name: name.to_string(),
            addr,
            ready: Arc::new(AtomicBool::new(true)),
            ws_open: Arc::new(AtomicUsize::new(0)),
            ws_total: Arc::new(AtomicUsize::new(0)),
            peers: Arc::default(),
            stop: CancellationToken::new(),
        };
        let (name, ready, open, total, peers, stop) = (
            Arc::<str>::from(name),
            b.ready.clone(),
            b.ws_open.clone(),
            b.ws_total.clone(),
            b.peers.clone(),
            b.stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                // `biased`: once killed, a connection waiting in the backlog is
                // never accepted (an unbiased select picks a ready branch at random).
                let (s, peer) = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    r = l.accept() => match r { Ok(x) => x, Err(_) => { tokio::time::sleep(Duration::from_millis(5)).await; continue } },
                };
                let _ = s.set_nodelay(true);
                let (name, ready, open, total, stop) = (
                    name.clone(),
                    ready.clone(),
                    open.clone(),
                    total.clone(),
                    stop.clone(),
                );
                let seen = Seen {
                    peer: peer.ip(),
                    peers: peers.clone(),
                };
                tokio::spawn(async move {
                    // `biased`: a connection accepted as the node was killed is
                    // dropped, never served by a dead node.
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => {}
                        _ = serve_conn(s, name, ready, open, total, seen) => {}
                    }
                });
            }
        });
        Ok(b)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Stop listening and drop every connection (a crashed node).
    pub fn kill(&self) {
        self.stop.cancel();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A connection's source address and the backend's record of them.
struct Seen {
    peer: IpAddr,
    peers: Arc<Mutex<Vec<IpAddr>>>,
}

impl Seen {
    fn record(&self) {
        self.peers.lock().expect("never poisoned").push(self.peer);
    }
}

async fn serve_conn(
    mut s: TcpStream,
    name: Arc<str>,
    ready: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
    seen: Seen,
) {
    loop {
        let Ok(head) = read_head(
            &mut s,
            64 * 1024,
            Duration::from_secs(120),
            Duration::from_secs(10),
        )
        .await
        else {
            return;
        };
        let xff = header_all(&head.buf[..head.len], "x-forwarded-for");
        if head.upgrade_websocket && head.path.contains("refuse") {
            let body = "{\"error\":{\"code\":\"forbidden\",\"message\":\"refused\"}}";
            let resp = format!(
                "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        if head.upgrade_websocket && head.path.contains("forged") {
            let key = header(&head.buf[..head.len], "sec-websocket-key").unwrap_or("");
            let mut out = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nx-quiz-auth: refused\r\n\r\n",
                accept_key(key)
            )
            .into_bytes();
            out.extend_from_slice(&[0x88, 11, 0x0f, 0xa1]);
            out.extend_from_slice(b"bad token");
            let _ = s.write_all(&out).await;
            // What the client still sends (its close reply) is read, not reset.
            let mut sink = [0u8; 512];
            let _ = tokio::time::timeout(Duration::from_secs(1), s.read(&mut sink)).await;
            return;
        }
        if head.upgrade_websocket {
            let key = header(&head.buf[..head.len], "sec-websocket-key").unwrap_or("");
            let hello = format!("node={name}");
            let mut out = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nX-Node: {name}\r\nX-Seen-Forwarded-For: {xff}\r\n\r\n",
                accept_key(key)
            )
            .into_bytes();
            // The first frame in the same write as the 101 head (pingora issue #946's shape).
            out.extend_from_slice(&[0x81, hello.len() as u8]);
            out.extend_from_slice(hello.as_bytes());
            if s.write_all(&out).await.is_err() {
                return;
            }
            open.fetch_add(1, Ordering::SeqCst);
            total.fetch_add(1, Ordering::SeqCst);
            seen.record();
            let extra = head.buf[head.len..].to_vec();
            let mut ws = WebSocket::after_handshake(Prefixed::new(s, extra), Role::Server);
            ws.set_auto_close(true);
            ws.set_auto_pong(true);
            loop {
                let Ok(frame) = ws.read_frame().await else {
                    break;
                };
                match frame.opcode {
                    OpCode::Close => break,
                    OpCode::Text | OpCode::Binary => {
                        let f = Frame::new(
                            true,
                            frame.opcode,
                            None,
                            Payload::Owned(frame.payload.to_vec()),
                        );
                        if ws.write_frame(f).await.is_err() {
                            break;
                        }
                    }
                    _ => {}
                }
            }
            open.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        // Plain HTTP: discard any body by content-length.
        let cl: usize = header(&head.buf[..head.len], "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut have = head.buf.len() - head.len;
        let mut sink = [0u8; 4096];
        while have < cl {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => have += n,
            }
        }
        let path = head.path.split('?').next().unwrap_or("").to_string();
        let (status, body) = if path.contains("unauthorized") {
            (
                "401 Unauthorized",
                "{\"error\":{\"code\":\"unauthorized\",\"message\":\"bad token\"}}".to_string(),
            )
        } else if path == "/readyz" {
            if ready.load(Ordering::SeqCst) {
                ("200 OK", "{\"ready\":true}".to_string())
            } else {
                ("503 Service Unavailable", "{\"ready\":false}".to_string())
            }
        } else {
            seen.record();
            (
                "200 OK",
                serde_json::json!({"node": &*name, "path": path, "xff": xff}).to_string(),
            )
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-node: {name}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A connected client WebSocket plus what the upgrade said.
pub struct Client {
    pub ws: WebSocket<Prefixed>,
    pub status: u16,
    /// The reason text of the close frame `recv_text` last met (`Some("")` when it had none).
    pub close_reason: Option<String>,
}

/// Open a WebSocket to `addr` at `path`. Returns the status on a non-101 answer as `Err`.
pub async fn ws_connect(addr: SocketAddr, path: &str) -> Result<Client, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "closed during handshake after {} bytes: {}",
                buf.len(),
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err("response head too large".into());
        }
    };
    let status: u16 = std::str::from_utf8(&buf[..end])
        .ok()
        .and_then(|t| t.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if status != 101 {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&buf)
        ));
    }
    let extra = buf[end..].to_vec();
    let mut ws = WebSocket::after_handshake(Prefixed::new(s, extra), Role::Client);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    Ok(Client {
        ws,
        status,
        close_reason: None,
    })
}

impl Client {
    /// Read the next text frame as a string.
    pub async fn recv_text(&mut self) -> Result<String, String> {
        loop {
            let f = self.ws.read_frame().await.map_err(|e| e.to_string())?;
            match f.opcode {
                OpCode::Text | OpCode::Binary => {
                    return Ok(String::from_utf8_lossy(&f.payload).into_owned())
                }
                OpCode::Close => {
                    let code = f
                        .payload
                        .get(..2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .unwrap_or(1005);
                    self.close_reason = f
                        .payload
                        .get(2..)
                        .map(|r| String::from_utf8_lossy(r).into_owned());
                    return Err(format!("closed {code}"));
                }
                _ => {}
            }
        }
    }

    /// Read the backend's `node=<name>` greeting.
    pub async fn node(&mut self) -> Result<String, String> {
        let t = self.recv_text().await?;
        t.strip_prefix("node=").map(str::to_string).ok_or(t)
    }

    pub async fn send_text(&mut self, text: &str) -> Result<(), String> {
        self.ws
            .write_frame(Frame::text(Payload::Owned(text.as_bytes().to_vec())))
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn close(&mut self) -> Result<(), String> {
        self.ws
            .write_frame(Frame::close(1000, b""))
            .await
            .map_err(|e| e.to_string())
    }
}

/// A raw HTTP/1.1 request with `Connection: close`; returns (status, head, body).
pub async fn http_request(addr: SocketAddr, raw: &str) -> Result<(u16, String, String), String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(raw.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_string(), body.to_string()))
}

/// `GET path` with `Connection: close`.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String, String), String> {
    http_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
    )
    .await
}

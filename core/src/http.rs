//! HTTP: the accept loop and a small hand router over hyper 1.
//!
//! Every route of the contract is matched in [`route`]; handlers parse,
//! call [`QuizService`] and render JSON. Errors always have the contract's
//! shape `{"error":{"code","message"}}`. Bodies are capped at
//! `http_max_body_bytes` (1 MiB → 413) before they are read into memory.
//! A host action wakes this node's room once the service has applied it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;

use crate::admission::Gate;
use crate::client_addr::TrustedProxies;
use crate::config::Tier;
use crate::error::QuizError;
use crate::limit::IpLimiter;
use crate::metrics::HttpRoute;
use crate::model::{Leaderboard, Mode, Standing};
use crate::protocol::{self, CreateQuizReq, JoinReq, JoinResp, JoinedQuiz, PlayerView, QuizView};
use crate::room::Rooms;
use crate::rules::HostAction;
use crate::service::QuizService;
use crate::shutdown::Shutdown;

type Resp = Response<Full<Bytes>>;

/// The header (and its value) on a 101 whose token was refused before the
/// upgrade: the socket will only carry the 4001 close. For edge-lb, which
/// counts authentication failures per client address (as it counts the
/// 401 and 403 answers, whose status says it) and removes the header
/// before the client sees it. Internal: not part of the contract.
pub const AUTH_REFUSED_HEADER: &str = "x-quiz-auth";
pub const AUTH_REFUSED_VALUE: &str = "refused";

/// A connection's `max_connections` permit, until an upgrade takes it.
type PermitSlot = Arc<Mutex<Option<OwnedSemaphorePermit>>>;

/// What the routes work with: the service, this node's rooms, the
/// per-IP POST limiter (keyed by the client address `trusted` yields) and
/// the leaderboard cache.
struct Node {
    svc: Arc<QuizService>,
    rooms: Arc<Rooms>,
    post_limiter: IpLimiter,
    boards: BoardCache,
    trusted: TrustedProxies,
    /// Admission control of joins (`admission.rs`).
    joins: Gate,
    /// Admission control of WebSocket upgrades (`admission.rs`).
    upgrades: Gate,
}

/// `GET …/leaderboard` reads the store at most once per quiz per
/// `leaderboard_interval_ms` (the WebSocket boards' tick): the route is
/// public, and every read runs a script on the quiz's master. One read of
/// the top 100 serves every `limit` (the top is sorted: a smaller limit is
/// a prefix). Concurrent requests of one tick share one read (a
/// `OnceCell` per slot; a failed read leaves it empty for the next
/// request). A join or host action through this node drops the quiz's
/// slot, so its caller reads its own write; other nodes' changes show up
/// within a tick. Bounded like the IP limiter: past 10 000 quizzes the map
/// is cleared.
struct BoardCache {
    map: DashMap<String, BoardSlot>,
    ttl: Duration,
}

type BoardSlot = Arc<(
    tokio::time::Instant,
    tokio::sync::OnceCell<Arc<Leaderboard>>,
)>;

const BOARD_CACHE_MAX: usize = 10_000;

impl BoardCache {
    async fn get(&self, svc: &QuizService, quiz_id: &str) -> Result<Arc<Leaderboard>, QuizError> {
        if self.map.len() > BOARD_CACHE_MAX {
            self.map.clear();
        }
        let now = tokio::time::Instant::now();
        let fresh = || Arc::new((now, tokio::sync::OnceCell::new()));
        // The shard guard is dropped before the await.
        let slot: BoardSlot = {
            let mut e = self.map.entry(quiz_id.to_string()).or_insert_with(fresh);
            if now.duration_since(e.0) >= self.ttl {
                *e = fresh();
            }
            Arc::clone(&e)
        };
        slot.1
            .get_or_try_init(|| async {
                Ok::<_, QuizError>(Arc::new(svc.store.leaderboard(quiz_id, 100).await?))
            })
            .await
            .cloned()
    }

    /// This node changed the quiz: the next request reads the store.
    fn invalidate(&self, quiz_id: &str) {
        self.map.remove(quiz_id);
    }
}

/// Serves `listener` until shutdown; then drains connections and flushes
/// the event sink within `shutdown_grace_ms`.
pub async fn serve(
    svc: Arc<QuizService>,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let rooms = Rooms::new(Arc::clone(&svc));
    rooms.spawn_bus_listener(shutdown.token().clone());
    let node = Arc::new(Node {
        post_limiter: IpLimiter::new(
            svc.config.http_post_rate_per_sec,
            svc.config.http_post_burst,
        ),
        boards: BoardCache {
            map: DashMap::new(),
            ttl: Duration::from_millis(svc.config.leaderboard_interval_ms),
        },
        // `Config::validate` checked the list.
        trusted: TrustedProxies::parse(&svc.config.trusted_proxies).unwrap_or_default(),
        joins: Gate::new(
            svc.config.join_max_in_flight,
            Duration::from_millis(svc.config.join_queue_ms),
        ),
        upgrades: Gate::new(
            svc.config.upgrade_max_in_flight,
            Duration::from_millis(svc.config.upgrade_queue_ms),
        ),
        svc: Arc::clone(&svc),
        rooms,
    });
    let limit = Arc::new(tokio::sync::Semaphore::new(svc.config.max_connections));
    tracing::info!(
        addr = %listener.local_addr()?,
        node = %svc.config.node_name,
        tier = ?svc.config.tier,
        embedded = svc.config.is_embedded(),
        "listening"
    );
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.triggered() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            svc.metrics.connections_refused.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let node = Arc::clone(&node);
        let sd = shutdown.clone();
        // The connection's place under `max_connections`. An upgrade takes
        // it out of the slot into the WebSocket's task (hyper's connection
        // ends at the upgrade; the socket lives on and still counts).
        let permit: PermitSlot = Arc::new(Mutex::new(Some(permit)));
        shutdown.spawn(async move {
            let sd2 = sd.clone();
            let service = hyper::service::service_fn(move |req| {
                let node = Arc::clone(&node);
                let sd = sd2.clone();
                let permit = Arc::clone(&permit);
                async move { Ok::<_, Infallible>(handle(node, req, peer, sd, permit).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = sd.triggered() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    tracing::info!("shutting down: stopped accepting, closing connections");
    let grace = Duration::from_millis(svc.config.shutdown_grace_ms);
    if !shutdown.wait_tasks(grace).await {
        tracing::warn!("some connections did not finish within the grace period");
    }
    match svc.sink.flush(grace).await {
        Ok(()) => tracing::info!("event sink flushed"),
        Err(e) => tracing::error!(error = %e, "event sink flush failed"),
    }
    Ok(())
}

async fn handle(
    node: Arc<Node>,
    req: Request<Incoming>,
    peer: SocketAddr,
    sd: Shutdown,
    permit: PermitSlot,
) -> Resp {
    let started = std::time::Instant::now();
    let template = route_template(req.uri().path());
    // The client behind a trusted proxy (edge-lb), else the TCP peer.
    let peer = SocketAddr::new(
        node.trusted.client_ip(peer.ip(), req.headers()),
        peer.port(),
    );
    let resp = match route(&node, req, peer, &sd, &permit).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    let metrics = &node.svc.metrics;
    metrics
        .http_responses
        .with_label_values(&[resp.status().as_str()])
        .inc();
    metrics.observe_http(
        template,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// The route a path is served by, as a metric label: the same shapes
/// [`route`] matches (segments between slashes, outer slashes ignored),
/// whatever the method; anything else is [`HttpRoute::Other`], so a client
/// inventing paths adds no series.
fn route_template(path: &str) -> HttpRoute {
    if crate::web::asset(path).is_some() {
        return HttpRoute::Web;
    }
    // Six segments tell every route apart; no allocation.
    let mut it = path.trim_matches('/').split('/');
    let segs: [Option<&str>; 6] = std::array::from_fn(|_| it.next());
    match segs {
        [Some("healthz"), None, ..] => HttpRoute::Healthz,
        [Some("readyz"), None, ..] => HttpRoute::Readyz,
        [Some("metrics"), None, ..] => HttpRoute::Metrics,
        [Some("v1"), Some("quizzes"), None, ..] => HttpRoute::Quizzes,
        [Some("v1"), Some("quizzes"), Some(_), None, ..] => HttpRoute::Quiz,
        [Some("v1"), Some("quizzes"), Some(_), Some(sub), None, _] => match sub {
            "players" => HttpRoute::Players,
            "leaderboard" => HttpRoute::Leaderboard,
            "start" => HttpRoute::Start,
            "next" => HttpRoute::Next,
            "end" => HttpRoute::End,
            "ws" => HttpRoute::Ws,
            _ => HttpRoute::Other,
        },
        [Some("v1"), Some("quizzes"), Some(_), Some("players"), Some(_), None] => HttpRoute::Player,
        _ => HttpRoute::Other,
    }
}

async fn route(
    node: &Node,
    req: Request<Incoming>,
    peer: SocketAddr,
    sd: &Shutdown,
    permit: &PermitSlot,
) -> Result<Resp, QuizError> {
    let svc = &node.svc;
    let path = req.uri().path().to_string();
    if let Some(r) = crate::web::response(req.method(), &path) {
        return Ok(r);
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let tier = svc.config.tier;
    let api = tier != Tier::Ws;
    let not_served = |what: &str| {
        Err(QuizError::NotFound(format!(
            "{what} is not served by this node (tier {tier:?})"
        )))
    };
    match (segs.as_slice(), &method) {
        (["healthz"], &Method::GET) => Ok(json(
            StatusCode::OK,
            &serde_json::json!({"status": "ok", "node": svc.config.node_name}),
        )),
        (["readyz"], &Method::GET) => readyz(svc, sd).await,
        (["metrics"], &Method::GET) => Ok(Response::builder()
            .header(CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(svc.metrics.render())))
            .unwrap_or_default()),
        (["v1", "quizzes", id, "ws"], &Method::GET) => {
            if tier == Tier::Api {
                return not_served("the WebSocket route");
            }
            ws_upgrade(node, req, id, sd, permit).await
        }
        (["v1", "quizzes"], &Method::POST) if api => {
            rate_limit(node, peer)?;
            create_quiz(svc, req).await
        }
        (["v1", "quizzes", id], &Method::GET) if api => {
            let def = svc.def(id).await?;
            let state = svc.state(id).await?;
            Ok(json(StatusCode::OK, &QuizView::new(&def, &state)))
        }
        (["v1", "quizzes", id, "players"], &Method::POST) if api => {
            rate_limit(node, peer)?;
            let r = join(node, req, id).await;
            node.boards.invalidate(id);
            r
        }
        (["v1", "quizzes", id, "players", pid], &Method::GET) if api => player(svc, id, pid).await,
        (["v1", "quizzes", id, "leaderboard"], &Method::GET) if api => {
            leaderboard(node, &req, id).await
        }
        (["v1", "quizzes", id, action @ ("start" | "next" | "end")], &Method::POST) if api => {
            host_action(node, &req, id, action).await
        }
        (["v1", "quizzes", ..], _) if !api => not_served("the HTTP API"),
        (["v1", "quizzes"], _)
        | (["v1", "quizzes", _], _)
        | (["v1", "quizzes", _, "players" | "leaderboard" | "start" | "next" | "end" | "ws"], _)
        | (["v1", "quizzes", _, "players", _], _)
        | (["healthz" | "readyz" | "metrics"], _) => Ok(error_with(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("{method} is not allowed on {path}"),
        )),
        _ => Err(QuizError::NotFound(format!("no route {path}"))),
    }
}

async fn readyz(svc: &QuizService, sd: &Shutdown) -> Result<Resp, QuizError> {
    if sd.is_draining() {
        return Err(QuizError::Unavailable(
            "not ready: draining before shutdown".into(),
        ));
    }
    readiness(svc.ready().await)
}

/// `/readyz`'s answer: the status only. Why the node is not ready (a store
/// or broker error, with addresses and names in it) goes to the log, not
/// to whoever asks on the public port.
fn readiness(ready: Result<(), String>) -> Result<Resp, QuizError> {
    match ready {
        Ok(()) => Ok(json(
            StatusCode::OK,
            &serde_json::json!({"status": "ready"}),
        )),
        Err(why) => {
            tracing::warn!(reason = %why, "not ready");
            Err(QuizError::Unavailable(
                "not ready: a backend is unavailable (see the node's log)".into(),
            ))
        }
    }
}

/// Compares two secrets in time that depends only on their lengths (the
/// admin key: an early exit at the first differing byte would let a
/// client find it byte by byte from response times).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// `POST /v1/quizzes`.
async fn create_quiz(svc: &QuizService, req: Request<Incoming>) -> Result<Resp, QuizError> {
    if let Some(key) = &svc.config.admin_key {
        let given = req
            .headers()
            .get("x-admin-key")
            .map_or(&b""[..], |v| v.as_bytes());
        if !constant_time_eq(given, key.as_bytes()) {
            return Err(QuizError::Unauthorized(
                "x-admin-key: this node requires the admin key to create quizzes".into(),
            ));
        }
    }
    // Optional: a retried create with the same key gets the same quiz
    // back (see `QuizService::create_quiz_with_key`).
    let key = idempotency_key(&req)?;
    let body: CreateQuizReq = read_json(svc, req).await?;
    let (def, host_token) = svc.create_quiz_with_key(body, key.as_deref()).await?;
    Ok(json(
        StatusCode::CREATED,
        &protocol::CreateQuizResp {
            quiz_id: def.quiz_id.clone(),
            host_token,
        },
    ))
}

/// The optional `Idempotency-Key` header (at most once).
fn idempotency_key(req: &Request<Incoming>) -> Result<Option<Vec<u8>>, QuizError> {
    let mut keys = req.headers().get_all("idempotency-key").iter();
    let key = keys.next().map(|v| v.as_bytes().to_vec());
    if keys.next().is_some() {
        return Err(QuizError::Invalid(
            "Idempotency-Key: must be given at most once".into(),
        ));
    }
    Ok(key)
}

/// `POST /v1/quizzes/{id}/players`.
async fn join(node: &Node, req: Request<Incoming>, id: &str) -> Result<Resp, QuizError> {
    let svc = &node.svc;
    svc.def(id).await?;
    // Optional: a retried join with the same key gets the same
    // player back (see `QuizService::join_with_key`).
    let key = idempotency_key(&req)?;
    let body: JoinReq = read_json(svc, req).await?;
    // Admitted after the body is read (a slow body must not hold a place)
    // and before anything is written (`admission.rs`).
    let Some(_place) = node.joins.enter().await else {
        svc.metrics
            .admission_refused
            .with_label_values(&["join"])
            .inc();
        return Err(QuizError::Busy(
            "busy: this node is admitting joins as fast as it can; retry after Retry-After".into(),
        ));
    };
    let (def, state, player, token, lb) = svc
        .join_with_key(id, &body.nickname, key.as_deref())
        .await?;
    let released = match (def.mode, state.current_question) {
        (Mode::Live, Some(c)) => def
            .questions
            .iter()
            .take(c as usize + 1)
            .map(Into::into)
            .collect(),
        _ => Vec::new(),
    };
    Ok(json(
        StatusCode::CREATED,
        &JoinResp {
            player_id: &player.player_id,
            player_token: &token,
            quiz: JoinedQuiz {
                view: QuizView::new(&def, &state),
                questions: released,
            },
            leaderboard: &lb,
        },
    ))
}

/// `GET /v1/quizzes/{id}/players/{pid}`.
async fn player(svc: &QuizService, id: &str, pid: &str) -> Result<Resp, QuizError> {
    svc.def(id).await?;
    let player = svc
        .store
        .get_player(id, pid)
        .await?
        .ok_or_else(|| QuizError::NotFound(format!("player_id: no player {pid:?}")))?;
    let standing = svc
        .store
        .standing(id, pid)
        .await?
        .unwrap_or(Standing { score: 0, rank: 0 });
    Ok(json(
        StatusCode::OK,
        &PlayerView {
            player_id: &player.player_id,
            nickname: &player.nickname,
            score: standing.score,
            rank: standing.rank,
        },
    ))
}

/// `GET /v1/quizzes/{id}/leaderboard[?limit=n]`, from the per-tick cache.
async fn leaderboard(node: &Node, req: &Request<Incoming>, id: &str) -> Result<Resp, QuizError> {
    let svc = &node.svc;
    let limit = match query_param(req.uri().query(), "limit") {
        None => svc.config.leaderboard_top,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => return Err(QuizError::Invalid("limit: must be an integer 1–100".into())),
        },
    };
    svc.def(id).await?;
    let lb = node.boards.get(svc, id).await?;
    Ok(json(
        StatusCode::OK,
        &Leaderboard {
            quiz_id: lb.quiz_id.clone(),
            version: lb.version,
            total_players: lb.total_players,
            top: lb.top.iter().take(limit).cloned().collect(),
        },
    ))
}

/// `POST /v1/quizzes/{id}/{start|next|end}` with the host's bearer token.
async fn host_action(
    node: &Node,
    req: &Request<Incoming>,
    id: &str,
    action: &str,
) -> Result<Resp, QuizError> {
    let svc = &node.svc;
    let action = match action {
        "start" => HostAction::Start,
        "next" => HostAction::Next,
        _ => HostAction::End,
    };
    let bearer = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    svc.def(id).await?;
    svc.authorize_host(id, bearer)?;
    let (def, state) = svc.host_action(id, action).await?;
    node.boards.invalidate(id);
    // The room re-reads the state now (other nodes' rooms hear it on the bus).
    node.rooms.wake(id);
    Ok(json(StatusCode::OK, &QuizView::new(&def, &state)))
}

async fn ws_upgrade(
    node: &Node,
    mut req: Request<Incoming>,
    quiz_id: &str,
    sd: &Shutdown,
    permit: &PermitSlot,
) -> Result<Resp, QuizError> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return Err(QuizError::Invalid(
            "upgrade: this route needs a WebSocket upgrade request".into(),
        ));
    }
    let token = query_param(req.uri().query(), "token").map(str::to_string);
    // What the token says on its own (MAC, expiry, the path's quiz) is
    // checked before anything else: a token that fails still gets its 101
    // (the contract's 4001 close is how a browser learns why), but only a
    // task that writes that close, and no admission place (it reads nothing
    // from the store). The 101 carries `x-quiz-auth: refused` so edge-lb
    // counts the client's authentication failures without parsing frames
    // (docs/edge-lb.md, `auth_failures_per_sec`); edge-lb strips it.
    if let Err(refusal) = crate::connection::check_token(&node.svc, quiz_id, token.as_deref()) {
        let (resp, fut) = fastwebsockets::upgrade::upgrade(&mut req)
            .map_err(|e| QuizError::Invalid(format!("upgrade: {e}")))?;
        sd.spawn(crate::connection::refuse(
            Arc::clone(&node.svc),
            fut,
            refusal,
            permit.lock().take(),
        ));
        let (mut parts, _) = resp.into_parts();
        parts.headers.insert(
            AUTH_REFUSED_HEADER,
            HeaderValue::from_static(AUTH_REFUSED_VALUE),
        );
        return Ok(Response::from_parts(parts, Full::new(Bytes::new())));
    }
    // Admitted before the 101 is written: a refused upgrade is an ordinary
    // 503 response, nothing read from the store, no room touched. The
    // place goes with the connection and is given back once its welcome
    // is queued and it is in its room (`connection::serve`), so the gate
    // bounds the setup's store reads and room attaches, not open sockets
    // (a held socket costs no store call; `max_connections` bounds those).
    let Some(admitted) = node.upgrades.enter_owned().await else {
        node.svc
            .metrics
            .admission_refused
            .with_label_values(&["upgrade"])
            .inc();
        return Err(QuizError::Busy(
            "busy: this node is admitting connections as fast as it can; retry after Retry-After"
                .into(),
        ));
    };
    let (resp, fut) = fastwebsockets::upgrade::upgrade(&mut req)
        .map_err(|e| QuizError::Invalid(format!("upgrade: {e}")))?;
    // The handshake always succeeds; a bad token or unknown quiz is then
    // reported with a close code (4001 / 4004), as the contract says.
    // The socket keeps the connection's permit until it closes (passed in,
    // not held by a wrapping future: one that awaits `serve` would carry
    // its state twice, ~1.8 KB per idle socket, measured).
    sd.spawn(crate::connection::serve(
        Arc::clone(&node.svc),
        Arc::clone(&node.rooms),
        fut,
        quiz_id.to_string(),
        token,
        sd.token().clone(),
        crate::connection::Places {
            connection: permit.lock().take(),
            setup: admitted,
        },
    ));
    let (parts, _) = resp.into_parts();
    Ok(Response::from_parts(parts, Full::new(Bytes::new())))
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

async fn read_json<T: serde::de::DeserializeOwned>(
    svc: &QuizService,
    req: Request<Incoming>,
) -> Result<T, QuizError> {
    let max = svc.config.http_max_body_bytes;
    let too_large = || QuizError::TooLarge(format!("body: larger than {max} bytes"));
    if let Some(len) = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > max as u64 {
            return Err(too_large());
        }
    }
    let body = Limited::new(req.into_body(), max)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large()
            } else {
                QuizError::Invalid(format!("body: {e}"))
            }
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| QuizError::Invalid(format!("body: {e}")))
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Resp {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error_with(status: StatusCode, code: &str, message: &str) -> Resp {
    json(
        status,
        &serde_json::json!({"error": {"code": code, "message": message}}),
    )
}

pub fn status_of(e: &QuizError) -> StatusCode {
    match e {
        QuizError::Invalid(_) => StatusCode::BAD_REQUEST,
        QuizError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        QuizError::Forbidden(_) => StatusCode::FORBIDDEN,
        QuizError::NotFound(_) => StatusCode::NOT_FOUND,
        QuizError::Conflict(_) | QuizError::QuizFull(_) => StatusCode::CONFLICT,
        QuizError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        QuizError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        QuizError::Unavailable(_) | QuizError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn error_response(e: &QuizError) -> Resp {
    let mut r = error_with(status_of(e), e.code(), &e.to_string());
    match e {
        QuizError::Unavailable(_) => {
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("2"));
        }
        QuizError::RateLimited(_) => {
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // Spread: clients refused together must not come back together.
        QuizError::Busy(_) => {
            let s = rand::random_range(1..=3u16);
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
        }
        _ => {}
    }
    r
}

fn rate_limit(node: &Node, peer: SocketAddr) -> Result<(), QuizError> {
    if node.post_limiter.allow(peer.ip()) {
        Ok(())
    } else {
        tracing::debug!(client = %peer.ip(), "POST rate limited");
        Err(QuizError::RateLimited(
            "too many requests from this address; retry after a second".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route of the contract has its template; ids, extra segments and
    /// unknown paths never reach the label.
    #[test]
    fn route_templates_are_bounded() {
        for (path, want) in [
            ("/v1/quizzes", "/v1/quizzes"),
            ("/v1/quizzes/", "/v1/quizzes"),
            ("/v1/quizzes/q-1", "/v1/quizzes/{quiz_id}"),
            ("/v1/quizzes/q-1/players", "/v1/quizzes/{quiz_id}/players"),
            (
                "/v1/quizzes/q-1/players/p-9",
                "/v1/quizzes/{quiz_id}/players/{player_id}",
            ),
            (
                "/v1/quizzes/q-1/leaderboard",
                "/v1/quizzes/{quiz_id}/leaderboard",
            ),
            ("/v1/quizzes/q-1/start", "/v1/quizzes/{quiz_id}/start"),
            ("/v1/quizzes/q-1/next", "/v1/quizzes/{quiz_id}/next"),
            ("/v1/quizzes/q-1/end", "/v1/quizzes/{quiz_id}/end"),
            ("/v1/quizzes/q-1/ws", "/v1/quizzes/{quiz_id}/ws"),
            ("/healthz", "/healthz"),
            ("//metrics", "/metrics"),
            ("/readyz", "/readyz"),
            ("/", "web"),
            ("/host", "web"),
            ("/assets/qr.js", "web"),
            ("/assets/nothing.js", "other"),
            ("/v1/quizzes/q-1/players/p-9/x", "other"),
            ("/v1/quizzes/q-1/whatever", "other"),
            ("/v1/nothing", "other"),
            ("/metrics/x", "other"),
            ("/a/b/c/d/e/f/g/h", "other"),
        ] {
            assert_eq!(route_template(path).as_str(), want, "{path}");
        }
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"admin-key-123456", b"admin-key-123456"));
        assert!(!constant_time_eq(b"admin-key-123456", b"admin-key-123457"));
        assert!(!constant_time_eq(b"admin-key-12345", b"admin-key-123456"));
        assert!(!constant_time_eq(b"", b"admin-key-123456"));
    }

    /// `/readyz` keeps its status but not the backend's error text.
    #[tokio::test]
    async fn readyz_does_not_expose_the_reason() {
        let why = "store unavailable: Connection refused (os error 111) 10.1.2.3:7000";
        let r = readiness(Err(why.into())).unwrap_err();
        assert_eq!(status_of(&r), StatusCode::SERVICE_UNAVAILABLE);
        let body = error_response(&r)
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(
            !body.contains("10.1.2.3") && !body.contains("refused"),
            "{body}"
        );
        assert!(body.contains("not ready"), "{body}");
        assert!(readiness(Ok(())).is_ok());
    }

    #[test]
    fn statuses_and_codes() {
        for (e, s, c) in [
            (QuizError::Invalid("x".into()), 400, "invalid"),
            (QuizError::Unauthorized("x".into()), 401, "unauthorized"),
            (QuizError::Forbidden("x".into()), 403, "forbidden"),
            (QuizError::NotFound("x".into()), 404, "not_found"),
            (QuizError::Conflict("x".into()), 409, "conflict"),
            (QuizError::TooLarge("x".into()), 413, "too_large"),
            (QuizError::RateLimited("x".into()), 429, "rate_limited"),
            (QuizError::Unavailable("x".into()), 503, "unavailable"),
            (QuizError::QuizFull("x".into()), 409, "quiz_full"),
        ] {
            let r = error_response(&e);
            assert_eq!(r.status().as_u16(), s);
            assert_eq!(e.code(), c);
            if s == 503 || s == 429 {
                assert!(r.headers().contains_key(RETRY_AFTER));
            }
        }
        assert_eq!(query_param(Some("a=1&token=t.x"), "token"), Some("t.x"));
        assert_eq!(query_param(None, "token"), None);
    }
}

//! A small in-process stand-in for the quiz platform (CONTRACT.md subset),
//! so the whole tool -- coordinator, worker processes, players, checks -- can
//! be tested without core. `Bug` makes it lie in a chosen way, to prove the
//! checker catches it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Bug {
    None,
    /// GET /players/{pid} reports one point more than was scored.
    ScoreOffByOne,
    /// The leaderboard omits the first player.
    LeaderboardDropsPlayer,
    /// Not a lie, a crash: each player's first answer to question 1 is
    /// recorded and scored, then the connection drops before its
    /// `answer_result` (a node killed between the store and the reply).
    /// A re-send of a recorded answer gets `duplicate` with the original's
    /// result, as core does.
    LosesAck,
    /// [`Bug::LosesAck`], and a re-send is refused with `not_open` (an
    /// older core, once the question was no longer open to it).
    LosesAckRefusesResend,
    /// Not a lie, a full node: a quiz takes five players, and every later
    /// join is refused with 429 and `Retry-After: 1` each time it is tried
    /// (core's `connection_limit` on a node that stays full).
    FullAtFivePlayers,
}

/// What a join request meets.
enum Join {
    NoQuiz,
    /// [`Bug::FullAtFivePlayers`]: the quiz has no room left.
    Full,
    Joined(String),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

struct Q {
    correct: Vec<u32>,
    time_limit_ms: u64,
    points: u64,
}

struct P {
    id: String,
    nick: String,
    score: u64,
    /// Question → the recorded answer's (correct, points).
    answered: HashMap<u32, (bool, u64)>,
    /// [`Bug::LosesAck`]: this player's ack was dropped already.
    lost_ack: bool,
    tx: Option<mpsc::UnboundedSender<Vec<u8>>>,
}

struct Quiz {
    host_token: String,
    questions: Vec<Q>,
    state: &'static str,
    current: Option<usize>,
    opens_at: u64,
    closes_at: u64,
    players: Vec<P>,
}

#[derive(Default)]
struct State {
    quizzes: HashMap<String, Quiz>,
    next: u64,
}

type Shared = Arc<Mutex<State>>;

pub async fn start(bug: Bug) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let st: Shared = Arc::default();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let st = st.clone();
            tokio::spawn(async move {
                let _ = conn(s, st, bug).await;
            });
        }
    });
    addr
}

fn question_msg(q: &Q, idx: usize, opens: u64, closes: u64) -> Value {
    json!({"type":"question","question":{"id":idx,"index":idx,"text":"?","options":["a","b","c","d"],
        "time_limit_ms":q.time_limit_ms,"points":q.points},"opens_at_ms":opens,"closes_at_ms":closes})
}

fn top(quiz: &Quiz, limit: usize, bug: Bug) -> Vec<Value> {
    let mut ps: Vec<&P> = quiz.players.iter().collect();
    ps.sort_by(|a, b| b.score.cmp(&a.score).then(a.id.cmp(&b.id)));
    if bug == Bug::LeaderboardDropsPlayer && !ps.is_empty() {
        ps.remove(0);
    }
    ps.iter()
        .take(limit)
        .enumerate()
        .map(|(i, p)| json!({"rank": i + 1, "player_id": p.id, "nickname": p.nick, "score": p.score}))
        .collect()
}

fn rank(quiz: &Quiz, score: u64) -> usize {
    1 + quiz.players.iter().filter(|p| p.score > score).count()
}

async fn respond(s: &mut TcpStream, status: u16, body: Value) -> std::io::Result<()> {
    respond_with(s, status, "", body).await
}

/// [`respond`] with extra header lines (each ending in `\r\n`).
async fn respond_with(
    s: &mut TcpStream,
    status: u16,
    headers: &str,
    body: Value,
) -> std::io::Result<()> {
    let b = body.to_string();
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
        b.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(b.as_bytes()).await?;
    s.shutdown().await
}

fn frame(payload: &[u8], opcode: u8) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let n = payload.len();
    if n < 126 {
        out.push(n as u8);
    } else {
        out.push(126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

fn broadcast(quiz: &mut Quiz, msg: &Value) {
    let bytes = msg.to_string().into_bytes();
    for p in &quiz.players {
        if let Some(tx) = &p.tx {
            let _ = tx.send(bytes.clone());
        }
    }
}

async fn conn(mut s: TcpStream, st: Shared, bug: Bug) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let end = loop {
        let mut c = [0u8; 4096];
        let n = s.read(&mut c).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&c[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.lines();
    let first = lines.next().unwrap_or("").to_string();
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut auth = String::new();
    let mut len = 0usize;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().unwrap_or(0),
            "authorization" => auth = v.trim().trim_start_matches("Bearer ").to_string(),
            _ => {}
        }
    }
    let mut body = buf[end + 4..].to_vec();
    while body.len() < len {
        let mut c = [0u8; 4096];
        let n = s.read(&mut c).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&c[..n]);
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), seg.as_slice()) {
        ("GET", ["healthz"]) => respond(&mut s, 200, json!({"ok":true})).await,
        ("POST", ["v1", "quizzes"]) => {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let qs = v["questions"].as_array().cloned().unwrap_or_default();
            let (id, tok) = {
                let mut g = st.lock().unwrap();
                g.next += 1;
                let id = format!("mock{}", g.next);
                let tok = format!("host-{id}");
                let questions = qs
                    .iter()
                    .map(|q| Q {
                        correct: q["correct"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|c| c.as_u64().unwrap() as u32)
                            .collect(),
                        time_limit_ms: q["time_limit_ms"].as_u64().unwrap(),
                        points: q["points"].as_u64().unwrap(),
                    })
                    .collect();
                g.quizzes.insert(
                    id.clone(),
                    Quiz {
                        host_token: tok.clone(),
                        questions,
                        state: "lobby",
                        current: None,
                        opens_at: 0,
                        closes_at: 0,
                        players: Vec::new(),
                    },
                );
                (id, tok)
            };
            respond(&mut s, 201, json!({"quiz_id": id, "host_token": tok})).await
        }
        ("POST", ["v1", "quizzes", qid, "players"]) => {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let nick = v["nickname"].as_str().unwrap_or("").to_string();
            let r = {
                let mut g = st.lock().unwrap();
                match g.quizzes.get_mut(*qid) {
                    None => Join::NoQuiz,
                    Some(q) if bug == Bug::FullAtFivePlayers && q.players.len() == 5 => Join::Full,
                    Some(q) => {
                        let pid = format!("p{}", q.players.len());
                        q.players.push(P {
                            id: pid.clone(),
                            nick,
                            score: 0,
                            answered: HashMap::new(),
                            lost_ack: false,
                            tx: None,
                        });
                        Join::Joined(pid)
                    }
                }
            };
            match r {
                Join::Full => {
                    respond_with(
                        &mut s,
                        429,
                        "Retry-After: 1\r\n",
                        json!({"error":{"code":"connection_limit","message":"node full"}}),
                    )
                    .await
                }
                Join::Joined(pid) => {
                    let token = format!("{qid}/{pid}+x=");
                    respond(&mut s, 201, json!({"player_id": pid, "player_token": token, "quiz": {}, "leaderboard": {}})).await
                }
                Join::NoQuiz => {
                    respond(
                        &mut s,
                        404,
                        json!({"error":{"code":"not_found","message":"quiz"}}),
                    )
                    .await
                }
            }
        }
        ("POST", ["v1", "quizzes", qid, verb]) => {
            let ok = {
                let mut g = st.lock().unwrap();
                match g.quizzes.get_mut(*qid) {
                    Some(q) if q.host_token == auth => {
                        let now = now_ms();
                        let next = match *verb {
                            "start" => Some(0),
                            "next" => q.current.map(|c| c + 1),
                            _ => None,
                        };
                        match next {
                            Some(n) if n < q.questions.len() => {
                                q.state = "running";
                                q.current = Some(n);
                                q.opens_at = now;
                                q.closes_at = now + q.questions[n].time_limit_ms;
                                let m = question_msg(&q.questions[n], n, q.opens_at, q.closes_at);
                                broadcast(q, &m);
                            }
                            _ => {
                                q.state = "ended";
                                let m = json!({"type":"quiz_ended","top": top(q, 10, Bug::None)});
                                broadcast(q, &m);
                                for p in &mut q.players {
                                    p.tx = None;
                                }
                            }
                        }
                        true
                    }
                    _ => false,
                }
            };
            if ok {
                respond(&mut s, 200, json!({"state":"ok"})).await
            } else {
                respond(
                    &mut s,
                    401,
                    json!({"error":{"code":"unauthorized","message":"token"}}),
                )
                .await
            }
        }
        ("GET", ["v1", "quizzes", qid, "leaderboard"]) => {
            let limit: usize = query
                .strip_prefix("limit=")
                .and_then(|v| v.parse().ok())
                .unwrap_or(10);
            let v = {
                let g = st.lock().unwrap();
                g.quizzes.get(*qid).map(|q| {
                    json!({"quiz_id": qid, "version": 1, "total_players": q.players.len(), "top": top(q, limit, bug)})
                })
            };
            respond(&mut s, 200, v.unwrap_or(Value::Null)).await
        }
        ("GET", ["v1", "quizzes", qid, "players", pid]) => {
            let v = {
                let g = st.lock().unwrap();
                g.quizzes.get(*qid).and_then(|q| {
                    q.players.iter().find(|p| p.id == *pid).map(|p| {
                        let off = if bug == Bug::ScoreOffByOne { 1 } else { 0 };
                        json!({"player_id": p.id, "nickname": p.nick, "score": p.score + off, "rank": rank(q, p.score)})
                    })
                })
            };
            respond(&mut s, 200, v.unwrap_or(Value::Null)).await
        }
        ("GET", ["v1", "quizzes", qid, "ws"]) => {
            let token = query
                .strip_prefix("token=")
                .unwrap_or("")
                .replace("%2F", "/")
                .replace("%2B", "+")
                .replace("%3D", "=");
            let pid = token
                .split('/')
                .nth(1)
                .unwrap_or("")
                .trim_end_matches("+x=")
                .to_string();
            let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
            let welcome = {
                let mut g = st.lock().unwrap();
                let Some(q) = g.quizzes.get_mut(*qid) else {
                    return Ok(());
                };
                let Some(pi) = q.players.iter().position(|p| p.id == pid) else {
                    return Ok(());
                };
                q.players[pi].tx = Some(tx);
                let p = &q.players[pi];
                let mut w = json!({"type":"welcome","role":"player","player_id":p.id,"score":p.score,"rank":rank(q, p.score),"state":q.state});
                if let (Some(c), "running") = (q.current, q.state) {
                    w["question"] = question_msg(&q.questions[c], c, q.opens_at, q.closes_at);
                    w["answered"] = json!(p.answered.contains_key(&(c as u32)));
                }
                w
            };
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n").await?;
            s.write_all(&frame(welcome.to_string().as_bytes(), 1))
                .await?;
            let qid = qid.to_string();
            let mut inbuf: Vec<u8> = Vec::new();
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(b) => s.write_all(&frame(&b, 1)).await?,
                        None => { s.write_all(&frame(&1000u16.to_be_bytes(), 8)).await?; return Ok(()); }
                    },
                    r = async { let mut c = [0u8; 2048]; s.read(&mut c).await.map(|n| c[..n].to_vec()) } => {
                        let data = r?;
                        if data.is_empty() { return Ok(()); }
                        inbuf.extend_from_slice(&data);
                        while inbuf.len() >= 6 {
                            let len = (inbuf[1] & 0x7f) as usize; // client frames here are small
                            if inbuf.len() < 6 + len { break; }
                            let op = inbuf[0] & 0x0f;
                            let mask = [inbuf[2], inbuf[3], inbuf[4], inbuf[5]];
                            let payload: Vec<u8> = inbuf[6..6 + len].iter().enumerate().map(|(i, b)| b ^ mask[i & 3]).collect();
                            inbuf.drain(..6 + len);
                            if op == 8 { return Ok(()); }
                            let v: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
                            if v["type"] == "answer" {
                                let reply = answer(&st, &qid, &pid, &v, bug);
                                if reply.is_null() {
                                    return Ok(()); // the ack is lost with the connection
                                }
                                s.write_all(&frame(reply.to_string().as_bytes(), 1)).await?;
                            }
                        }
                    }
                }
            }
        }
        _ => {
            respond(
                &mut s,
                404,
                json!({"error":{"code":"not_found","message":"route"}}),
            )
            .await
        }
    }
}

/// Applies one answer; `Value::Null` = drop the connection without a reply.
fn answer(st: &Shared, qid: &str, pid: &str, v: &Value, bug: Bug) -> Value {
    let now = now_ms();
    let qn = v["question_id"].as_u64().unwrap_or(999) as u32;
    let choices: Vec<u32> = v["choices"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_u64())
                .map(|c| c as u32)
                .collect()
        })
        .unwrap_or_default();
    let mut g = st.lock().unwrap();
    let q = g.quizzes.get_mut(qid).unwrap();
    let (opens, closes, current) = (q.opens_at, q.closes_at, q.current);
    let pi = q.players.iter().position(|p| p.id == pid).unwrap();
    let mut r = json!({"type":"answer_result","question_id":qn,"accepted":false,"correct":false,"points":0});
    let loses_ack = matches!(bug, Bug::LosesAck | Bug::LosesAckRefusesResend);
    if let Some(&(correct, points)) = q.players[pi].answered.get(&qn) {
        // Recorded before, wherever the quiz is now: a duplicate with the
        // original's result (an older core refused it once closed).
        if bug == Bug::LosesAckRefusesResend {
            r["reason"] = json!("not_open");
        } else {
            r["reason"] = json!("duplicate");
            r["correct"] = json!(correct);
            r["points"] = json!(points);
        }
    } else if current != Some(qn as usize) {
        r["reason"] = json!("not_open");
    } else if now >= closes {
        let correct = choices == q.questions[qn as usize].correct;
        q.players[pi].answered.insert(qn, (correct, 0));
        r["reason"] = json!("late");
        r["correct"] = json!(correct);
    } else {
        let qq = &q.questions[qn as usize];
        let correct = choices == qq.correct;
        let t = now - opens;
        let t = if t <= 500 { 0.0 } else { t as f64 };
        let pts = if correct {
            (qq.points as f64 * (1.0 - (t / qq.time_limit_ms as f64) / 2.0)).round() as u64
        } else {
            0
        };
        let p = &mut q.players[pi];
        p.answered.insert(qn, (correct, pts));
        p.score += pts;
        r["accepted"] = json!(true);
        r["correct"] = json!(correct);
        r["points"] = json!(pts);
        if loses_ack && qn == 1 && !p.lost_ack {
            p.lost_ack = true;
            return Value::Null;
        }
    }
    let score = q.players[pi].score;
    r["score"] = json!(score);
    r["rank"] = json!(rank(q, score));
    r
}

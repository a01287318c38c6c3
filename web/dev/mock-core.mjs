// A stand-in for quiz-core, for working on the pages without building Rust:
// serves web/ and a small in-memory implementation of the contract's HTTP API
// and WebSocket (live mode; self-paced is accepted but not simulated).
// Development only — the e2e tests run against the real core.
//
//   node web/dev/mock-core.mjs [port]          (default 8090)
//
// Or, with PROXY=http://127.0.0.1:8080, it only serves web/ and forwards
// /v1/* (including the WebSocket) to a running core.
import http from 'node:http';
import net from 'node:net';
import crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const WEB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const PORT = Number(process.argv[2] || process.env.PORT || 8090);
const PROXY = process.env.PROXY ? new URL(process.env.PROXY) : null;
const TYPES = { html: 'text/html; charset=utf-8', js: 'text/javascript; charset=utf-8', css: 'text/css; charset=utf-8', svg: 'image/svg+xml' };

function staticFile(p) {
  const file = p === '/' ? 'index.html' : p === '/host' ? 'host.html' : p.startsWith('/assets/') && !p.includes('..') ? p.slice(1) : null;
  if (!file) return null;
  try {
    return { type: TYPES[file.split('.').pop()] || 'application/octet-stream', body: readFileSync(path.join(WEB, file)) };
  } catch {
    return null;
  }
}

// ---- minimal RFC 6455 server side -------------------------------------------
function wsAccept(req, socket) {
  const accept = crypto.createHash('sha1').update(`${req.headers['sec-websocket-key']}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
  const ws = { socket, open: true, onmessage: () => {}, onclose: () => {} };
  let buf = Buffer.alloc(0);
  const frame = (op, payload) => {
    const n = payload.length;
    const head = n < 126 ? Buffer.from([0x80 | op, n]) : n < 65536 ? Buffer.from([0x80 | op, 126, n >> 8, n & 255]) : null;
    if (!head) throw new Error('frame too big');
    if (!socket.destroyed) socket.write(Buffer.concat([head, payload]));
  };
  ws.send = (obj) => { if (ws.open) frame(1, Buffer.from(JSON.stringify(obj))); };
  ws.close = (code = 1000, reason = '') => {
    if (!ws.open) return;
    ws.open = false;
    const p = Buffer.alloc(2 + Buffer.byteLength(reason));
    p.writeUInt16BE(code, 0);
    p.write(reason, 2);
    frame(8, p);
    setTimeout(() => socket.destroy(), 100);
    ws.onclose();
  };
  socket.on('data', (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      if (buf.length < 2) return;
      const op = buf[0] & 15;
      let len = buf[1] & 127;
      let off = 2;
      if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
      const masked = buf[1] & 128;
      if (buf.length < off + (masked ? 4 : 0) + len) return;
      const mask = masked ? buf.subarray(off, off + 4) : null;
      off += masked ? 4 : 0;
      const data = Buffer.from(buf.subarray(off, off + len));
      if (mask) for (let i = 0; i < data.length; i++) data[i] ^= mask[i & 3];
      buf = buf.subarray(off + len);
      if (op === 1) {
        if (len > 4096) { ws.close(1009, 'too big'); return; }
        ws.onmessage(data.toString());
      } else if (op === 8) { ws.close(1000); return; } else if (op === 9) frame(10, data);
    }
  });
  const gone = () => { if (ws.open) { ws.open = false; ws.onclose(); } };
  socket.on('close', gone);
  socket.on('error', gone);
  return ws;
}

// ---- the quiz ----------------------------------------------------------------
const quizzes = new Map();
const SECRET = crypto.randomBytes(16);
const sign = (s) => `${s}.${crypto.createHmac('sha256', SECRET).update(s).digest('base64url')}`;
const verify = (t) => {
  const i = (t || '').lastIndexOf('.');
  return i > 0 && sign(t.slice(0, i)) === t ? t.slice(0, i) : null;
};
const rid = (n) => Array.from(crypto.randomBytes(n), (b) => 'abcdefghijklmnopqrstuvwxyz0123456789'[b % 36]).join('');
const now = () => Date.now();
const err = (status, code, message) => ({ status, body: { error: { code, message } } });

function validate(b) {
  if (!b || typeof b !== 'object') return 'body must be a JSON object';
  if (typeof b.title !== 'string' || !b.title.trim()) return 'title must not be empty';
  if (b.mode !== 'live' && b.mode !== 'self_paced') return 'mode must be "live" or "self_paced"';
  if (b.quiz_id !== undefined && !/^[A-Za-z0-9_-]{1,64}$/.test(b.quiz_id)) return 'quiz_id must be 1-64 characters of [A-Za-z0-9_-]';
  if (!Array.isArray(b.questions) || !b.questions.length) return 'questions must not be empty';
  for (const [i, q] of b.questions.entries()) {
    if (typeof q.text !== 'string' || !q.text.trim()) return `questions[${i}].text must not be empty`;
    if (!Array.isArray(q.options) || q.options.length < 2 || q.options.length > 6) return `questions[${i}].options must have 2 to 6 entries`;
    if (!Array.isArray(q.correct) || !q.correct.length || q.correct.some((c) => !Number.isInteger(c) || c < 0 || c >= q.options.length)) return `questions[${i}].correct must hold indices of options`;
    if (!Number.isInteger(q.time_limit_ms) || q.time_limit_ms < 5000 || q.time_limit_ms > 240000) return `questions[${i}].time_limit_ms must be between 5000 and 240000`;
    if (![0, 1000, 2000].includes(q.points)) return `questions[${i}].points must be 0, 1000 or 2000`;
  }
  return null;
}

function board(q, limit = 10) {
  const list = [...q.players.values()].sort((a, b) => b.score - a.score || a.joined - b.joined);
  const top = list.slice(0, limit).map((p) => ({ rank: 1 + list.filter((x) => x.score > p.score).length, player_id: p.id, nickname: p.nickname, score: p.score }));
  return { quiz_id: q.id, version: q.lbVersion, total_players: list.length, top };
}
const rankOf = (q, p) => 1 + [...q.players.values()].filter((x) => x.score > p.score).length;
const publicQ = (qq) => ({ id: qq.id, index: qq.index, text: qq.text, options: qq.options, time_limit_ms: qq.time_limit_ms, points: qq.points });
function info(q) {
  return { quiz_id: q.id, title: q.title, mode: q.mode, state: q.state, question_count: q.questions.length, ...(q.current !== null ? { current_question: q.current } : {}) };
}
function broadcast(q, msg) { for (const c of q.conns) c.send(msg); }
function lbChanged(q) {
  q.lbVersion++;
  if (q.lbTimer) return;
  const fire = () => {
    q.lbTimer = null;
    if (q.lbSent === q.lbVersion) return;
    q.lbSent = q.lbVersion;
    broadcast(q, { type: 'leaderboard', ...board(q) });
  };
  const wait = Math.max(0, 500 - (now() - (q.lbAt || 0)));
  q.lbTimer = setTimeout(() => { q.lbAt = now(); fire(); }, wait);
}
function questionMsg(q) {
  const qq = q.questions[q.current];
  return { type: 'question', question: publicQ(qq), opens_at_ms: q.opensAt, closes_at_ms: q.closesAt };
}
function openQuestion(q, idx) {
  q.current = idx;
  q.state = 'running';
  q.opensAt = now();
  q.closesAt = q.opensAt + q.questions[idx].time_limit_ms;
  broadcast(q, questionMsg(q));
  clearTimeout(q.closeTimer);
  q.closeTimer = setTimeout(() => closeQuestion(q, idx), q.closesAt - now());
}
function closeQuestion(q, idx) {
  if (q.closedUpTo >= idx) return;
  q.closedUpTo = idx;
  const qq = q.questions[idx];
  const dist = qq.options.map(() => 0);
  for (const p of q.players.values()) { const a = p.answers[qq.id]; if (a) for (const c of a.choices) dist[c]++; }
  broadcast(q, { type: 'question_closed', question_id: qq.id, correct: qq.correct, distribution: dist });
}

function route(method, url, body, auth) {
  const p = url.pathname.split('/').filter(Boolean);
  if (method === 'GET' && url.pathname === '/healthz') return { status: 200, body: { ok: true } };
  if (p[0] !== 'v1' || p[1] !== 'quizzes') return err(404, 'not_found', 'no such route');
  if (p.length === 2 && method === 'POST') {
    const e = validate(body);
    if (e) return err(400, 'invalid', e);
    const id = body.quiz_id || rid(8);
    if (quizzes.has(id)) return err(409, 'conflict', `quiz_id ${id} is already taken`);
    const q = {
      id, title: body.title.trim(), mode: body.mode, state: 'lobby', current: null, closedUpTo: -1,
      questions: body.questions.map((x, i) => ({ ...x, id: i, index: i, correct: [...new Set(x.correct)].sort() })),
      players: new Map(), nicks: new Set(), conns: new Set(), lbVersion: 1,
    };
    quizzes.set(id, q);
    return { status: 201, body: { quiz_id: id, host_token: sign(`host:${id}`) } };
  }
  const q = quizzes.get(p[2]);
  if (!q) return err(404, 'not_found', `quiz ${p[2]} not found`);
  if (p.length === 3 && method === 'GET') return { status: 200, body: info(q) };
  if (p[3] === 'players' && p.length === 4 && method === 'POST') {
    const nick = typeof body?.nickname === 'string' ? body.nickname.trim() : '';
    if (!nick || [...nick].length > 24) return err(400, 'invalid', 'nickname must be 1-24 characters after trimming');
    if (q.nicks.has(nick.toLowerCase())) return err(409, 'conflict', `nickname "${nick}" is already taken in this quiz`);
    if (q.state === 'ended') return err(409, 'conflict', 'the quiz has ended');
    const id = rid(10);
    q.nicks.add(nick.toLowerCase());
    q.players.set(id, { id, nickname: nick, score: 0, answers: {}, joined: now() });
    lbChanged(q);
    return { status: 201, body: { player_id: id, player_token: sign(`player:${q.id}:${id}`), quiz: { ...info(q), questions: [] }, leaderboard: board(q) } };
  }
  if (p[3] === 'players' && p.length === 5 && method === 'GET') {
    const pl = q.players.get(p[4]);
    if (!pl) return err(404, 'not_found', 'player not found');
    return { status: 200, body: { player_id: pl.id, nickname: pl.nickname, score: pl.score, rank: rankOf(q, pl) } };
  }
  if (p[3] === 'leaderboard' && method === 'GET') {
    const limit = url.searchParams.has('limit') ? Number(url.searchParams.get('limit')) : 10;
    if (!Number.isInteger(limit) || limit < 1 || limit > 100) return err(400, 'invalid', 'limit must be between 1 and 100');
    return { status: 200, body: board(q, limit) };
  }
  if (['start', 'next', 'end'].includes(p[3]) && method === 'POST') {
    if ((auth || '') !== `Bearer ${sign(`host:${q.id}`)}`) return err(401, 'unauthorized', 'host token required');
    if (p[3] === 'start') {
      if (q.state !== 'lobby') return err(409, 'conflict', 'the quiz has already started');
      openQuestion(q, 0);
    } else if (p[3] === 'next') {
      if (q.state !== 'running') return err(409, 'conflict', 'the quiz is not running');
      if (q.current + 1 >= q.questions.length) return err(409, 'conflict', 'no more questions; end the quiz');
      closeQuestion(q, q.current);
      openQuestion(q, q.current + 1);
    } else {
      if (q.state === 'ended') return err(409, 'conflict', 'the quiz has already ended');
      if (q.current !== null) closeQuestion(q, q.current);
      clearTimeout(q.closeTimer);
      q.state = 'ended';
      broadcast(q, { type: 'quiz_ended', top: board(q).top });
    }
    return { status: 200, body: info(q) };
  }
  return err(404, 'not_found', 'no such route');
}

function onSocket(q, who, ws) {
  q.conns.add(ws);
  ws.onclose = () => q.conns.delete(ws);
  const pl = who.startsWith('player:') ? q.players.get(who.split(':')[2]) : null;
  const running = q.state === 'running' && q.current !== null;
  ws.send({
    type: 'welcome', player_id: pl ? pl.id : null, role: pl ? 'player' : 'host', score: pl ? pl.score : 0,
    rank: pl ? rankOf(q, pl) : null, state: q.state, ...(running ? { question: questionMsg(q) } : {}),
  });
  ws.onmessage = (text) => {
    let m;
    try { m = JSON.parse(text); } catch { return ws.send({ type: 'error', code: 'invalid', message: 'malformed JSON' }); }
    if (m.type === 'ping') return ws.send({ type: 'pong' });
    if (m.type !== 'answer' || !pl) return ws.send({ type: 'error', code: 'invalid', message: `unknown message type ${m.type}` });
    const qq = q.questions[m.question_id];
    const base = { type: 'answer_result', question_id: m.question_id, correct: false, points: 0 };
    const reply = (extra) => ws.send({ ...base, score: pl.score, rank: rankOf(q, pl), ...extra });
    if (!qq || !Array.isArray(m.choices)) return reply({ accepted: false, reason: 'invalid' });
    if (pl.answers[qq.id]) return reply({ accepted: false, reason: 'duplicate' });
    if (q.state !== 'running' || q.current !== qq.index) return reply({ accepted: false, reason: 'not_open' });
    const t = now() - q.opensAt;
    if (now() >= q.closesAt) return reply({ accepted: false, reason: 'late' });
    const choices = [...new Set(m.choices)].sort();
    const correct = JSON.stringify(choices) === JSON.stringify(qq.correct);
    const tt = t <= 500 ? 0 : t;
    const points = correct ? Math.round(qq.points * (1 - (tt / qq.time_limit_ms) / 2)) : 0;
    pl.answers[qq.id] = { choices, points };
    pl.score += points;
    reply({ accepted: true, correct, points });
    lbChanged(q);
    const answered = [...q.players.values()].filter((x) => x.answers[qq.id]).length;
    for (const c of q.conns) if (c.isHost) c.send({ type: 'answer_count', question_id: qq.id, answered, total_players: q.players.size });
    return undefined;
  };
  ws.isHost = !pl;
}

// ---- server --------------------------------------------------------------------
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (req.method === 'GET' && !url.pathname.startsWith('/v1/')) {
    const f = staticFile(url.pathname);
    if (f) { res.writeHead(200, { 'content-type': f.type, 'cache-control': 'no-cache' }); res.end(f.body); return; }
  }
  if (PROXY) {
    const up = http.request({ host: PROXY.hostname, port: PROXY.port, method: req.method, path: req.url, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    up.on('error', () => { res.writeHead(502); res.end(); });
    req.pipe(up);
    return;
  }
  let raw = '';
  req.on('data', (c) => { raw += c; });
  req.on('end', () => {
    let body;
    try { body = raw ? JSON.parse(raw) : undefined; } catch { body = null; }
    const r = body === null ? err(400, 'invalid', 'body is not valid JSON') : route(req.method, url, body, req.headers.authorization);
    res.writeHead(r.status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(r.body));
  });
});
server.on('upgrade', (req, socket, head) => {
  if (PROXY) {
    const up = net.connect(Number(PROXY.port), PROXY.hostname, () => {
      up.write(`${req.method} ${req.url} HTTP/1.1\r\n${Object.entries(req.headers).map(([k, v]) => `${k}: ${v}`).join('\r\n')}\r\n\r\n`);
      up.write(head);
      socket.pipe(up).pipe(socket);
    });
    up.on('error', () => socket.destroy());
    socket.on('error', () => up.destroy());
    return;
  }
  const url = new URL(req.url, 'http://x');
  const m = url.pathname.match(/^\/v1\/quizzes\/([^/]+)\/ws$/);
  const ws = wsAccept(req, socket);
  const q = m && quizzes.get(decodeURIComponent(m[1]));
  if (!q) { ws.close(4004, 'unknown quiz'); return; }
  const who = verify(url.searchParams.get('token'));
  if (!who || !(who === `host:${q.id}` || who.startsWith(`player:${q.id}:`))) { ws.close(4001, 'bad token'); return; }
  onSocket(q, who, ws);
});
server.listen(PORT, '127.0.0.1', () => console.log(`mock core on http://127.0.0.1:${PORT}${PROXY ? ` (proxying /v1 to ${PROXY.href})` : ''}`));

// Shared by the player and host pages: the HTTP API, the WebSocket with
// reconnect, validation that mirrors the API's, and small DOM helpers.
import { backoffMs, closeRetryMs, retryAfterMs, retryDelayMs, mayRetry } from './backoff.js';

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

/** Creates an element: h('li', {class: 'x', onclick}, child, 'text', ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Shows one of the page's screens (sections with data-screen) and hides the rest. */
export function showScreen(name) {
  for (const s of $$('main > [data-screen]')) s.hidden = s.dataset.screen !== name;
  document.body.dataset.screen = name;
}

// ---- HTTP API -------------------------------------------------------------

export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** Estimated (local clock - server clock) in ms, from the HTTP Date header. */
export const clock = { offset: 0, fromHeader: false };

function noteServerDate(res) {
  const d = Date.parse(res.headers.get('date') || '');
  if (!Number.isNaN(d)) {
    // The header has 1 s resolution: only correct clocks that are clearly off.
    const off = Date.now() - (d + 500);
    clock.offset = Math.abs(off) > 1500 ? off : 0;
    clock.fromHeader = true;
  }
}

export async function api(method, path, { body, token, headers: extra } = {}) {
  const headers = { Accept: 'application/json', ...extra };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, 'network', 'Cannot reach the server. Check your connection and try again.');
  }
  noteServerDate(res);
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!res.ok) {
    const err = (json && json.error) || {};
    throw new ApiError(res.status, err.code || `http_${res.status}`, err.message || `${res.status} ${res.statusText}`,
      res.headers.get('retry-after'));
  }
  return json;
}

/** A failure after which the request may or may not have been applied:
 * no response (network), or a proxy's 502/503/504. */
export const isAmbiguous = (e) => e instanceof ApiError && [0, 502, 503, 504].includes(e.status);

/** The server (core's admission control, edge-lb's limits) refused the
 * request before doing anything: retrying later is always safe. */
export const isBusy = (e) => e instanceof ApiError && (e.status === 429 || e.status === 503);

/**
 * Calls `call()` again while it fails with an error `retryable(e)` accepts
 * (default: 429/503), waiting the server's `Retry-After` plus jitter, else an
 * exponential backoff; at most `maxAttempts` calls within `maxTotalMs`.
 * `onWait(ms, attempt)` is told of each wait (the page shows "busy, retrying
 * in N s"); the last error is thrown when the budget is spent.
 */
export async function withRetry(call, {
  retryable = isBusy, onWait = () => {}, maxAttempts = 5, maxTotalMs = 30000, sleep,
} = {}) {
  const wait = sleep || ((ms) => new Promise((r) => setTimeout(r, ms)));
  const started = Date.now();
  for (let attempts = 1; ; attempts++) {
    try {
      return await call();
    } catch (e) {
      if (!retryable(e)) throw e;
      const delayMs = retryDelayMs(attempts, retryAfterMs(e.retryAfter));
      if (!mayRetry({ attempts, elapsedMs: Date.now() - started, delayMs, maxAttempts, maxTotalMs })) throw e;
      onWait(delayMs, attempts);
      await wait(delayMs);
    }
  }
}

/** A random `Idempotency-Key` (32 hex digits). getRandomValues, not
 * randomUUID: the latter exists only in secure contexts (not plain http on
 * a LAN address, where a classroom server often runs). */
export function newIdempotencyKey() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

export const quizPath = (id) => `/v1/quizzes/${encodeURIComponent(id)}`;

// ---- validation (mirrors the API's rules; the API's message wins) ----------

export const QUIZ_ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
export const LIMITS = {
  nicknameMax: 24,
  optionsMin: 2,
  optionsMax: 6,
  timeMinMs: 5000,
  timeMaxMs: 240000,
  points: [0, 1000, 2000],
};

export function checkQuizId(id) {
  if (!id) return 'quiz_id: enter the quiz code';
  if (!QUIZ_ID_RE.test(id)) return 'quiz_id: must be 1–64 characters of [A-Za-z0-9_-]';
  return null;
}

const chars = (s) => [...s].length;

const INVISIBLE = /[\u00AD\u034F\u061C\u115F\u1160\u17B4\u17B5\u180B-\u180F\u200B-\u200F\u2028-\u202E\u2060-\u206F\u3164\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFF8\u{1BCA0}-\u{1BCA3}\u{1D173}-\u{1D17A}\u{E0000}-\u{E0FFF}]/u;

export function checkNickname(raw) {
  const n = (raw || '').trim();
  if (!n || chars(n) > LIMITS.nicknameMax) return `nickname: must be 1–${LIMITS.nicknameMax} characters after trimming`;
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f]/.test(n)) return 'nickname: must not contain control characters';
  // The same set as core's rules::is_invisible (Default_Ignorable_Code_Point,
  // bidi controls, line/paragraph separators).
  // (JS's trim() removes U+FEFF, core's does not: look at the raw text too.)
  if (INVISIBLE.test(n) || /\uFEFF/.test(raw || '')) return 'nickname: must not contain invisible characters (zero-width, bidirectional controls, joiners, fillers, variation selectors)';
  return null;
}

/**
 * Validates a quiz body with the API's rules and words (core's
 * quiz::validate_quiz); returns [{field, message}], fields spelled like
 * questions[0].options.
 */
export function checkQuiz(q) {
  const errs = [];
  const add = (field, message) => errs.push({ field, message: `${field}: ${message}` });
  if (!q || typeof q !== 'object') return [{ field: '', message: 'the quiz must be a JSON object' }];
  const title = typeof q.title === 'string' ? q.title.trim() : '';
  if (!title || chars(title) > 200) add('title', 'must be 1–200 characters');
  if (q.mode !== 'live' && q.mode !== 'self_paced') add('mode', 'must be "live" or "self_paced"');
  if (q.quiz_id !== undefined && q.quiz_id !== null && q.quiz_id !== '' && !QUIZ_ID_RE.test(String(q.quiz_id))) {
    add('quiz_id', 'must be 1–64 characters of [A-Za-z0-9_-]');
  }
  if (!Array.isArray(q.questions) || q.questions.length === 0 || q.questions.length > 200) {
    add('questions', 'must hold 1–200 questions');
    return errs;
  }
  q.questions.forEach((qq, i) => {
    const p = `questions[${i}]`;
    if (!qq || typeof qq !== 'object') {
      add(p, 'must be an object');
      return;
    }
    if (typeof qq.text !== 'string' || !qq.text.trim() || chars(qq.text) > 1000) add(`${p}.text`, 'must be 1–1000 characters');
    const opts = qq.options;
    if (!Array.isArray(opts) || opts.length < LIMITS.optionsMin || opts.length > LIMITS.optionsMax) {
      add(`${p}.options`, `must hold ${LIMITS.optionsMin}–${LIMITS.optionsMax} options`);
    } else {
      const j = opts.findIndex((o) => typeof o !== 'string' || !o.trim() || chars(o) > 200);
      if (j >= 0) errs.push({ field: `${p}.options`, message: `${p}.options[${j}]: must be 1–200 characters` });
    }
    const n = Array.isArray(opts) ? opts.length : 0;
    if (!Array.isArray(qq.correct) || qq.correct.length === 0
      || qq.correct.some((c) => !Number.isInteger(c) || c < 0 || c >= n)) {
      add(`${p}.correct`, 'must hold 1 or more indices into options');
    }
    const t = qq.time_limit_ms;
    if (!Number.isInteger(t) || t < LIMITS.timeMinMs || t > LIMITS.timeMaxMs) {
      add(`${p}.time_limit_ms`, `must be ${LIMITS.timeMinMs}–${LIMITS.timeMaxMs} (ms; ${LIMITS.timeMinMs / 1000}–${LIMITS.timeMaxMs / 1000} seconds)`);
    }
    if (!LIMITS.points.includes(qq.points)) add(`${p}.points`, 'must be 0, 1000 or 2000');
  });
  return errs;
}

/**
 * Which form field an API error message is about. `fields` are the paths the
 * form knows (e.g. "nickname", "questions[2].options"); the longest one named
 * in the message wins. Understands `questions[2].options`, `questions.2.options`
 * and `/questions/2/options` spellings.
 */
export function fieldOfMessage(message, fields) {
  const norm = String(message || '')
    .replace(/\/?questions\/(\d+)\/(\w+)/g, 'questions[$1].$2')
    .replace(/questions\.(\d+)(\.|\b)/g, 'questions[$1]$2');
  let best = null;
  for (const f of fields) {
    const re = new RegExp(`(^|[^A-Za-z0-9_\\].])${f.replace(/[[\].]/g, '\\$&')}(?![A-Za-z0-9_])`);
    if (re.test(norm) && (!best || f.length > best.length)) best = f;
  }
  return best;
}

/** Field-error display: each field has a <p class="field-error" id="err-KEY">. */
export class FieldErrors {
  constructor(form) {
    this.form = form;
  }

  clear() {
    for (const p of $$('.field-error', this.form)) {
      p.textContent = '';
      p.hidden = true;
    }
    for (const el of $$('[aria-invalid]', this.form)) el.removeAttribute('aria-invalid');
  }

  /** Shows `message` next to the field with data-field=`field` (or the form-level slot). */
  show(field, message) {
    let input = field ? this.form.querySelector(`[data-field="${CSS.escape(field)}"]`) : null;
    let slot = field ? this.form.querySelector(`[data-error-for="${CSS.escape(field)}"]`) : null;
    if (!slot) {
      // An unknown field (e.g. "questions[3]"): fall back to the nearest parent path, then the form.
      const parent = field && field.replace(/(\.[^.[\]]+|\[\d+\])$/, '');
      if (parent && parent !== field) return this.show(parent, message);
      slot = this.form.querySelector('[data-error-for=""]');
      input = null;
    }
    if (slot) {
      slot.textContent = slot.textContent ? `${slot.textContent} ${message}` : message;
      slot.hidden = false;
    }
    if (input) input.setAttribute('aria-invalid', 'true');
    return input;
  }

  /** Shows all errors; focuses the first field with one. */
  showAll(list) {
    let first = null;
    for (const { field, message } of list) {
      const el = this.show(field, message);
      if (!first) first = el;
    }
    if (first && first.focus) first.focus();
  }
}

// ---- WebSocket with reconnect ---------------------------------------------

const FATAL = { 4001: 'unauthorized', 4004: 'not_found', 4003: 'forbidden' };
/** The same token opened a newer connection (another tab or device). */
export const REPLACED = 4009;

/**
 * A quiz WebSocket that reconnects by itself after an abnormal close with
 * exponential backoff and jitter (backoff.js: 0.5–1 s, doubling to a 10 s
 * ceiling; never at once, so a node restart or a refused upgrade — which a
 * browser only sees as close 1006 — does not bring every player back at one
 * instant). When edge-lb closes the tunnel itself (1012: its node was lost,
 * drained or is stopping) the close reason `retry_after_ms=<n>` says when to
 * come back (drawn per tunnel by edge-lb, so the node's crowd returns spread
 * over what the next node admits): that wait, plus up to 250 ms, replaces the
 * backoff for that attempt. An upgrade refused with 503 + `Retry-After` is
 * invisible to the WebSocket API, so there the backoff is it. Callbacks: onmessage(msg), onstatus(state,
 * info) with state 'connecting' | 'open' | 'reconnecting' | 'closed',
 * onfatal(code, reason) when the server refuses us (bad token, unknown quiz),
 * onreplaced() when a newer connection with the same token took over (4009):
 * the socket stops instead of reconnecting (two tabs would otherwise replace
 * each other in a loop); resume() takes the session back here.
 */
export class QuizSocket {
  constructor(quizId, token, { onmessage, onstatus, onfatal, onreplaced } = {}) {
    this.url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${quizPath(quizId)}/ws?token=${encodeURIComponent(token)}`;
    this.onmessage = onmessage || (() => {});
    this.onstatus = onstatus || (() => {});
    this.onfatal = onfatal || (() => {});
    this.onreplaced = onreplaced || (() => {});
    this.attempt = 0;
    this.stopped = false;
    this.ws = null;
    this.timer = null;
    this.lastSeen = 0;
    this.keepalive = setInterval(() => this.tick(), 5000);
    this.onOnline = () => { if (this.timer) this.retryNow(); };
    window.addEventListener('online', this.onOnline);
    this.connect();
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.stopped) return;
    if (!this.quiet) this.onstatus(this.attempt === 0 ? 'connecting' : 'reconnecting', { attempt: this.attempt });
    this.quiet = false;
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch {
      this.scheduleRetry();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.lastSeen = Date.now();
    };
    ws.onmessage = (ev) => {
      this.lastSeen = Date.now();
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (msg.type === 'welcome') {
        this.attempt = 0;
        this.onstatus('open', {});
      }
      if (msg.type === 'pong') return;
      this.onmessage(msg);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      if (FATAL[ev.code]) {
        this.stopped = true;
        this.onstatus('closed', { code: ev.code });
        this.onfatal(ev.code, ev.reason || FATAL[ev.code]);
        return;
      }
      if (ev.code === REPLACED) {
        this.stopped = true;
        this.onstatus('closed', { code: ev.code });
        this.onreplaced();
        return;
      }
      this.scheduleRetry(closeRetryMs(ev.reason));
    };
    ws.onerror = () => {}; // onclose follows
  }

  /** `hintMs`: the server's comeback (a close reason's), else null. */
  scheduleRetry(hintMs = null) {
    this.attempt++;
    const delay = hintMs === null
      ? backoffMs(this.attempt, { baseMs: 1000, capMs: 10000 })
      : retryDelayMs(this.attempt, hintMs, { spreadMs: 250 });
    this.retryAt = Date.now() + delay;
    this.onstatus('reconnecting', { attempt: this.attempt, delay, retryAt: this.retryAt });
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Reconnects at once without telling the user: the server's welcome
   * brings the current state (used to fetch the next self-paced question). */
  resync() {
    if (this.stopped) return;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onclose = null;
      ws.onmessage = null;
      try {
        ws.close(1000, 'resync');
      } catch { /* already closed */ }
    }
    clearTimeout(this.timer);
    this.quiet = true;
    this.connect();
  }

  /** After a 4009: connect again here (this replaces the other tab). */
  resume() {
    if (!this.stopped || this.ws) return;
    this.stopped = false;
    this.attempt = 0;
    this.connect();
  }

  retryNow() {
    if (this.stopped || this.ws) return;
    this.connect();
  }

  /** Pings every 20 s; a socket silent for 45 s is treated as dead. */
  tick() {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    const idle = Date.now() - this.lastSeen;
    if (idle > 45000) this.drop();
    else if (idle > 20000) this.send({ type: 'ping' });
  }

  send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(msg));
      return true;
    }
    return false;
  }

  get connected() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  /** Drops the connection as a network failure would: the socket reconnects. */
  drop() {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    ws.onclose = null;
    ws.onmessage = null;
    try {
      ws.close(4000, 'dropped');
    } catch { /* already closed */ }
    this.scheduleRetry();
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.keepalive);
    window.removeEventListener('online', this.onOnline);
    if (this.ws) this.ws.close(1000, 'bye');
    this.ws = null;
  }
}

// ---- rendering helpers ------------------------------------------------------

/** Remaining ms until a server-clock deadline, on our clock. */
export const remainingMs = (closesAtMs) => closesAtMs - (Date.now() - clock.offset);

/** A leaderboard as an ordered list; `me` is highlighted. */
export function renderLeaderboard(ol, top, me) {
  ol.replaceChildren(...(top || []).map((e) => h('li', {
    class: e.player_id === me ? 'me' : null,
    'data-player-id': e.player_id,
  },
  h('span', { class: 'rank', text: `${e.rank}` }),
  h('span', { class: 'nick', text: e.nickname }),
  h('span', { class: 'score', text: String(e.score) }))));
}

/** The top three on a podium (2nd, 1st, 3rd from left to right). */
export function renderPodium(el, top) {
  const places = [1, 0, 2].map((i) => (top || [])[i]).filter(Boolean);
  el.replaceChildren(...places.map((e) => h('div', { class: `step place-${e.rank <= 3 ? e.rank : 3}`, 'data-rank': e.rank },
    h('span', { class: 'nick', text: e.nickname }),
    h('span', { class: 'score', text: `${e.score} pts` }),
    h('span', { class: 'block', 'aria-hidden': 'true', text: String(e.rank) }),
    h('span', { class: 'sr-only', text: `place ${e.rank}` }))));
}

export const ordinal = (n) => {
  const s = ['th', 'st', 'nd', 'rd'];
  const v = n % 100;
  return `${n}${s[(v - 20) % 10] || s[v] || s[0]}`;
};

/** One CSV cell: quoted when needed, and defused against spreadsheet formulas. */
export function csvCell(v) {
  let s = String(v ?? '');
  if (/^[=+\-@\t\r]/.test(s)) s = `'${s}`;
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function resultsCsv(top) {
  const lines = [['rank', 'nickname', 'score', 'player_id'].join(',')];
  for (const e of top) lines.push([e.rank, e.nickname, e.score, e.player_id].map(csvCell).join(','));
  return `${lines.join('\r\n')}\r\n`;
}

export const OPTION_LABELS = ['A', 'B', 'C', 'D', 'E', 'F'];

/**
 * The answers to send again after a reconnect's welcome (the client rule of
 * CONTRACT.md): those sent (`answered[qid].choices`) whose `answer_result`
 * never came, lost with the old connection. Core answers a re-send with
 * `duplicate` and the original's result (and makes sure the answer's event is
 * recorded), or scores it if the first attempt never arrived. Entries only
 * known from a welcome's `answered: true` (no choices) are not ours to send.
 */
export function unackedAnswers(answered) {
  return Object.entries(answered || {})
    .filter(([, a]) => a && !a.result && !a.known && Array.isArray(a.choices) && a.choices.length > 0)
    .map(([qid, a]) => ({ question_id: Number(qid), choices: a.choices }));
}

// The host page: create a quiz (form or JSON upload), show its code and a QR
// code of the join link, watch players arrive, drive start / next / end, see
// answers come in and the distribution per question, the leaderboard between
// questions, and the final results with a CSV export.
import {
  $, $$, h, showScreen, api, ApiError, quizPath, checkQuiz, checkQuizId, fieldOfMessage, FieldErrors, QuizSocket,
  remainingMs, renderLeaderboard, renderPodium, resultsCsv, LIMITS, OPTION_LABELS, withRetry,
} from './common.js';

// Retries after a refusal (common.js `withRetry`: Retry-After plus jitter,
// bounded). Creates and host actions are not idempotent (a retried "next"
// after a lost response would skip a question), so only a 429 — refused
// before anything ran — is retried for them; reads retry 429 and 503 too.
const refusedFirst = (e) => e instanceof ApiError && e.status === 429;
const mutate = (method, path, opts) => withRetry(() => api(method, path, opts), { retryable: refusedFirst });
const read = (path) => withRetry(() => api('GET', path));
import { encode, toSvg } from './qr.js';

// ---- the quiz editor --------------------------------------------------------

const blankQuestion = () => ({ text: '', options: ['', ''], correct: [0], time_limit_ms: 20000, points: 1000 });
let draft = { title: '', mode: 'live', quiz_id: '', questions: [blankQuestion()] };

const form = $('#create-form');
const errors = new FieldErrors(form);
const qBox = $('#questions');

function errSlot(field) {
  const id = `err-${field.replace(/[^A-Za-z0-9_-]/g, '_')}`;
  return h('p', { class: 'field-error', id, 'data-error-for': field, role: 'alert', hidden: true });
}
const errId = (field) => `err-${field.replace(/[^A-Za-z0-9_-]/g, '_')}`;

function renderEditor() {
  $('#title').value = draft.title;
  for (const r of $$('input[name="mode"]')) r.checked = r.value === draft.mode;
  $('#custom-id').value = draft.quiz_id || '';
  qBox.replaceChildren(...draft.questions.map((q, qi) => {
    const p = `questions[${qi}]`;
    const opts = q.options.map((o, oi) => h('div', { class: 'opt-row' },
      h('input', {
        type: 'checkbox', id: `q${qi}-c${oi}`, checked: q.correct.includes(oi),
        'aria-label': `Option ${OPTION_LABELS[oi]} is correct`,
        onchange: (e) => {
          const set = new Set(q.correct);
          if (e.target.checked) set.add(oi); else set.delete(oi);
          q.correct = [...set].sort((a, b) => a - b);
        },
      }),
      h('label', { for: `q${qi}-o${oi}`, class: 'opt-key', text: OPTION_LABELS[oi] }),
      h('input', {
        id: `q${qi}-o${oi}`, value: o, maxlength: 200, required: true,
        'data-field': oi === 0 ? `${p}.options` : null,
        'aria-describedby': errId(`${p}.options`),
        oninput: (e) => { q.options[oi] = e.target.value; },
      }),
      q.options.length > LIMITS.optionsMin ? h('button', {
        type: 'button', class: 'icon', 'aria-label': `Remove option ${OPTION_LABELS[oi]}`,
        onclick: () => {
          q.options.splice(oi, 1);
          q.correct = q.correct.filter((c) => c !== oi).map((c) => (c > oi ? c - 1 : c));
          renderEditor();
        },
      }, '×') : null));
    return h('fieldset', { class: 'question-edit', 'data-field': p },
      h('legend', {}, `Question ${qi + 1}`),
      errSlot(p),
      h('div', { class: 'field' },
        h('label', { for: `q${qi}-text` }, 'Question'),
        h('input', {
          id: `q${qi}-text`, value: q.text, maxlength: 1000, required: true, 'data-field': `${p}.text`,
          'aria-describedby': errId(`${p}.text`), oninput: (e) => { q.text = e.target.value; },
        }),
        errSlot(`${p}.text`)),
      h('div', { class: 'field', role: 'group', 'aria-label': `Options of question ${qi + 1}` },
        h('span', { class: 'label' }, 'Options ', h('span', { class: 'muted' }, '(tick the correct ones)')),
        ...opts,
        q.options.length < LIMITS.optionsMax ? h('button', {
          type: 'button', class: 'secondary small',
          onclick: () => { q.options.push(''); renderEditor(); $(`#q${qi}-o${q.options.length - 1}`).focus(); },
        }, 'Add option') : null,
        errSlot(`${p}.options`),
        h('span', { 'data-field': `${p}.correct`, tabindex: '-1' }),
        errSlot(`${p}.correct`)),
      h('div', { class: 'row' },
        h('div', { class: 'field' },
          h('label', { for: `q${qi}-time` }, 'Time limit (seconds)'),
          h('input', {
            id: `q${qi}-time`, type: 'number', min: LIMITS.timeMinMs / 1000, max: LIMITS.timeMaxMs / 1000, step: 1,
            value: q.time_limit_ms / 1000, 'data-field': `${p}.time_limit_ms`, inputmode: 'numeric',
            'aria-describedby': errId(`${p}.time_limit_ms`),
            oninput: (e) => { q.time_limit_ms = e.target.value === '' ? NaN : Math.round(Number(e.target.value) * 1000); },
          }),
          errSlot(`${p}.time_limit_ms`)),
        h('div', { class: 'field' },
          h('label', { for: `q${qi}-points` }, 'Points'),
          h('select', {
            id: `q${qi}-points`, 'data-field': `${p}.points`, 'aria-describedby': errId(`${p}.points`),
            onchange: (e) => { q.points = Number(e.target.value); },
          }, ...LIMITS.points.map((v) => h('option', { value: v, selected: v === q.points }, String(v)))),
          errSlot(`${p}.points`))),
      draft.questions.length > 1 ? h('button', {
        type: 'button', class: 'secondary small remove-q',
        onclick: () => { draft.questions.splice(qi, 1); renderEditor(); },
      }, `Remove question ${qi + 1}`) : null);
  }));
}

$('#title').addEventListener('input', (e) => { draft.title = e.target.value; });
$('#custom-id').addEventListener('input', (e) => { draft.quiz_id = e.target.value.trim(); });
for (const r of $$('input[name="mode"]')) r.addEventListener('change', (e) => { draft.mode = e.target.value; });
$('#add-question').addEventListener('click', () => {
  draft.questions.push(blankQuestion());
  renderEditor();
  $(`#q${draft.questions.length - 1}-text`).focus();
});

$('#upload').addEventListener('change', async (e) => {
  errors.clear();
  const file = e.target.files && e.target.files[0];
  if (!file) return;
  if (file.size > 1024 * 1024) {
    errors.show('upload', 'The file is over 1 MiB, the API\'s limit.');
    return;
  }
  let q;
  try {
    q = JSON.parse(await file.text());
  } catch (err) {
    errors.show('upload', `Not valid JSON: ${err.message}`);
    return;
  }
  if (!q || typeof q !== 'object' || !Array.isArray(q.questions)) {
    errors.show('upload', 'Expected a JSON object with "title", "mode" and a "questions" array.');
    return;
  }
  draft = {
    title: typeof q.title === 'string' ? q.title : '',
    mode: q.mode === 'self_paced' ? 'self_paced' : 'live',
    quiz_id: typeof q.quiz_id === 'string' ? q.quiz_id : '',
    questions: q.questions.map((x) => ({
      text: typeof x?.text === 'string' ? x.text : '',
      options: Array.isArray(x?.options) ? x.options.map((o) => (typeof o === 'string' ? o : JSON.stringify(o))) : ['', ''],
      correct: Array.isArray(x?.correct) ? x.correct : [],
      time_limit_ms: x?.time_limit_ms,
      points: x?.points,
    })),
  };
  if (draft.questions.length === 0) draft.questions.push(blankQuestion());
  renderEditor();
  // Show at once what the API would say about the file.
  const local = checkQuiz(bodyOf(q));
  if (local.length) errors.showAll(local);
  else errors.show('upload', `Loaded "${draft.title}" with ${draft.questions.length} questions. Check it, then create.`);
  const slot = $('#err-upload');
  if (!local.length) slot.classList.add('ok');
});

function bodyOf(d) {
  const body = {
    title: typeof d.title === 'string' ? d.title.trim() : d.title,
    mode: d.mode,
    questions: (d.questions || []).map((q) => ({
      text: typeof q.text === 'string' ? q.text.trim() : q.text,
      options: Array.isArray(q.options) ? q.options.map((o) => (typeof o === 'string' ? o.trim() : o)) : q.options,
      correct: q.correct,
      time_limit_ms: q.time_limit_ms,
      points: q.points,
    })),
  };
  if (d.quiz_id) body.quiz_id = d.quiz_id;
  return body;
}

form.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  errors.clear();
  $('#err-upload').classList.remove('ok');
  const body = bodyOf(draft);
  const local = checkQuiz(body);
  if (local.length) {
    errors.showAll(local);
    return;
  }
  const btn = $('#create-btn');
  btn.disabled = true;
  btn.textContent = 'Creating…';
  try {
    const res = await mutate('POST', '/v1/quizzes', { body });
    const sess = {
      host_token: res.host_token, title: body.title, mode: body.mode, questions: body.questions,
    };
    sessionStorage.setItem(`quiz:host:${res.quiz_id}`, JSON.stringify(sess));
    history.pushState(null, '', `/host?quiz=${encodeURIComponent(res.quiz_id)}`);
    openControl(res.quiz_id, sess);
  } catch (e) {
    if (e instanceof ApiError) {
      const fields = ['title', 'mode', 'quiz_id', 'questions'];
      body.questions.forEach((_, i) => {
        const p = `questions[${i}]`;
        fields.push(p, `${p}.text`, `${p}.options`, `${p}.correct`, `${p}.time_limit_ms`, `${p}.points`);
      });
      let field = fieldOfMessage(e.message, fields);
      if (!field && e.status === 409) field = 'quiz_id';
      const el = errors.show(field || '', e.message);
      if (el && el.focus) el.focus();
    } else {
      errors.show('', String(e.message || e));
    }
  } finally {
    btn.disabled = false;
    btn.textContent = 'Create quiz';
  }
});

// ---- controlling a quiz -----------------------------------------------------

const C = {
  quizId: null,
  token: null,
  sess: null,
  state: 'lobby',
  questionCount: 0,
  current: null, // question message
  closed: {},
  counts: {}, // question_id -> live counts
  top: [],
  totalPlayers: 0,
  socket: null,
  poll: null,
};

function openControl(quizId, sess) {
  C.quizId = quizId;
  C.sess = sess;
  C.token = sess.host_token;
  C.questionCount = (sess.questions || []).length;
  C.mode = sess.mode || 'live';
  $('#quiz-title').textContent = sess.title || `Quiz ${quizId}`;
  $('.quiz-title-sub').textContent = sess.title || '';
  document.title = `${sess.title || quizId} · Host`;
  const link = `${location.origin}/?quiz=${encodeURIComponent(quizId)}`;
  $('#join-link').href = link;
  $('#join-link').textContent = `${location.host}`;
  $('#big-id').textContent = quizId;
  try {
    $('#qr').innerHTML = toSvg(encode(link, { ecl: 'M' }), { title: `QR code: ${link}` });
  } catch {
    $('#qr').textContent = link;
  }
  showScreen('control');
  setState('lobby');
  refreshQuiz();
  pollPlayers();
  C.poll = setInterval(pollPlayers, 2000);
  C.socket = new QuizSocket(quizId, C.token, {
    onmessage: onMessage,
    onstatus: onStatus,
    onfatal: (code) => controlError(code === 4004 ? 'This quiz does not exist any more.' : 'The host token was refused.'),
  });
}

async function refreshQuiz() {
  try {
    const q = await read(quizPath(C.quizId));
    if (q.question_count) C.questionCount = q.question_count;
    if (typeof q.current_question === 'number') C.currentIndex = q.current_question;
    if (q.mode) C.mode = q.mode;
    if (q.title) $('#quiz-title').textContent = q.title;
    setState(q.state);
  } catch (e) {
    if (e.status === 404) controlError('No quiz with this code.');
  }
}

async function pollPlayers() {
  try {
    // Not retried: the next poll (2 s) is the retry; retries would pile up.
    const lb = await api('GET', `${quizPath(C.quizId)}/leaderboard?limit=100`);
    applyLeaderboard(lb);
  } catch { /* next poll */ }
}

function setState(state) {
  if (!state) return;
  C.state = state;
  const badge = $('#host-state');
  badge.hidden = false;
  badge.textContent = state;
  badge.dataset.state = state;
  const idx = C.current ? C.current.question.index : (C.currentIndex ?? -1);
  const isLast = C.questionCount && idx + 1 >= C.questionCount;
  $('#btn-start').hidden = state !== 'lobby';
  // Self-paced: players move on by themselves; the host only starts and ends.
  const selfPaced = C.mode === 'self_paced';
  $('#btn-next').hidden = state !== 'running' || !!isLast || selfPaced;
  if (selfPaced && state === 'running') $('#board-panel').hidden = false;
  $('#btn-end').hidden = state === 'ended';
  $('#btn-end').className = state === 'running' && (isLast || selfPaced) ? 'primary' : 'danger';
  $('#join-panel').classList.toggle('compact', state !== 'lobby');
  if (state !== 'lobby' && C.poll) {
    clearInterval(C.poll);
    C.poll = setInterval(pollPlayers, 5000);
  }
  if (state === 'ended') showFinal();
}

async function hostAction(action, btn) {
  $('#control-error').hidden = true;
  btn.disabled = true;
  try {
    const res = await mutate('POST', `${quizPath(C.quizId)}/${action}`, { token: C.token });
    if (res && res.state) setState(res.state);
    else if (action === 'end') setState('ended');
    else if (action === 'start') setState('running');
  } catch (e) {
    controlError(e.message);
  } finally {
    btn.disabled = false;
  }
}
$('#btn-start').addEventListener('click', (e) => hostAction('start', e.currentTarget));
$('#btn-next').addEventListener('click', (e) => hostAction('next', e.currentTarget));
$('#btn-end').addEventListener('click', (e) => hostAction('end', e.currentTarget));

function controlError(msg) {
  const el = $('#control-error');
  el.textContent = msg;
  el.hidden = false;
}

const conn = $('#conn');
function onStatus(state, info) {
  document.body.dataset.conn = state;
  if (state === 'open') {
    conn.hidden = true;
    return;
  }
  conn.className = state === 'reconnecting' ? 'conn warn' : 'conn';
  conn.textContent = state === 'reconnecting' ? `Connection lost. Reconnecting… (attempt ${info.attempt})` : 'Connecting…';
  conn.hidden = false;
}

function onMessage(m) {
  switch (m.type) {
    case 'welcome':
      if (m.state) setState(m.state);
      if (m.question) {
        const msg = m.question.question ? m.question : { question: m.question, closes_at_ms: m.closes_at_ms ?? m.question.closes_at_ms };
        if (msg.question && msg.question.options) onQuestion(msg);
      }
      return;
    case 'question': return onQuestion(m);
    case 'question_closed': return onClosed(m);
    case 'leaderboard': return applyLeaderboard(m);
    case 'quiz_ended':
      if (Array.isArray(m.top)) C.top = m.top;
      return setState('ended');
    case 'error': return controlError(m.message || m.code);
    default:
      // Host-only progress messages, if the server sends them: any message
      // with a question_id and an answer count or a distribution.
      if (m.question_id !== undefined && (m.answered !== undefined || m.answers !== undefined || m.count !== undefined || m.distribution)) {
        onProgress(m);
      }
      return undefined;
  }
}

let hTimer = null;
function onQuestion(m) {
  C.current = m;
  const q = m.question;
  if (C.state !== 'running') setState('running');
  else setState('running'); // re-evaluates next/end for the last question
  $('#question-panel').hidden = false;
  $('#board-panel').hidden = true;
  $('#hq-num').textContent = `Question ${q.index + 1}${C.questionCount ? ` of ${C.questionCount}` : ''} · ${q.points} pts`;
  $('#hq-text').textContent = q.text;
  C.counts[q.id] = C.counts[q.id] || { answered: 0, distribution: q.options.map(() => 0) };
  renderDist();
  clearInterval(hTimer);
  const limit = q.time_limit_ms;
  const paint = () => {
    const left = Math.max(0, Math.min(limit, remainingMs(m.closes_at_ms)));
    $('#h-timer-s').textContent = String(Math.ceil(left / 1000));
    $('#h-timebar-fill').style.transform = `scaleX(${limit ? left / limit : 0})`;
    if (left <= 0) clearInterval(hTimer);
  };
  paint();
  hTimer = setInterval(paint, 200);
}

function onProgress(m) {
  const c = C.counts[m.question_id] || { answered: 0, distribution: [] };
  const n = m.answered ?? m.answers ?? m.count;
  if (typeof n === 'number') c.answered = n;
  if (Array.isArray(m.distribution)) {
    c.distribution = m.distribution;
    if (typeof n !== 'number') c.answered = m.distribution.reduce((a, b) => a + b, 0);
  }
  if (typeof m.total_players === 'number') C.totalPlayers = m.total_players;
  C.counts[m.question_id] = c;
  if (C.current && C.current.question.id === m.question_id) renderDist();
}

function onClosed(m) {
  C.closed[m.question_id] = m;
  const c = C.counts[m.question_id] || {};
  if (Array.isArray(m.distribution)) {
    c.distribution = m.distribution;
    c.answered = m.distribution.reduce((a, b) => a + b, 0);
  }
  C.counts[m.question_id] = c;
  if (C.current && C.current.question.id === m.question_id) {
    clearInterval(hTimer);
    $('#h-timer-s').textContent = '0';
    $('#h-timebar-fill').style.transform = 'scaleX(0)';
    renderDist();
  }
  $('#board-panel').hidden = false;
  pollPlayers();
}

function renderDist() {
  if (!C.current) return;
  const q = C.current.question;
  const c = C.counts[q.id] || { answered: 0, distribution: [] };
  const closed = C.closed[q.id];
  const correct = new Set(closed ? closed.correct : []);
  const total = Math.max(1, ...(c.distribution || []).map(Number), 1);
  $('#answer-count').textContent = `${c.answered || 0} of ${C.totalPlayers} answered${closed ? ' · closed' : ''}`;
  $('#dist').replaceChildren(...q.options.map((text, i) => {
    const n = (c.distribution && c.distribution[i]) || 0;
    // The width through the CSSOM: a style attribute is blocked by the
    // page's Content-Security-Policy (style-src 'self').
    const fill = h('span');
    fill.style.width = `${(100 * n) / total}%`;
    return h('li', { class: `dist-row opt-${i}${closed && correct.has(i) ? ' correct' : ''}${closed && !correct.has(i) ? ' dim' : ''}` },
      h('span', { class: 'opt-key', 'aria-hidden': 'true', text: OPTION_LABELS[i] }),
      h('span', { class: 'dist-text', text: `${text}${closed && correct.has(i) ? ' ✓' : ''}` }),
      h('span', { class: 'dist-bar', 'aria-hidden': 'true' }, fill),
      h('span', { class: 'dist-n', text: String(n), 'aria-label': `${n} answers` }));
  }));
}

function applyLeaderboard(lb) {
  if (typeof lb.total_players === 'number') C.totalPlayers = lb.total_players;
  if (Array.isArray(lb.top)) C.top = lb.top;
  $('#player-count').textContent = String(C.totalPlayers);
  const shown = new Set($$('#players li').map((li) => li.dataset.playerId));
  const want = C.top.map((e) => e.player_id);
  if (want.length !== shown.size || want.some((id) => !shown.has(id))) {
    const sorted = [...C.top].sort((a, b) => a.nickname.localeCompare(b.nickname));
    $('#players').replaceChildren(...sorted.map((e) => h('li', { 'data-player-id': e.player_id, text: e.nickname })));
  }
  renderLeaderboard($('#h-leaderboard'), C.top.slice(0, 10));
  if (C.current) renderDist();
  if (C.state === 'ended') renderFinal();
}

// ---- final results ----------------------------------------------------------

async function showFinal() {
  clearInterval(hTimer);
  clearInterval(C.poll);
  C.poll = null;
  renderFinal();
  showScreen('final');
  try {
    applyLeaderboard(await read(`${quizPath(C.quizId)}/leaderboard?limit=100`));
  } catch { /* keep what we have */ }
}

function renderFinal() {
  renderPodium($('#h-podium'), C.top);
  $('#results-table tbody').replaceChildren(...C.top.map((e) => h('tr', {},
    h('td', { text: String(e.rank) }), h('td', { text: e.nickname }), h('td', { text: String(e.score) }))));
}

$('#csv').addEventListener('click', () => {
  const blob = new Blob([resultsCsv(C.top)], { type: 'text/csv;charset=utf-8' });
  const a = h('a', { href: URL.createObjectURL(blob), download: `quiz-${C.quizId}-results.csv` });
  document.body.append(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
});

// ---- boot -------------------------------------------------------------------

// A host link (`deploy/local/run` prints one): /host#quiz=<id>&token=<host
// token>. A fragment, so the token is never sent to a server nor written in
// its access log; it is kept like a quiz created here (sessionStorage) and
// removed from the address bar at once (replaceState: not left in history,
// a bookmark or a screen share).
function takeHostLink() {
  const frag = new URLSearchParams(location.hash.slice(1));
  const id = frag.get('quiz');
  const token = frag.get('token');
  if (!id || !token || checkQuizId(id)) return;
  let prev = null;
  try {
    prev = JSON.parse(sessionStorage.getItem(`quiz:host:${id}`) || 'null');
  } catch {
    prev = null;
  }
  sessionStorage.setItem(`quiz:host:${id}`, JSON.stringify({ ...(prev || {}), host_token: token }));
  history.replaceState(null, '', `/host?quiz=${encodeURIComponent(id)}`);
}
takeHostLink();

const qid = new URLSearchParams(location.search).get('quiz');
let saved = null;
try {
  saved = qid ? JSON.parse(sessionStorage.getItem(`quiz:host:${qid}`) || 'null') : null;
} catch {
  saved = null;
}
if (qid && saved && saved.host_token) {
  openControl(qid, saved);
} else {
  renderEditor();
  showScreen('create');
}
window.addEventListener('popstate', () => location.reload());

window.__host = { state: C, get draft() { return draft; } };

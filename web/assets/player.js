// The player page: join, lobby, questions with a countdown, instant feedback,
// live leaderboard, podium. The session (player_id, player_token) is kept in
// sessionStorage per quiz id, so a reload or a dropped socket resumes it.
import {
  $, h, showScreen, api, ApiError, quizPath, checkQuizId, checkNickname, fieldOfMessage, FieldErrors,
  QuizSocket, clock, remainingMs, renderLeaderboard, renderPodium, ordinal, OPTION_LABELS,
  isAmbiguous, isBusy, newIdempotencyKey, unackedAnswers, withRetry,
} from './common.js';

const S = {
  quizId: null,
  playerId: null,
  token: null,
  nickname: '',
  score: 0,
  rank: null,
  title: '',
  mode: 'live',
  questionCount: null,
  totalPlayers: 0,
  top: [],
  question: null, // {question, opens_at_ms, closes_at_ms}
  answered: {}, // question_id -> {choices, result?}
  closed: {}, // question_id -> question_closed message
  ended: false,
  socket: null,
};

const storeKey = (id) => `quiz:player:${id}`;
const loadSession = (id) => {
  try {
    return JSON.parse(sessionStorage.getItem(storeKey(id)) || 'null');
  } catch {
    return null;
  }
};
const saveSession = () => {
  sessionStorage.setItem(storeKey(S.quizId), JSON.stringify({
    player_id: S.playerId, player_token: S.token, nickname: S.nickname, answered: S.answered,
  }));
};

// ---- join --------------------------------------------------------------

const form = $('#join-form');
const errors = new FieldErrors(form);

form.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  errors.clear();
  const quizId = $('#quiz-id').value.trim();
  const nickname = $('#nickname').value.trim();
  const local = [];
  const e1 = checkQuizId(quizId);
  if (e1) local.push({ field: 'quiz_id', message: e1 });
  const e2 = checkNickname(nickname);
  if (e2) local.push({ field: 'nickname', message: e2 });
  if (local.length) {
    errors.showAll(local);
    return;
  }
  const btn = $('#join-btn');
  btn.disabled = true;
  btn.textContent = 'Joining…';
  try {
    const res = await joinQuiz(quizId, nickname);
    S.quizId = quizId;
    S.playerId = res.player_id;
    S.token = res.player_token;
    S.nickname = nickname;
    S.answered = {};
    saveSession();
    applyQuizInfo(res.quiz);
    if (res.leaderboard) applyLeaderboard(res.leaderboard);
    history.replaceState(null, '', `/?quiz=${encodeURIComponent(quizId)}`);
    startSession();
  } catch (e) {
    showJoinError(e);
  } finally {
    btn.disabled = false;
    btn.textContent = 'Join';
  }
});

// One Idempotency-Key per join of (quiz, nickname), reused by every retry of
// it (automatic or the player pressing Join again) until it succeeds or
// fails for certain: a join whose response was lost (flaky phone network, a
// proxy's 503) then gets its player back instead of "nickname taken".
let pendingJoin = null;

async function joinQuiz(quizId, nickname) {
  if (!pendingJoin || pendingJoin.quizId !== quizId || pendingJoin.nickname !== nickname) {
    pendingJoin = { quizId, nickname, key: newIdempotencyKey() };
  }
  const call = () => api('POST', `${quizPath(quizId)}/players`, {
    body: { nickname },
    headers: { 'Idempotency-Key': pendingJoin.key },
  });
  // Retried with the same key: refused (429/503, e.g. core's join admission
  // or edge-lb's limits: after their Retry-After, jittered) or ambiguous (no
  // response, a proxy's 502/504: after a backoff); at most 5 attempts within
  // 30 s, the wait shown on the button.
  const btn = $('#join-btn');
  let countdown = null;
  const onWait = (ms) => {
    clearInterval(countdown);
    const until = Date.now() + ms;
    const show = () => {
      const left = Math.max(1, Math.ceil((until - Date.now()) / 1000));
      btn.textContent = `Busy, retrying in ${left} s…`;
    };
    show();
    countdown = setInterval(show, 250);
  };
  try {
    let res;
    try {
      res = await withRetry(() => {
        clearInterval(countdown);
        btn.textContent = 'Joining…';
        return call();
      }, { retryable: (e) => isBusy(e) || isAmbiguous(e), onWait });
    } finally {
      clearInterval(countdown);
    }
    pendingJoin = null;
    return res;
  } catch (e) {
    if (!isAmbiguous(e)) pendingJoin = null;
    throw e;
  }
}

function showJoinError(e) {
  if (!(e instanceof ApiError)) {
    errors.show('', String(e.message || e));
    return;
  }
  let field = fieldOfMessage(e.message, ['quiz_id', 'nickname']);
  if (!field && e.status === 404) field = 'quiz_id';
  if (!field && e.status === 409 && /nick|name|taken/i.test(e.message)) field = 'nickname';
  let msg = e.message;
  if (e.status === 404 && !/quiz/i.test(msg)) msg = `No quiz with this code (${msg}).`;
  if (e.status === 429 || e.status === 503) msg = `${msg} Please try again${e.retryAfter ? ` in ${e.retryAfter} s` : ' shortly'}.`;
  const el = errors.show(field || '', msg);
  if (el) el.focus();
}

function applyQuizInfo(q) {
  if (!q) return;
  if (q.title) S.title = q.title;
  if (q.mode) S.mode = q.mode;
  if (q.question_count !== undefined) S.questionCount = q.question_count;
  else if (Array.isArray(q.questions) && q.mode === 'self_paced') S.questionCount = q.questions.length;
  for (const el of document.querySelectorAll('.quiz-title')) el.textContent = S.title || `Quiz ${S.quizId}`;
  document.title = S.title ? `${S.title} · Quiz` : 'Quiz';
}

// ---- session and socket ------------------------------------------------

function startSession() {
  $('#me').hidden = false;
  $('#me-nick').textContent = S.nickname;
  for (const el of document.querySelectorAll('.nick-out')) el.textContent = S.nickname;
  updateMe();
  showScreen('lobby');
  if (!S.title) api('GET', quizPath(S.quizId)).then(applyQuizInfo).catch(() => {});
  if (S.socket) S.socket.close();
  S.socket = new QuizSocket(S.quizId, S.token, {
    onmessage: onMessage,
    onstatus: onStatus,
    onfatal: (code) => {
      sessionStorage.removeItem(storeKey(S.quizId));
      S.socket = null;
      $('#me').hidden = true;
      showScreen('join');
      errors.clear();
      errors.show(code === 4004 ? 'quiz_id' : '', code === 4004
        ? 'This quiz no longer exists.'
        : 'Your session is no longer valid. Join again with a nickname.');
    },
    onreplaced: () => {
      clearInterval(connTimer);
      clearTimeout(connHide);
      document.body.dataset.conn = 'replaced';
      conn.className = 'conn warn';
      conn.replaceChildren(
        'This quiz is open in another tab or on another device. ',
        h('button', { type: 'button', id: 'conn-resume', onclick: () => S.socket && S.socket.resume() }, 'Continue here'),
      );
      conn.hidden = false;
    },
  });
}

const conn = $('#conn');
let connTimer = null;
let connHide = null;
let wasDown = false;
function onStatus(state, info) {
  clearInterval(connTimer);
  clearTimeout(connHide);
  document.body.dataset.conn = state;
  if (state === 'open') {
    if (wasDown) {
      conn.className = 'conn ok';
      conn.textContent = 'Reconnected.';
      conn.hidden = false;
      connHide = setTimeout(() => { conn.hidden = true; }, 2500);
    } else {
      conn.hidden = true;
    }
    wasDown = false;
    return;
  }
  if (state === 'connecting') {
    conn.className = 'conn';
    conn.textContent = 'Connecting…';
    conn.hidden = false;
    return;
  }
  if (state === 'reconnecting') {
    wasDown = true;
    conn.className = 'conn warn';
    conn.hidden = false;
    const paint = () => {
      const s = info.retryAt ? Math.max(0, Math.ceil((info.retryAt - Date.now()) / 1000)) : 0;
      conn.textContent = s > 0
        ? `Connection lost. Reconnecting in ${s} s… (attempt ${info.attempt})`
        : `Connection lost. Reconnecting… (attempt ${info.attempt})`;
    };
    paint();
    connTimer = setInterval(paint, 500);
  }
}

function onMessage(m) {
  switch (m.type) {
    case 'welcome': return onWelcome(m);
    case 'question': return onQuestion(m, true);
    case 'answer_result': return onAnswerResult(m);
    case 'question_closed': return onQuestionClosed(m);
    case 'leaderboard': return applyLeaderboard(m);
    case 'quiz_ended': return onEnded(m);
    case 'error': return toast(m.message || m.code);
    default: return undefined;
  }
}

function onWelcome(m) {
  if (m.player_id) S.playerId = m.player_id;
  if (typeof m.score === 'number') S.score = m.score;
  if (m.rank !== undefined) S.rank = m.rank;
  updateMe();
  // An answer whose result was lost with the old connection is sent again,
  // identical; its `duplicate` result stands for the original's.
  for (const a of unackedAnswers(S.answered)) {
    if (S.socket && S.socket.send({ type: 'answer', ...a })) S.answered[a.question_id].resent = true;
  }
  if (m.state === 'ended') {
    onEnded({ top: S.top });
    return;
  }
  const q = m.question;
  if (q) {
    // The welcome may carry the question message itself or only its question.
    const msg = q.question ? q : {
      question: q, opens_at_ms: m.opens_at_ms ?? q.opens_at_ms, closes_at_ms: m.closes_at_ms ?? q.closes_at_ms,
    };
    // Core says `answered: true` when this player's answer to it is already in.
    if (m.answered && !S.answered[msg.question.id]) S.answered[msg.question.id] = { choices: [], known: true };
    if (msg.closes_at_ms && !S.closed[msg.question.id] && remainingMs(msg.closes_at_ms) > 0) {
      onQuestion(msg, false);
      return;
    }
  }
  if (m.state === 'running') showResults();
  else if (!S.question) showScreen('lobby');
}

// ---- questions ---------------------------------------------------------

let timerHandle = null;
let lastResult = null;
let prevTimer = null;
let pickedMulti = new Set();

function onQuestion(m, fresh) {
  const q = m.question;
  if (fresh && m.opens_at_ms) {
    // A question pushed as it opens tells the clock offset to within the
    // latency; only a clearly skewed clock (that the Date header confirms) is corrected.
    const candidate = Date.now() - m.opens_at_ms;
    const plausible = !clock.fromHeader || Math.abs(candidate - clock.offset) < 1500;
    if (plausible) clock.offset = Math.abs(candidate) > 1500 ? candidate : 0;
  }
  S.question = m;
  S.ended = false;
  const total = S.questionCount ? ` of ${S.questionCount}` : '';
  $('#q-num').textContent = `Question ${q.index + 1}${total} · ${q.points} pts`;
  $('#q-text').textContent = q.text;
  const multi = q.multi === true || q.multiple === true || (q.correct_count || 0) > 1;
  $('#q-multi').hidden = !multi;
  $('#submit-multi').hidden = !multi;
  $('#submit-multi').disabled = true;
  pickedMulti = new Set();
  const prior = S.answered[q.id];
  $('#options').replaceChildren(...q.options.map((text, i) => h('button', {
    type: 'button',
    class: `option opt-${i}`,
    'data-index': i,
    'aria-pressed': multi ? 'false' : null,
    onclick: () => (multi ? toggleMulti(i) : submitAnswer([i])),
  }, h('span', { class: 'opt-key', 'aria-hidden': 'true', text: OPTION_LABELS[i] }), h('span', { class: 'opt-text', text }))));
  const fb = $('#feedback');
  fb.hidden = true;
  fb.className = 'feedback';
  // Self-paced: the next question follows the answer at once; keep the
  // previous verdict on screen for a moment.
  const prev = $('#prev-result');
  const last = lastResult && Date.now() - lastResult.at < 2500 ? lastResult.m : null;
  prev.hidden = !last;
  if (last) {
    prev.className = `prev ${feedbackClass(last).replace('feedback ', '')}`;
    prev.textContent = last.accepted ? `${last.correct ? 'Correct' : 'Wrong'} (+${last.points || 0}) · score ${last.score}` : '';
    clearTimeout(prevTimer);
    prevTimer = setTimeout(() => { prev.hidden = true; }, 3000);
  }
  if (prior) {
    markChosen(prior.choices);
    lockOptions();
    if (prior.result) showFeedback(prior.result);
    else if (prior.known) showAnsweredBefore();
    else showPending();
  }
  showScreen('question');
  startTimer(m);
  const first = $('#options button');
  if (first && !prior && fresh) first.focus({ preventScroll: true });
}

function startTimer(m) {
  clearInterval(timerHandle);
  const limit = m.question.time_limit_ms;
  const paint = () => {
    const left = Math.max(0, Math.min(limit, remainingMs(m.closes_at_ms)));
    $('#timer-s').textContent = String(Math.ceil(left / 1000));
    $('#timebar-fill').style.transform = `scaleX(${limit ? left / limit : 0})`;
    $('#timer').classList.toggle('low', left <= 5000);
    if (left <= 0) {
      clearInterval(timerHandle);
      lockOptions();
      if (!S.answered[m.question.id]) {
        const fb = $('#feedback');
        fb.className = 'feedback late';
        fb.replaceChildren(h('strong', { text: "Time's up!" }), ' No answer this time.');
        fb.hidden = false;
        // Self-paced: nothing is pushed when a question expires unanswered;
        // a fresh welcome carries the next one (or none after the last).
        if (S.mode === 'self_paced' && S.socket) {
          const qid = m.question.id;
          setTimeout(() => {
            if (S.socket && !S.ended && S.question && S.question.question.id === qid) S.socket.resync();
          }, 1500);
        }
      }
    }
  };
  paint();
  timerHandle = setInterval(paint, 200);
}

function toggleMulti(i) {
  if (pickedMulti.has(i)) pickedMulti.delete(i);
  else pickedMulti.add(i);
  for (const b of document.querySelectorAll('#options .option')) {
    b.setAttribute('aria-pressed', String(pickedMulti.has(Number(b.dataset.index))));
  }
  $('#submit-multi').disabled = pickedMulti.size === 0;
}
$('#submit-multi').addEventListener('click', () => submitAnswer([...pickedMulti].sort((a, b) => a - b)));

function submitAnswer(choices) {
  const m = S.question;
  if (!m || S.answered[m.question.id]) return;
  const qid = m.question.id;
  if (!S.socket || !S.socket.send({ type: 'answer', question_id: qid, choices })) {
    toast('Not connected — your answer was not sent. Try again when reconnected.');
    return;
  }
  S.answered[qid] = { choices };
  saveSession();
  markChosen(choices);
  lockOptions();
  showPending();
}

function markChosen(choices) {
  for (const b of document.querySelectorAll('#options .option')) {
    b.classList.toggle('chosen', choices.includes(Number(b.dataset.index)));
  }
}

function lockOptions() {
  for (const b of document.querySelectorAll('#options .option')) b.disabled = true;
  $('#submit-multi').disabled = true;
}

function showPending() {
  const fb = $('#feedback');
  fb.className = 'feedback pending';
  fb.textContent = 'Answer sent…';
  fb.hidden = false;
}

function showAnsweredBefore() {
  const fb = $('#feedback');
  fb.className = 'feedback pending';
  fb.textContent = 'Your answer to this question is in. Waiting for the others…';
  fb.hidden = false;
}

function onAnswerResult(m) {
  const entry = S.answered[m.question_id] || { choices: [] };
  // The duplicate answering a re-send carries the original's verdict.
  if (entry.resent && !entry.result && !m.accepted && m.reason === 'duplicate') {
    m = { ...m, accepted: true, reason: undefined };
  }
  entry.result = m;
  S.answered[m.question_id] = entry;
  saveSession();
  if (typeof m.score === 'number') S.score = m.score;
  if (m.rank !== undefined && m.rank !== null) S.rank = m.rank;
  updateMe();
  lastResult = { m, at: Date.now() };
  if (S.question && S.question.question.id === m.question_id) showFeedback(m);
  // Self-paced: after the last question there is nothing more to push.
  const q = S.question && S.question.question;
  if (S.mode === 'self_paced' && q && q.id === m.question_id && S.questionCount && q.index + 1 >= S.questionCount) {
    setTimeout(() => { if (!S.ended && S.question && S.question.question.id === q.id) showResults(); }, 2500);
  }
}

function feedbackNodes(m) {
  if (!m.accepted) {
    const why = {
      late: "Too late — time was up.",
      duplicate: 'You had already answered this one.',
      not_open: 'This question is not open.',
      invalid: 'That answer was not valid.',
    }[m.reason] || `Not accepted (${m.reason || 'unknown'}).`;
    return [h('strong', { text: why }), h('span', { class: 'fb-line', text: `Score ${m.score ?? S.score} · ${rankText(m.rank ?? S.rank)}` })];
  }
  return [
    h('strong', { class: 'fb-verdict', text: m.correct ? 'Correct!' : 'Wrong' }),
    h('span', { class: 'fb-points', text: `+${m.points || 0} points` }),
    h('span', { class: 'fb-line', text: `Score ${m.score} · ${rankText(m.rank)}` }),
  ];
}

function feedbackClass(m) {
  if (!m.accepted) return m.reason === 'duplicate' ? 'feedback pending' : 'feedback late';
  return m.correct ? 'feedback correct' : 'feedback wrong';
}

function showFeedback(m) {
  const fb = $('#feedback');
  fb.className = feedbackClass(m);
  fb.replaceChildren(...feedbackNodes(m));
  fb.hidden = false;
}

function onQuestionClosed(m) {
  S.closed[m.question_id] = m;
  if (!S.question || S.question.question.id !== m.question_id) return;
  clearInterval(timerHandle);
  lockOptions();
  $('#timer-s').textContent = '0';
  $('#timebar-fill').style.transform = 'scaleX(0)';
  const correct = new Set(m.correct || []);
  for (const b of document.querySelectorAll('#options .option')) {
    const i = Number(b.dataset.index);
    b.classList.toggle('correct', correct.has(i));
    b.classList.toggle('dim', !correct.has(i));
    if (m.distribution) b.dataset.count = String(m.distribution[i] ?? 0);
  }
  const qid = m.question_id;
  setTimeout(() => {
    if (S.question && S.question.question.id === qid && !S.ended) showResults();
  }, 1800);
}

function showResults() {
  clearInterval(timerHandle);
  const last = S.question && S.answered[S.question.question.id];
  const lf = $('#last-feedback');
  if (S.question) {
    const q = S.question.question;
    const closed = S.closed[q.id];
    const correctText = closed && closed.correct ? closed.correct.map((i) => q.options[i]).join(', ') : null;
    const nodes = last && last.result ? feedbackNodes(last.result) : [h('strong', { text: 'No answer this time.' })];
    if (correctText) nodes.push(h('span', { class: 'fb-line', text: `Answer: ${correctText}` }));
    lf.className = last && last.result ? feedbackClass(last.result) : 'feedback late';
    lf.replaceChildren(...nodes);
    lf.hidden = false;
  } else {
    lf.hidden = true;
  }
  const isLast = S.questionCount && S.question && S.question.question.index + 1 >= S.questionCount;
  $('#wait-next').textContent = isLast ? 'That was the last question. Waiting for the final results…' : 'Waiting for the next question…';
  renderBoard();
  showScreen('results');
}

// ---- leaderboard and end ---------------------------------------------------

function applyLeaderboard(lb) {
  if (lb.total_players !== undefined) S.totalPlayers = lb.total_players;
  if (Array.isArray(lb.top)) S.top = lb.top;
  const mine = S.top.find((e) => e.player_id === S.playerId);
  if (mine) {
    S.rank = mine.rank;
    S.score = mine.score;
  }
  $('#lobby-count').textContent = String(S.totalPlayers);
  updateMe();
  renderBoard();
}

function renderBoard() {
  renderLeaderboard($('#leaderboard'), S.top, S.playerId);
  $('#my-standing').textContent = S.rank
    ? `You are ${ordinal(S.rank)} of ${S.totalPlayers || '?'} with ${S.score} points.`
    : `You have ${S.score} points.`;
}

async function onEnded(m) {
  S.ended = true;
  clearInterval(timerHandle);
  if (Array.isArray(m.top) && m.top.length) S.top = m.top;
  renderPodium($('#podium'), S.top);
  renderLeaderboard($('#final-board'), S.top, S.playerId);
  paintMyPlace();
  showScreen('ended');
  try {
    const [me, lb] = await Promise.all([
      api('GET', `${quizPath(S.quizId)}/players/${encodeURIComponent(S.playerId)}`),
      (m.top && m.top.length) ? null : api('GET', `${quizPath(S.quizId)}/leaderboard?limit=10`),
    ]);
    if (me) {
      S.score = me.score;
      S.rank = me.rank;
    }
    if (lb) {
      S.top = lb.top;
      S.totalPlayers = lb.total_players;
      renderPodium($('#podium'), S.top);
      renderLeaderboard($('#final-board'), S.top, S.playerId);
    }
    updateMe();
    paintMyPlace();
  } catch { /* the pushed data is already shown */ }
}

function paintMyPlace() {
  $('#my-place').textContent = S.rank
    ? `You finished ${ordinal(S.rank)}${S.totalPlayers ? ` of ${S.totalPlayers}` : ''} with ${S.score} points.`
    : `You finished with ${S.score} points.`;
}

function rankText(rank) {
  return rank ? `${ordinal(rank)} place` : 'unranked';
}

function updateMe() {
  $('#me-score').textContent = String(S.score);
  $('#me-rank').textContent = S.rank ? `#${S.rank}` : '';
}

let toastTimer = null;
function toast(text) {
  conn.className = 'conn warn';
  conn.textContent = text;
  conn.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { if (document.body.dataset.conn === 'open') conn.hidden = true; }, 4000);
}

$('#play-again').addEventListener('click', () => {
  if (S.socket) S.socket.close();
  S.socket = null;
  sessionStorage.removeItem(storeKey(S.quizId));
  location.href = '/';
});
$('#error-back').addEventListener('click', () => showScreen('join'));

// ---- boot ----------------------------------------------------------------

const params = new URLSearchParams(location.search);
const fromUrl = params.get('quiz') || '';
$('#quiz-id').value = fromUrl;
const saved = fromUrl ? loadSession(fromUrl) : null;
if (saved && saved.player_token) {
  S.quizId = fromUrl;
  S.playerId = saved.player_id;
  S.token = saved.player_token;
  S.nickname = saved.nickname || '';
  S.answered = saved.answered || {};
  startSession();
} else {
  showScreen('join');
  (fromUrl ? $('#nickname') : $('#quiz-id')).focus();
}

// Test and debugging hook (used by web/tests/e2e.mjs).
window.__quiz = {
  state: S,
  dropSocket: () => S.socket && S.socket.drop(),
  get connected() { return !!(S.socket && S.socket.connected); },
};

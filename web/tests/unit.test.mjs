// Unit tests of the pages' pure helpers (validation, error-to-field mapping,
// CSV): run with `node --test web/tests/`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  checkQuiz, checkNickname, checkQuizId, fieldOfMessage, csvCell, resultsCsv, ordinal,
  ApiError, isAmbiguous, newIdempotencyKey, unackedAnswers, withRetry,
} from '../assets/common.js';
import { backoffMs, closeRetryMs, retryAfterMs, retryDelayMs, mayRetry } from '../assets/backoff.js';

const good = {
  title: 'T',
  mode: 'live',
  questions: [{ text: 'Q', options: ['a', 'b'], correct: [1], time_limit_ms: 5000, points: 1000 }],
};

test('a valid quiz passes the client-side checks', () => {
  assert.deepEqual(checkQuiz(good), []);
  assert.deepEqual(checkQuiz({ ...good, quiz_id: 'my-quiz_1' }), []);
});

test('each rule names its field like the API does', () => {
  const q = (over) => ({ ...good, questions: [{ ...good.questions[0], ...over }] });
  const fields = (body) => checkQuiz(body).map((e) => e.field);
  assert.deepEqual(fields({ ...good, title: '  ' }), ['title']);
  assert.deepEqual(fields({ ...good, mode: 'x' }), ['mode']);
  assert.deepEqual(fields({ ...good, quiz_id: 'no spaces' }), ['quiz_id']);
  assert.deepEqual(fields({ ...good, questions: [] }), ['questions']);
  assert.deepEqual(fields(q({ text: '' })), ['questions[0].text']);
  assert.deepEqual(fields(q({ options: ['a'], correct: [0] })), ['questions[0].options']);
  assert.deepEqual(fields(q({ options: ['a', 'b', 'c', 'd', 'e', 'f', 'g'] })), ['questions[0].options']);
  assert.deepEqual(fields(q({ options: ['a', ' '] })), ['questions[0].options']);
  assert.deepEqual(fields(q({ correct: [] })), ['questions[0].correct']);
  assert.deepEqual(fields(q({ correct: [2] })), ['questions[0].correct']);
  assert.deepEqual(fields(q({ time_limit_ms: 4999 })), ['questions[0].time_limit_ms']);
  assert.deepEqual(fields(q({ time_limit_ms: 240001 })), ['questions[0].time_limit_ms']);
  assert.deepEqual(fields(q({ points: 500 })), ['questions[0].points']);
  for (const e of checkQuiz(q({ points: 500, text: '' }))) assert.ok(e.message.startsWith(e.field), e.message);
});

test('nickname and quiz code checks', () => {
  assert.equal(checkNickname('  Ada '), null);
  assert.match(checkNickname('   '), /^nickname/);
  assert.match(checkNickname('x'.repeat(25)), /^nickname/);
  assert.equal(checkNickname('😀'.repeat(24)), null, 'counts characters, not UTF-16 units');
  assert.match(checkNickname('a\u0007b'), /control/);
  assert.equal(checkQuizId('abc_DEF-1'), null);
  assert.match(checkQuizId(''), /^quiz_id/);
  assert.match(checkQuizId('a/b'), /^quiz_id/);
  assert.match(checkQuizId('x'.repeat(65)), /^quiz_id/);
});

test('API messages are mapped to the field they name', () => {
  const fields = ['title', 'mode', 'quiz_id', 'questions', 'questions[0]', 'questions[0].text', 'questions[0].options',
    'questions[1].options', 'questions[1].time_limit_ms', 'nickname'];
  // Messages as core words them (core/src/quiz.rs).
  assert.equal(fieldOfMessage('title: must be 1–200 characters', fields), 'title');
  assert.equal(fieldOfMessage('questions: must hold 1–200 questions', fields), 'questions');
  assert.equal(fieldOfMessage('questions[1].time_limit_ms: must be 5000–240000', fields), 'questions[1].time_limit_ms');
  assert.equal(fieldOfMessage('questions[0].options[2]: must be 1–200 characters', fields), 'questions[0].options');
  assert.equal(fieldOfMessage('quiz_id: "abc" is taken', fields), 'quiz_id');
  assert.equal(fieldOfMessage('nickname: "Ada" is taken in this quiz', fields), 'nickname');
  assert.equal(fieldOfMessage('state: the quiz has ended', fields), null);
  // Other spellings of a path.
  assert.equal(fieldOfMessage('questions.1.options must have 2 to 6 entries', fields), 'questions[1].options');
  assert.equal(fieldOfMessage('/questions/0/text is empty', fields), 'questions[0].text');
  assert.equal(fieldOfMessage('invalid field `questions[0]`', fields), 'questions[0]');
});

test('CSV cells are quoted and defused', () => {
  assert.equal(csvCell('Ada'), 'Ada');
  assert.equal(csvCell('a,b'), '"a,b"');
  assert.equal(csvCell('say "hi"'), '"say ""hi"""');
  assert.equal(csvCell('=1+1'), "'=1+1");
  assert.equal(csvCell('@x,y'), `"'@x,y"`);
  assert.equal(csvCell(1200), '1200');
  assert.equal(resultsCsv([{ rank: 1, nickname: 'A,b', score: 10, player_id: 'p1' }]), 'rank,nickname,score,player_id\r\n1,"A,b",10,p1\r\n');
});

test('ordinals', () => {
  assert.deepEqual([1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111].map(ordinal),
    ['1st', '2nd', '3rd', '4th', '11th', '12th', '13th', '21st', '22nd', '101st', '111th']);
});

test('join idempotency keys are fresh and valid header values; only ambiguous failures retry', () => {
  const a = newIdempotencyKey();
  const b = newIdempotencyKey();
  assert.match(a, /^[0-9a-f]{32}$/); // 1–64 visible ASCII, as the API requires
  assert.notEqual(a, b);
  for (const s of [0, 502, 503, 504]) assert.equal(isAmbiguous(new ApiError(s, 'x', 'm')), true, `${s}`);
  for (const s of [400, 404, 409, 429]) assert.equal(isAmbiguous(new ApiError(s, 'x', 'm')), false, `${s}`);
  assert.equal(isAmbiguous(new Error('x')), false);
});

test('answers sent without a result are the ones re-sent after a reconnect', () => {
  const answered = {
    0: { choices: [1], result: { type: 'answer_result', accepted: true } },
    1: { choices: [0, 2] },
    2: { choices: [], known: true },
    3: { choices: [3], resent: true },
  };
  assert.deepEqual(unackedAnswers(answered), [
    { question_id: 1, choices: [0, 2] },
    { question_id: 3, choices: [3] },
  ]);
  assert.deepEqual(unackedAnswers({}), []);
  assert.deepEqual(unackedAnswers(undefined), []);
});

test('a socket replaced by a newer one (4009) stops instead of reconnecting; resume() reconnects', async () => {
  const made = [];
  class FakeWs {
    static OPEN = 1;
    constructor(url) { this.url = url; this.readyState = 0; made.push(this); }
    close() {}
  }
  const saved = { window: globalThis.window, location: globalThis.location, WebSocket: globalThis.WebSocket };
  globalThis.window = { addEventListener() {}, removeEventListener() {} };
  globalThis.location = { protocol: 'http:', host: 'test' };
  globalThis.WebSocket = FakeWs;
  try {
    const { QuizSocket, REPLACED } = await import('../assets/common.js');
    assert.equal(REPLACED, 4009);
    let replaced = 0;
    const statuses = [];
    const s = new QuizSocket('q1', 't', { onreplaced: () => { replaced++; }, onstatus: (st) => statuses.push(st) });
    assert.equal(made.length, 1);
    made[0].onclose({ code: 4009, reason: 'replaced by a newer connection' });
    assert.equal(replaced, 1);
    assert.equal(s.timer, null, 'no reconnect scheduled after 4009');
    assert.equal(statuses.at(-1), 'closed');
    s.resume();
    assert.equal(made.length, 2, 'resume() connects again');
    // Any other close still reconnects (with back-off).
    made[1].onclose({ code: 1006, reason: '' });
    assert.notEqual(s.timer, null);
    s.close();
  } finally {
    Object.assign(globalThis, saved);
  }
});

test('nicknames with invisible or bidi characters are refused like the API does', () => {
  for (const bad of ['evil\u202Egnp.exe', '\u2066admin\u2069', 'Al\u200Bice', 'Al\u200Dice', '\uFEFFbob', '\u3164', 'x\u{E0041}']) {
    assert.match(checkNickname(bad) || '', /invisible/, JSON.stringify(bad));
  }
  for (const ok of ['Zoë', '東京', 'Ana María', '🦀 crab']) assert.equal(checkNickname(ok), null, ok);
});

// ---- retry timing (backoff.js) and the retry loop (common.js withRetry) ----

test('backoff: spaced from the first attempt, doubling, capped, jittered', () => {
  const lo = { random: () => 0 };
  const hi = { random: () => 0.999999 };
  assert.equal(backoffMs(1, { baseMs: 1000, ...lo }), 500);
  assert.equal(backoffMs(1, { baseMs: 1000, ...hi }), 1000);
  assert.equal(backoffMs(3, { baseMs: 1000, ...lo }), 2000);
  assert.equal(backoffMs(3, { baseMs: 1000, ...hi }), 4000);
  assert.equal(backoffMs(20, { baseMs: 1000, capMs: 10000, ...hi }), 10000);
  assert.equal(backoffMs(20, { baseMs: 1000, capMs: 10000, ...lo }), 5000);
  assert.ok(backoffMs(0) > 0, 'never immediate');
});

test('Retry-After: seconds or an HTTP date; absent or unreadable is null', () => {
  assert.equal(retryAfterMs('2'), 2000);
  assert.equal(retryAfterMs(' 3 '), 3000);
  assert.equal(retryAfterMs(null), null);
  assert.equal(retryAfterMs(''), null);
  assert.equal(retryAfterMs('soon'), null);
  const now = Date.parse('Wed, 21 Oct 2015 07:28:00 GMT');
  assert.equal(retryAfterMs('Wed, 21 Oct 2015 07:28:05 GMT', now), 5000);
  assert.equal(retryAfterMs('Wed, 21 Oct 2015 07:27:00 GMT', now), 0);
});

test('retry delay: the hint is a floor with up to 1 s of jitter, else the backoff', () => {
  assert.equal(retryDelayMs(1, 2000, { random: () => 0 }), 2000);
  assert.equal(retryDelayMs(1, 2000, { random: () => 0.5 }), 2500);
  assert.equal(retryDelayMs(2, null, { random: () => 0 }), 500);
  assert.ok(mayRetry({ attempts: 1, elapsedMs: 0, delayMs: 3000 }));
  assert.ok(!mayRetry({ attempts: 5, elapsedMs: 0, delayMs: 100 }), 'attempts bounded');
  assert.ok(!mayRetry({ attempts: 2, elapsedMs: 28000, delayMs: 3000 }), 'total time bounded');
});

test('close reason comeback: edge-lb 1012 retry_after_ms, bounded, else none', () => {
  assert.equal(closeRetryMs('retry_after_ms=1234'), 1234);
  assert.equal(closeRetryMs('retry_after_ms=0'), 0);
  assert.equal(closeRetryMs('drain; retry_after_ms=250'), 250);
  assert.equal(closeRetryMs('retry_after_ms=999999999'), 60000, 'capped');
  for (const r of ['', null, undefined, 'bye', 'retry_after_ms=', 'retry_after_ms=-5',
    'retry_after_ms=12x', 'xretry_after_ms=5', 'retry_after_ms=1e9', 'retry_after_ms=1234567890']) {
    assert.equal(closeRetryMs(r), null, `reason ${JSON.stringify(r)}`);
  }
});

test('withRetry: retries refusals after their hint, stops at the budget, not on other errors', async () => {
  const waits = [];
  const sleep = async (ms) => { waits.push(ms); };
  let calls = 0;
  const ok = await withRetry(async () => {
    calls++;
    if (calls < 3) throw new ApiError(503, 'unavailable', 'busy', '2');
    return 'joined';
  }, { sleep });
  assert.equal(ok, 'joined');
  assert.equal(calls, 3);
  assert.equal(waits.length, 2);
  for (const w of waits) assert.ok(w >= 2000 && w <= 3000, `waited ${w}`);

  calls = 0;
  await assert.rejects(withRetry(async () => {
    calls++;
    throw new ApiError(429, 'rate_limited', 'slow down', '1');
  }, { sleep, maxAttempts: 3 }), (e) => e.status === 429);
  assert.equal(calls, 3, 'at most maxAttempts calls');

  calls = 0;
  await assert.rejects(withRetry(async () => {
    calls++;
    throw new ApiError(409, 'conflict', 'nickname taken');
  }, { sleep }), (e) => e.status === 409);
  assert.equal(calls, 1, 'a 409 is final');
});

// End-to-end test of the web client in headless Chromium (playwright-core).
//
//   BASE_URL=http://127.0.0.1:8080 node web/tests/e2e.mjs
//
// Env: BASE_URL (required), ARTIFACTS_DIR (screenshots, default
// target/web-artifacts), WIDTHS (phone,desktop), CHROMIUM (/usr/bin/chromium).
//
// Scenario, once per width: a host creates a live quiz (after tripping the
// form's client-side and API validation), three players join through the
// join link (one trips the nickname-taken error), answer three questions and
// get feedback, the leaderboards update, one player's connection drops and
// comes back with its score, the host ends the quiz, and the podium, every
// player's own place and the CSV export match the server's leaderboard.
// Then, once: a host link, a join refused and retried, spaced reconnects
// (`overloadScenario`).
import { chromium } from 'playwright-core';
import { encode, toSvg } from '../assets/qr.js';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const BASE = (process.env.BASE_URL || '').replace(/\/$/, '');
if (!BASE) {
  console.error('BASE_URL is required');
  process.exit(2);
}
const ART = path.resolve(process.env.ARTIFACTS_DIR || 'target/web-artifacts');
const WIDTHS = (process.env.WIDTHS || 'phone,desktop').split(',').map((s) => s.trim()).filter(Boolean);
const VIEWPORTS = { phone: { width: 390, height: 844 }, desktop: { width: 1280, height: 800 } };
const QUESTION_MS = Number(process.env.QUESTION_MS || 5000);
const T = 15000; // default wait

mkdirSync(ART, { recursive: true });
let passed = 0;
let failed = 0;
const log = (...a) => console.log(...a);

async function check(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    passed++;
    log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failed++;
    log(`FAIL ${name}: ${e && e.message ? e.message.split('\n').slice(0, 6).join('\n     ') : e}`);
    throw new StopScenario(name);
  }
}
class StopScenario extends Error {}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}
function assertEq(a, b, msg) {
  if (JSON.stringify(a) !== JSON.stringify(b)) throw new Error(`${msg}: expected ${JSON.stringify(b)}, got ${JSON.stringify(a)}`);
}

async function waitText(page, selector, re, timeout = T) {
  try {
    await page.waitForFunction(([s, src, flags]) => {
      const el = document.querySelector(s);
      return !!el && !el.closest('[hidden]') && new RegExp(src, flags).test(el.textContent);
    }, [selector, re.source, re.flags], { timeout });
  } catch (e) {
    const actual = await page.evaluate((s) => {
      const el = document.querySelector(s);
      return el ? `${el.closest('[hidden]') ? '(hidden) ' : ''}${el.textContent}` : '(missing)';
    }, selector).catch(() => '?');
    throw new Error(`${selector} never matched ${re} (now: ${JSON.stringify(actual)})`);
  }
  return page.textContent(selector);
}

async function api(method, p, body, token) {
  const res = await fetch(BASE + p, {
    method,
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = await res.json().catch(() => null);
  return { status: res.status, json };
}

const QUIZ = {
  title: 'E2E: capitals & colours',
  mode: 'live',
  questions: [
    { text: 'Capital of France?', options: ['Berlin', 'Paris', 'Rome', 'Madrid'], correct: [1], time_limit_ms: QUESTION_MS, points: 1000 },
    { text: 'Mix blue and yellow: which colour?', options: ['Green', 'Purple', 'Orange'], correct: [0], time_limit_ms: QUESTION_MS, points: 2000 },
    { text: 'Capital of Japan?', options: ['Kyoto', 'Osaka', 'Tokyo', 'Nagoya'], correct: [2], time_limit_ms: QUESTION_MS, points: 1000 },
  ],
};

async function scenario(browser, vpName) {
  const viewport = VIEWPORTS[vpName];
  const shots = [];
  let n = 0;
  const shot = async (page, label) => {
    n++;
    const file = path.join(ART, `${vpName}-${String(n).padStart(2, '0')}-${label}.png`);
    await page.screenshot({ path: file, fullPage: true });
    shots.push(file);
  };
  const newPage = async () => {
    const context = await browser.newContext({ viewport, acceptDownloads: true, deviceScaleFactor: 1 });
    const page = await context.newPage();
    page.on('pageerror', (e) => log(`  [${vpName} page error] ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') log(`  [${vpName} console] ${m.text()}`); });
    return { context, page };
  };
  const suffix = `${vpName}-${Date.now().toString(36)}`;
  const quizId = `e2e-${suffix}`;
  const takenId = `e2e-taken-${suffix}`;

  // ---- host creates the quiz -----------------------------------------------
  const { page: host } = await newPage();
  await check(`${vpName}: host page loads`, async () => {
    await host.goto(`${BASE}/host`);
    await host.waitForSelector('#create-form', { state: 'visible' });
    await shot(host, 'host-create-empty');
  });

  await check(`${vpName}: client-side validation shows next to the field`, async () => {
    await host.click('#create-btn');
    await waitText(host, '#err-title', /title/);
    await waitText(host, '[data-error-for="questions[0].text"]', /text/);
    assertEq(await host.getAttribute('#title', 'aria-invalid'), 'true', 'title aria-invalid');
    await shot(host, 'host-create-client-errors');
  });

  await check(`${vpName}: JSON upload fills the form`, async () => {
    await host.setInputFiles('#upload', { name: 'quiz.json', mimeType: 'application/json', buffer: Buffer.from(JSON.stringify(QUIZ)) });
    await waitText(host, '#err-upload', /Loaded/);
    assertEq(await host.inputValue('#title'), QUIZ.title, 'title from file');
    assertEq(await host.inputValue('#q2-text'), QUIZ.questions[2].text, 'question 3 from file');
    assertEq(await host.isChecked('#q1-c0'), true, 'correct option of question 2');
  });

  await check(`${vpName}: the API's error is shown next to the field (quiz code taken)`, async () => {
    const r = await api('POST', '/v1/quizzes', { ...QUIZ, quiz_id: takenId });
    assertEq(r.status, 201, 'creating the quiz that takes the code');
    await host.fill('#custom-id', takenId);
    await host.click('#create-btn');
    const msg = await waitText(host, '#err-quiz_id', /\S/);
    log(`     API said: ${msg}`);
    await shot(host, 'host-create-api-error');
  });

  let joinLink;
  await check(`${vpName}: host creates the quiz and shows its code and QR`, async () => {
    await host.fill('#custom-id', quizId);
    await host.click('#create-btn');
    await waitText(host, '#big-id', new RegExp(`^${quizId}$`));
    assert(await host.isVisible('#qr svg'), 'QR code rendered');
    joinLink = await host.getAttribute('#join-link', 'href');
    assertEq(joinLink, `${BASE}/?quiz=${quizId}`, 'join link');
    // The QR code on the page is the join link's (the encoder itself is
    // checked against python-qrcode in qr.test.mjs).
    const want = toSvg(encode(joinLink, { ecl: 'M' }), { title: `QR code: ${joinLink}` }).match(/ d="([^"]+)"/)[1];
    assertEq(await host.getAttribute('#qr svg path', 'd'), want, 'QR code modules');
    await shot(host, 'host-lobby-empty');
  });

  // ---- players join ----------------------------------------------------------
  const names = ['Ada', 'Bo', 'Cy'];
  const players = [];
  for (const nick of names) players.push({ nick, ...(await newPage()) });

  await check(`${vpName}: players join through the join link`, async () => {
    for (const [i, p] of players.entries()) {
      await p.page.goto(joinLink);
      assertEq(await p.page.inputValue('#quiz-id'), quizId, 'quiz code from the link');
      if (i === 0) {
        await p.page.click('#join-btn');
        await waitText(p.page, '#err-nickname', /nickname/);
        await shot(p.page, 'player-join-empty-nickname');
      }
      if (i === 2) {
        await p.page.fill('#nickname', names[0]);
        await p.page.click('#join-btn');
        const msg = await waitText(p.page, '#err-nickname', /\S/);
        log(`     API said: ${msg}`);
        await shot(p.page, 'player-join-nickname-taken');
      }
      await p.page.fill('#nickname', p.nick);
      await p.page.click('#join-btn');
      await waitText(p.page, '[data-screen="lobby"] .lead', /Waiting for the host/);
      await p.page.waitForFunction(() => document.body.dataset.conn === 'open', null, { timeout: T });
    }
    await shot(players[0].page, 'player-lobby');
  });

  await check(`${vpName}: host sees the players arrive`, async () => {
    await waitText(host, '#player-count', /^3$/);
    for (const nick of names) await waitText(host, '#players', new RegExp(nick));
    await shot(host, 'host-lobby-players');
  });

  // ---- questions -------------------------------------------------------------
  const score = {}; // nick -> score as the pages show it
  const answerRound = async (qi, picks, { reload } = {}) => {
    const qText = new RegExp(QUIZ.questions[qi].text.replace(/[?()]/g, '\\$&'));
    for (const p of players) await waitText(p.page, '#q-text', qText);
    if (reload !== undefined) {
      // Reconnecting mid-question: the server's welcome brings the open
      // question back, still answerable, with the countdown running on.
      const p = players[reload];
      await p.page.reload();
      await waitText(p.page, '#q-text', qText);
      assertEq(await p.page.isEnabled('#options .option[data-index="0"]'), true, 'options enabled after reload');
      const left = Number(await p.page.textContent('#timer-s'));
      assert(left > 0 && left <= QUESTION_MS / 1000, `countdown after reload: ${left}`);
    }
    await waitText(host, '#hq-text', /\S/);
    await shot(players[0].page, `player-q${qi + 1}`);
    for (const [i, p] of players.entries()) {
      const pick = picks[i];
      if (pick === null) continue;
      await p.page.click(`#options .option[data-index="${pick}"]`);
      const correct = QUIZ.questions[qi].correct.includes(pick);
      const fb = await waitText(p.page, '#feedback', correct ? /Correct!/ : /Wrong/);
      const pts = Number((fb.match(/\+(\d+) points/) || [])[1]);
      assert(correct ? pts > 0 : pts === 0, `${p.nick}: points ${pts} for a ${correct ? 'correct' : 'wrong'} answer`);
      const s = Number(await p.page.textContent('#me-score'));
      assertEq(s, (score[p.nick] || 0) + pts, `${p.nick}: score after question ${qi + 1}`);
      score[p.nick] = s;
      if (i === 0) await shot(p.page, `player-q${qi + 1}-feedback`);
    }
    // Live answer count on the host page (core's host-only answer_count).
    const answered = picks.filter((x) => x !== null).length;
    await waitText(host, '#answer-count', new RegExp(`^${answered} of 3 answered`), QUESTION_MS);
    await shot(host, `host-q${qi + 1}-answers`);
    // The question closes by itself at closes_at_ms.
    await waitText(host, '#answer-count', /closed/, QUESTION_MS + T);
    const expected = QUIZ.questions[qi].options.map((_, o) => picks.filter((x) => x === o).length);
    const dist = await host.$$eval('#dist .dist-n', (els) => els.map((e) => Number(e.textContent)));
    assertEq(dist, expected, `distribution of question ${qi + 1}`);
    await waitText(host, '#answer-count', new RegExp(`^${answered} of 3 answered`));
    for (const p of players) await waitText(p.page, '[data-screen="results"] #leaderboard', new RegExp(p.nick), T);
    // The live leaderboard shows everyone's current score.
    const order = Object.entries(score).sort((a, b) => b[1] - a[1]);
    for (const p of players) {
      await p.page.waitForFunction((want) => {
        const rows = [...document.querySelectorAll('#leaderboard li')].map((li) => [li.querySelector('.nick').textContent, Number(li.querySelector('.score').textContent)]);
        return want.every(([nk, sc]) => rows.some(([a, b]) => a === nk && b === sc));
      }, order, { timeout: T }).catch(async () => {
        const rows = await p.page.$$eval('#leaderboard li', (lis) => lis.map((li) => li.textContent));
        throw new Error(`${p.nick}'s leaderboard ${JSON.stringify(rows)} does not show ${JSON.stringify(order)}`);
      });
    }
    await shot(players[0].page, `player-q${qi + 1}-leaderboard`);
    await waitText(host, '#h-leaderboard', new RegExp(order[0][0]));
    await shot(host, `host-q${qi + 1}-closed`);
  };

  await check(`${vpName}: host starts; question 1 with feedback, distribution and leaderboard`, async () => {
    await host.click('#btn-start');
    await answerRound(0, [1, 0, 1]);
  });

  await check(`${vpName}: a dropped connection shows reconnecting, then recovers the score`, async () => {
    const p = players[2];
    const before = Number(await p.page.textContent('#me-score'));
    assert(before > 0, `${p.nick} should have points before the drop`);
    await p.context.setOffline(true);
    await p.page.evaluate(() => window.__quiz.dropSocket());
    await waitText(p.page, '#conn', /Reconnecting/, 3000);
    // Forget the score locally, so only the server's welcome can bring it back.
    await p.page.evaluate(() => {
      window.__quiz.state.score = -1;
      document.querySelector('#me-score').textContent = '-1';
    });
    await shot(p.page, 'player-reconnecting');
    await p.page.waitForTimeout(1500);
    await p.context.setOffline(false);
    await p.page.waitForFunction(() => document.body.dataset.conn === 'open' && window.__quiz.connected, null, { timeout: T });
    await waitText(p.page, '#me-score', new RegExp(`^${before}$`));
    await shot(p.page, 'player-reconnected');
    // A reload resumes the same session from storage, with the same score.
    await p.page.reload();
    await p.page.waitForFunction(() => document.body.dataset.conn === 'open', null, { timeout: T });
    await waitText(p.page, '#me-score', new RegExp(`^${before}$`));
    assertEq(await p.page.textContent('#me-nick'), p.nick, 'nickname after reload');
  });

  await check(`${vpName}: question 2 (next; one player reloads mid-question), the leaderboard updates`, async () => {
    await host.click('#btn-next');
    await answerRound(1, [1, 0, 0], { reload: 2 });
  });

  await check(`${vpName}: question 3, last`, async () => {
    await host.click('#btn-next');
    await host.waitForSelector('#btn-next', { state: 'hidden', timeout: T });
    await answerRound(2, [2, 2, null]);
  });

  // ---- the end -----------------------------------------------------------------
  await check(`${vpName}: host ends the quiz; the podium is right on every page`, async () => {
    await host.click('#btn-end');
    const lb = (await api('GET', `/v1/quizzes/${quizId}/leaderboard?limit=10`)).json;
    const server = lb.top.map((e) => [e.nickname, e.score]).sort();
    assertEq(server, names.map((nk) => [nk, score[nk]]).sort(), 'server scores = scores shown by the pages');
    // Shown left to right as 2nd, 1st, 3rd, each with its rank (ties share one).
    const podium = [1, 0, 2].map((i) => `${lb.top[i].rank}:${lb.top[i].nickname}`);
    const podiumOf = (page, sel) => page.$$eval(`${sel} .step`, (steps) => steps
      .map((s) => `${s.dataset.rank}:${s.querySelector('.nick').textContent}`));
    await waitText(host, '#final-h', /Final results/);
    await host.waitForFunction(() => document.querySelectorAll('#h-podium .step').length === 3, null, { timeout: T });
    assertEq(await podiumOf(host, '#h-podium'), podium, 'host podium');
    await shot(host, 'host-final');
    for (const p of players) {
      await waitText(p.page, '#end-h', /Final results/);
      await p.page.waitForFunction(() => document.querySelectorAll('#podium .step').length === 3, null, { timeout: T });
      assertEq(await podiumOf(p.page, '#podium'), podium, `${p.nick}'s podium`);
      const me = lb.top.find((e) => e.nickname === p.nick);
      await waitText(p.page, '#my-place', new RegExp(`finished ${me.rank}(st|nd|rd|th) of 3 with ${me.score} points`));
      await shot(p.page, `player-final-${p.nick}`);
    }
  });

  await check(`${vpName}: CSV export`, async () => {
    const [download] = await Promise.all([host.waitForEvent('download'), host.click('#csv')]);
    const file = path.join(ART, `${vpName}-results.csv`);
    await download.saveAs(file);
    const { readFileSync } = await import('node:fs');
    const lines = readFileSync(file, 'utf8').trim().split(/\r?\n/);
    assertEq(lines[0], 'rank,nickname,score,player_id', 'CSV header');
    assertEq(lines.length, 4, 'CSV rows');
    for (const nk of names) assert(lines.some((l) => l.split(',')[1] === nk && Number(l.split(',')[2]) === score[nk]), `CSV row of ${nk}`);
  });

  writeFileSync(path.join(ART, `${vpName}-screenshots.txt`), `${shots.map((f) => path.basename(f)).join('\n')}\n`);
}

// Self-paced: each player gets the questions one by one on their own clock;
// the host only starts and ends.
async function selfPacedScenario(browser, vpName) {
  const viewport = VIEWPORTS[vpName];
  const shot = (page, label) => page.screenshot({ path: path.join(ART, `${vpName}-sp-${label}.png`), fullPage: true });
  const ctx = async () => (await browser.newContext({ viewport })).newPage();
  const quiz = {
    title: 'E2E: self-paced',
    mode: 'self_paced',
    quiz_id: `e2e-sp-${vpName}-${Date.now().toString(36)}`,
    questions: [QUIZ.questions[0], { ...QUIZ.questions[2], time_limit_ms: 5000 }],
  };
  const host = await ctx();
  const player = await ctx();
  for (const page of [host, player]) page.on('pageerror', (e) => log(`  [${vpName} sp page error] ${e.message}`));
  await check(`${vpName}: self-paced: create, join, start`, async () => {
    await host.goto(`${BASE}/host`);
    await host.setInputFiles('#upload', { name: 'sp.json', mimeType: 'application/json', buffer: Buffer.from(JSON.stringify(quiz)) });
    await waitText(host, '#err-upload', /Loaded/);
    assertEq(await host.isChecked('input[name="mode"][value="self_paced"]'), true, 'mode from the file');
    await host.click('#create-btn');
    await waitText(host, '#big-id', new RegExp(`^${quiz.quiz_id}$`));
    await player.goto(`${BASE}/?quiz=${quiz.quiz_id}`);
    await player.fill('#nickname', 'Solo');
    await player.press('#nickname', 'Enter'); // the keyboard path
    await waitText(player, '[data-screen="lobby"] .lead', /Waiting for the host/);
    await waitText(host, '#player-count', /^1$/);
    await host.click('#btn-start');
    await host.waitForSelector('#btn-next', { state: 'hidden', timeout: T });
  });
  await check(`${vpName}: self-paced: answer, next question at once, expiry, results`, async () => {
    await waitText(player, '#q-text', /France/);
    await player.click('#options .option[data-index="1"]');
    // The next question follows the answer; the verdict stays on screen a moment.
    await waitText(player, '#q-text', /Japan/);
    await waitText(player, '#prev-result', /Correct/);
    const score = Number(await player.textContent('#me-score'));
    assert(score > 0, 'score after a correct answer');
    await shot(player, 'player-q2');
    // Let question 2 expire unanswered: the page fetches the state again and
    // lands on the leaderboard after the last question.
    await waitText(player, '#feedback', /Time's up/, 8000);
    await waitText(player, '#wait-next', /last question/, T);
    await shot(player, 'player-done');
    await host.click('#btn-end');
    await waitText(player, '#my-place', new RegExp(`finished 1st of 1 with ${score} points`));
    await waitText(host, '#final-h', /Final results/);
    await shot(host, 'host-final');
  });
}

// Overload and links, once: the host opens the quiz from a host link (token
// in the fragment, removed from the address bar) and drives it; a player's
// join is refused once with 503 + Retry-After (as core's join admission
// does) and retried after the hint; the player's first WebSocket attempts
// are closed abnormally and the reconnects are spaced, not immediate.
async function overloadScenario(browser) {
  const ctx = async () => (await browser.newContext({ viewport: VIEWPORTS.desktop })).newPage();
  const quizId = `e2e-ov-${Date.now().toString(36)}`;
  const created = await api('POST', '/v1/quizzes', { ...QUIZ, quiz_id: quizId });
  assertEq(created.status, 201, 'create');
  const host = await ctx();
  const player = await ctx();
  for (const page of [host, player]) page.on('pageerror', (e) => log(`  [overload page error] ${e.message}`));

  await check('host link: the token is taken from the fragment and removed from the address bar', async () => {
    await host.goto(`${BASE}/host#quiz=${quizId}&token=${encodeURIComponent(created.json.host_token)}`);
    await waitText(host, '#big-id', new RegExp(`^${quizId}$`));
    const url = host.url();
    assert(!url.includes('token') && !url.includes('#'), `token left in the address bar: ${url}`);
    assertEq(new URL(url).pathname + new URL(url).search, `/host?quiz=${quizId}`, 'address');
  });

  const joins = [];
  await player.route(`**/v1/quizzes/${quizId}/players`, async (route) => {
    joins.push(Date.now());
    if (joins.length === 1) {
      await route.fulfill({
        status: 503,
        headers: { 'content-type': 'application/json', 'retry-after': '1' },
        body: JSON.stringify({ error: { code: 'unavailable', message: 'busy: admitting joins as fast as it can' } }),
      });
    } else {
      await route.continue();
    }
  });
  const sockets = [];
  await player.routeWebSocket(/\/ws\?token=/, (ws) => {
    sockets.push(Date.now());
    if (sockets.length <= 3) ws.close({ code: 1011, reason: 'try again' });
    else ws.connectToServer();
  });

  await check('join refused with 503 + Retry-After: "busy, retrying", then joined after the hint', async () => {
    await player.goto(`${BASE}/?quiz=${quizId}`);
    await player.fill('#nickname', 'Patient');
    await player.click('#join-btn');
    await waitText(player, '#join-btn', /Busy, retrying in \d+ s/);
    await waitText(player, '[data-screen="lobby"] .lead', /Waiting for the host/);
    assertEq(joins.length, 2, 'join requests');
    assert(joins[1] - joins[0] >= 1000, `retried after ${joins[1] - joins[0]} ms, before the 1 s hint`);
  });

  await check('reconnects after abnormal closes are spaced, growing, not immediate', async () => {
    await waitText(host, '#player-count', /^1$/);
    await player.waitForFunction(() => document.body.dataset.conn === 'open', null, { timeout: 20000 });
    assertEq(sockets.length, 4, 'socket attempts');
    const gaps = sockets.slice(1).map((t, i) => t - sockets[i]);
    // backoff.js: attempt n waits 0.5–1 × 2^(n-1) s (timer slack allowed).
    assert(gaps[0] >= 450, `first reconnect after ${gaps[0]} ms`);
    assert(gaps[1] >= 950, `second reconnect after ${gaps[1]} ms`);
    assert(gaps[2] >= 1950, `third reconnect after ${gaps[2]} ms`);
  });

  await check('the host link controls the quiz', async () => {
    await host.click('#btn-start');
    await waitText(player, '#q-text', /France/);
    await host.click('#btn-end');
    await waitText(host, '#final-h', /Final results/);
  });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const t0 = Date.now();
try {
  for (const w of WIDTHS) {
    if (!VIEWPORTS[w]) throw new Error(`unknown width ${w}`);
    log(`# scenario at ${w} width (${VIEWPORTS[w].width}x${VIEWPORTS[w].height}) against ${BASE}`);
    try {
      await scenario(browser, w);
      await selfPacedScenario(browser, w);
    } catch (e) {
      if (!(e instanceof StopScenario)) {
        failed++;
        log(`FAIL ${w}: ${e.stack || e}`);
      }
    }
  }
  log('# overload and host link scenario');
  try {
    await overloadScenario(browser);
  } catch (e) {
    if (!(e instanceof StopScenario)) {
      failed++;
      log(`FAIL overload: ${e.stack || e}`);
    }
  }
} finally {
  await browser.close();
}
log(`# screenshots in ${ART} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
log(`e2e: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);

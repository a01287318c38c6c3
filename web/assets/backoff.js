// Retry timing, pure (no DOM, no timers): how long to wait before the next
// attempt, from the attempt number, the server's hint and the time spent.
// Used by the HTTP retries (common.js `withRetry`) and the WebSocket's
// reconnect (common.js `QuizSocket`); unit-tested in web/tests/unit.test.mjs.
//
// Why jitter everywhere: a node that refuses a crowd (join admission, edge-lb's
// tunnel rate, a restart) must not get the whole crowd back at one instant.

/** Exponential backoff with "equal jitter": attempt 1 waits 0.5–1 × base,
 * each further attempt doubles, capped at `capMs` (before jitter). Never 0:
 * reconnects are spaced, never immediate. */
export function backoffMs(attempt, { baseMs = 500, capMs = 10000, random = Math.random } = {}) {
  const n = Math.max(1, Math.floor(attempt));
  const ceiling = Math.min(capMs, baseMs * 2 ** (n - 1));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

/** A `Retry-After` header value in ms: delta-seconds or an HTTP date (against
 * `nowMs`); null when absent or unreadable. */
export function retryAfterMs(value, nowMs = Date.now()) {
  if (value === null || value === undefined || value === '') return null;
  const s = String(value).trim();
  if (/^\d+$/.test(s)) return Number(s) * 1000;
  const at = Date.parse(s);
  return Number.isNaN(at) ? null : Math.max(0, at - nowMs);
}

/** The wait before retry number `attempt` (1 = the first retry): the server's
 * hint plus up to `spreadMs` of jitter when there is one (the hint is a
 * floor: a whole refused crowd must not come back at its exact second),
 * else the backoff. */
export function retryDelayMs(attempt, hintMs, { spreadMs = 1000, random = Math.random, ...backoff } = {}) {
  if (hintMs !== null && hintMs !== undefined && hintMs >= 0) return Math.round(hintMs + random() * spreadMs);
  return backoffMs(attempt, { random, ...backoff });
}

/** The comeback a WebSocket close reason asks for, in ms: edge-lb closes the
 * tunnels of a lost, drained or stopping node with 1012 and the reason
 * `retry_after_ms=<n>`, drawn per tunnel so the node's crowd comes back spread
 * (asyncapi.yaml `x-close-codes`). null when the reason carries none; capped
 * at 60 s so a broken reason cannot park a player. */
export function closeRetryMs(reason) {
  const m = /(?:^|[\s;,])retry_after_ms=(\d{1,9})(?=$|[\s;,])/.exec(String(reason ?? ''));
  return m ? Math.min(Number(m[1]), 60000) : null;
}

/** Whether to retry again: at most `maxAttempts` attempts in all, and the
 * next one must start within `maxTotalMs` of the first. */
export function mayRetry({ attempts, elapsedMs, delayMs, maxAttempts = 5, maxTotalMs = 30000 }) {
  return attempts < maxAttempts && elapsedMs + delayMs <= maxTotalMs;
}

//! A quiz over several nodes: what a WebSocket's token says about its spread, which node of
//! the spread a player goes to, and the bounded record of spreads seen (the admin view).
//!
//! Pure and deterministic except for [`Book`], which is given its clock. edge-lb only *reads*
//! the token: core verifies its MAC and refuses a forged one (close 4001), so a forged spread
//! only lands its client on another node of the same quiz, which refuses it.
//!
//! - Token formats (dot-separated, URL-safe): `v1.<role>.<quiz>.<player>.<mac>` and
//!   `v2.<role>.<quiz>.<player>.<expires>.<mac>` say k = 1; `v3.<role>.<quiz>.<player>.
//!   <expires>.<spread>.<mac>` says k = `spread` (1..=64). Role `p` (player, non-empty id) or
//!   `h` (host, empty id). Anything else — another quiz's token, a bad spread, a token that
//!   does not percent-decode, one longer than core accepts — reads as "no token": k = 1.
//! - The choice ([`choose`]): rendezvous (highest random weight) hashing of the player id over
//!   the spread's nodes with the ring's [`hash64`]. It depends on the player id and the *set*
//!   of nodes only, so every edge-lb process, with no shared state, sends a player to the same
//!   node, a reconnect lands where the player was, and losing a node moves only its players
//!   (each to the next node of its own order).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ring::hash64;

/// The largest spread a token may ask for.
pub const MAX_SPREAD: usize = 64;

/// Core refuses longer tokens (`core/src/token.rs`); so does this reader.
const MAX_TOKEN: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Player,
    Host,
}

/// What a readable token says about routing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub role: Role,
    /// Empty for hosts.
    pub player_id: String,
    /// The spread a `v3` token names; `None` for `v1`/`v2` (k = 1).
    pub spread: Option<usize>,
}

impl Claims {
    /// The number of nodes this connection's quiz is spread over (1: the quiz's first node).
    pub fn k(&self) -> usize {
        self.spread.unwrap_or(1)
    }

    /// Routed by player over the spread: a player of a quiz spread over more than one node.
    pub fn spreads(&self) -> bool {
        self.role == Role::Player && self.k() > 1
    }
}

/// The claims of the `token` query parameter of a WebSocket request target
/// (`/v1/quizzes/{quiz}/ws?token=…`), if it is readable and names `quiz`.
pub fn claims_of_target(target: &str, quiz: &str) -> Option<Claims> {
    read_token(&query_param(target, "token")?, quiz)
}

/// The first value of `name` in the query of `target`, percent-decoded; `None` if absent or
/// if it does not decode to UTF-8.
pub fn query_param<'a>(target: &'a str, name: &str) -> Option<Cow<'a, str>> {
    let target = target.split('#').next().unwrap_or("");
    let query = target.split_once('?')?.1;
    let raw = query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })?;
    percent_decode(raw)
}

/// Decode `%XX` escapes (and nothing else: a `+` stays a `+`); `None` on a bad escape or
/// bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// Read a token's routing claims (no verification: see the module doc). `None` when it is
/// not one of the three formats, names another quiz, or its spread is not 1..=64.
pub fn read_token(token: &str, quiz: &str) -> Option<Claims> {
    if token.len() > MAX_TOKEN {
        return None;
    }
    let mut parts = [""; 8];
    let mut n = 0;
    for p in token.split('.') {
        *parts.get_mut(n)? = p;
        n += 1;
    }
    let (role, q, player, spread) = match &parts[..n] {
        ["v1", role, q, player, _mac] => (*role, *q, *player, None),
        ["v2", role, q, player, _expires, _mac] => (*role, *q, *player, None),
        ["v3", role, q, player, _expires, spread, _mac] => {
            (*role, *q, *player, Some(parse_spread(spread)?))
        }
        _ => return None,
    };
    if q != quiz {
        return None;
    }
    let role = match role {
        "p" if !player.is_empty() => Role::Player,
        "h" if player.is_empty() => Role::Host,
        _ => return None,
    };
    Some(Claims {
        role,
        player_id: player.to_string(),
        spread,
    })
}

/// 1..=64 in plain decimal (at most two digits: no sign, no long runs of zeros).
fn parse_spread(s: &str) -> Option<usize> {
    if s.is_empty() || s.len() > 2 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let k: usize = s.parse().ok()?;
    (1..=MAX_SPREAD).contains(&k).then_some(k)
}

/// The rendezvous weight of `node` for `player`: `hash64(player ‖ 0 ‖ node)`. `buf` is scratch
/// space reused across nodes.
fn weight(buf: &mut Vec<u8>, player: &str, node: &str) -> u64 {
    buf.clear();
    buf.extend_from_slice(player.as_bytes());
    buf.push(0);
    buf.extend_from_slice(node.as_bytes());
    hash64(buf)
}

/// `nodes` in `player`'s rendezvous order: highest weight first, ties by name. Depends on the
/// set only, never on the order it is given in.
pub fn rank<'a>(nodes: &[&'a str], player: &str) -> Vec<&'a str> {
    let mut buf = Vec::with_capacity(player.len() + 64);
    let mut w: Vec<(u64, &str)> = nodes
        .iter()
        .map(|n| (weight(&mut buf, player, n), *n))
        .collect();
    w.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    w.into_iter().map(|(_, n)| n).collect()
}

/// Where a player of a spread quiz goes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Choice {
    pub node: String,
    /// The first node of the player's order over the spread (`node` when it is eligible).
    pub home: String,
    /// Why `node` is not `home`: `None`, `spread` (home not eligible, next of the player's
    /// order) or `ring` (no node of the spread eligible: next eligible node of the ring walk).
    pub fallback: Option<&'static str>,
}

/// The node for `player` over `spread`: the first eligible node of its rendezvous order; if
/// none of the spread is eligible, the first eligible node of `rest` (the ring walk beyond the
/// spread, in walk order). `None` when no node is eligible (or `spread` is empty).
pub fn choose(
    spread: &[&str],
    rest: &[&str],
    player: &str,
    eligible: impl Fn(&str) -> bool,
) -> Option<Choice> {
    let order = rank(spread, player);
    let home = (*order.first()?).to_string();
    if let Some(n) = order.iter().find(|n| eligible(n)) {
        let fallback = (*n != home).then_some("spread");
        return Some(Choice {
            node: n.to_string(),
            home,
            fallback,
        });
    }
    let n = rest.iter().find(|n| eligible(n))?;
    Some(Choice {
        node: n.to_string(),
        home,
        fallback: Some("ring"),
    })
}

/// Quizzes the book keeps at most.
pub const BOOK_CAP: usize = 10_000;
/// A quiz with no open tunnel is forgotten this long after its last spread token or tunnel.
pub const BOOK_TTL: Duration = Duration::from_secs(600);

/// What the book knows of one quiz.
#[derive(Clone, Debug)]
pub struct Seen {
    /// k as last seen in a `v3` token of the quiz.
    pub k: usize,
    /// When a token of the quiz or one of its tunnels was last seen.
    pub last_seen: Instant,
    /// Open tunnels of the quiz per node (those opened since the quiz was recorded).
    pub tunnels: HashMap<Arc<str>, usize>,
}

/// The bounded record of spread quizzes: k as last seen in a `v3` token, and open tunnels per
/// node. A quiz is recorded by its first `v3` token; it is forgotten [`BOOK_TTL`] after it was
/// last seen once it has no open tunnel. At most `cap` quizzes: when full of live quizzes a
/// new quiz is not recorded (routing is unaffected, only the admin view lacks it) and
/// [`Book::seen`] says so, for the caller to count.
#[derive(Debug)]
pub struct Book {
    quizzes: HashMap<String, Seen>,
    cap: usize,
    ttl: Duration,
    /// When a full book last swept itself (at most once a second).
    swept: Option<Instant>,
}

impl Book {
    pub fn new(cap: usize, ttl: Duration) -> Book {
        Book {
            quizzes: HashMap::new(),
            cap,
            ttl,
            swept: None,
        }
    }

    pub fn len(&self) -> usize {
        self.quizzes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.quizzes.is_empty()
    }

    pub fn get(&self, quiz: &str) -> Option<&Seen> {
        self.quizzes.get(quiz)
    }

    /// A `v3` token of `quiz` said `k`. False when the quiz is new and the book is full.
    pub fn seen(&mut self, quiz: &str, k: usize, now: Instant) -> bool {
        if let Some(s) = self.quizzes.get_mut(quiz) {
            s.k = k;
            s.last_seen = now;
            return true;
        }
        if self.quizzes.len() >= self.cap {
            if self
                .swept
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
            {
                self.swept = Some(now);
                self.sweep(now);
            }
            if self.quizzes.len() >= self.cap {
                return false;
            }
        }
        self.quizzes.insert(
            quiz.to_string(),
            Seen {
                k,
                last_seen: now,
                tunnels: HashMap::new(),
            },
        );
        true
    }

    /// A tunnel of `quiz` opened on `node`; true if counted (the quiz is recorded), and then
    /// its close must be reported with [`Book::closed`].
    pub fn opened(&mut self, quiz: &str, node: &Arc<str>, now: Instant) -> bool {
        let Some(s) = self.quizzes.get_mut(quiz) else {
            return false;
        };
        *s.tunnels.entry(node.clone()).or_insert(0) += 1;
        s.last_seen = now;
        true
    }

    /// A counted tunnel of `quiz` on `node` closed.
    pub fn closed(&mut self, quiz: &str, node: &str, now: Instant) {
        let Some(s) = self.quizzes.get_mut(quiz) else {
            return;
        };
        if let Some(c) = s.tunnels.get_mut(node) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                s.tunnels.remove(node);
            }
        }
        s.last_seen = now;
    }

    /// Forget quizzes with no open tunnel not seen for the TTL; returns how many are left.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let ttl = self.ttl;
        self.quizzes.retain(|_, s| {
            !s.tunnels.is_empty() || now.saturating_duration_since(s.last_seen) < ttl
        });
        self.quizzes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(s: &str) -> Option<Claims> {
        read_token(s, "quiz1")
    }

    #[test]
    fn token_formats() {
        let p = |id: &str, spread| {
            Some(Claims {
                role: Role::Player,
                player_id: id.into(),
                spread,
            })
        };
        assert_eq!(tok("v1.p.quiz1.abc.MAC"), p("abc", None));
        assert_eq!(tok("v2.p.quiz1.abc.1700000000.MAC_-"), p("abc", None));
        assert_eq!(tok("v3.p.quiz1.abc.1700000000.3.MAC"), p("abc", Some(3)));
        assert_eq!(tok("v3.p.quiz1.abc.1.64.MAC"), p("abc", Some(64)));
        assert_eq!(tok("v3.p.quiz1.abc.1.01.MAC"), p("abc", Some(1)));
        assert_eq!(tok("v3.p.quiz1.abc.1.3.MAC").unwrap().k(), 3);
        assert_eq!(tok("v2.p.quiz1.abc.1.MAC").unwrap().k(), 1);
        let host = tok("v3.h.quiz1..1.5.MAC").unwrap();
        assert_eq!(host.role, Role::Host);
        assert!(!host.spreads(), "hosts go to the first node");
        assert!(tok("v3.p.quiz1.abc.1.5.MAC").unwrap().spreads());
        assert!(!tok("v3.p.quiz1.abc.1.1.MAC").unwrap().spreads());
    }

    #[test]
    fn unreadable_tokens_say_nothing() {
        for t in [
            "",
            ".",
            "v3",
            "v3.p.quiz1.abc.1.3",               // no mac
            "v3.p.quiz1.abc.1.3.MAC.x",         // one part too many
            "v3.p.quiz2.abc.1.3.MAC",           // another quiz
            "v3.p.quiz1.abc.1.0.MAC",           // spread 0
            "v3.p.quiz1.abc.1.65.MAC",          // above 64
            "v3.p.quiz1.abc.1.-3.MAC",          // sign
            "v3.p.quiz1.abc.1.+3.MAC",          // sign
            "v3.p.quiz1.abc.1.003.MAC",         // three digits
            "v3.p.quiz1.abc.1.x.MAC",           // not a number
            "v3.p.quiz1.abc.1..MAC",            // empty spread
            "v3.p.quiz1..1.3.MAC",              // player without id
            "v3.h.quiz1.abc.1.3.MAC",           // host with an id
            "v3.x.quiz1.abc.1.3.MAC",           // unknown role
            "v4.p.quiz1.abc.1.3.MAC",           // unknown version
            "v2.p.quiz1.abc.1.3.MAC",           // v2 with a v3 shape
            "v1.p.quiz1.abc.1.MAC",             // v1 with a v2 shape
            "v3.p.quiz1.abc.1.3.MAC.a.b.c.d.e", // many parts
        ] {
            assert_eq!(tok(t), None, "{t}");
        }
        let long = format!("v3.p.quiz1.{}.1.3.MAC", "a".repeat(300));
        assert_eq!(tok(&long), None);
    }

    #[test]
    fn tokens_in_request_targets() {
        let c = claims_of_target("/v1/quizzes/quiz1/ws?token=v3.p.quiz1.ab.1.4.M", "quiz1");
        assert_eq!(c.unwrap().k(), 4);
        let c = claims_of_target(
            "/v1/quizzes/quiz1/ws?x=1&token=v3.p.quiz1.ab.1.4.M&y",
            "quiz1",
        );
        assert_eq!(c.unwrap().player_id, "ab");
        // Percent-encoded dots decode; a bad escape or non-UTF-8 bytes read as no token.
        let c = claims_of_target("/v1/quizzes/quiz1/ws?token=v3%2Ep.quiz1.ab.1.4.M", "quiz1");
        assert_eq!(c.unwrap().k(), 4);
        for t in [
            "/v1/quizzes/quiz1/ws?token=v3.p.quiz1.ab.1.4.M%",
            "/v1/quizzes/quiz1/ws?token=v3.p.quiz1.ab.1.4.M%zz",
            "/v1/quizzes/quiz1/ws?token=v3.p.quiz1.ab.1.4.M%ff",
            "/v1/quizzes/quiz1/ws?tokens=v3.p.quiz1.ab.1.4.M",
            "/v1/quizzes/quiz1/ws",
            "/v1/quizzes/quiz1/ws?token",
            "/v1/quizzes/quiz1/ws#?token=v3.p.quiz1.ab.1.4.M",
        ] {
            assert_eq!(claims_of_target(t, "quiz1"), None, "{t}");
        }
    }

    /// A small deterministic generator (SplitMix64) for the property tests.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_input_never_panics() {
        let mut g = Gen(7);
        // Bytes biased toward the token's own alphabet, so many inputs get deep into the parser.
        let alphabet = b"v123p.h.quiz1%&=?#token0x9AFaf-_\xff\xc3";
        for i in 0..200_000 {
            let len = g.below(if i % 10 == 0 { 400 } else { 40 });
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    if g.below(4) == 0 {
                        g.next() as u8
                    } else {
                        alphabet[g.below(alphabet.len())]
                    }
                })
                .collect();
            let s = String::from_utf8_lossy(&bytes);
            let _ = read_token(&s, "quiz1");
            let _ = claims_of_target(&s, "quiz1");
            let _ = claims_of_target(&format!("/v1/quizzes/quiz1/ws?token={s}"), "quiz1");
            if let Some(c) = read_token(&s, "quiz1") {
                assert!((1..=MAX_SPREAD).contains(&c.k()), "{s}");
            }
        }
        // Every spread field from 0 to 999 and a few more: only 1..=64 is read.
        for k in 0..1000 {
            let c = tok(&format!("v3.p.quiz1.a.1.{k}.M"));
            assert_eq!(c.is_some(), (1..=64).contains(&k), "{k}");
        }
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("core-{i}")).collect()
    }

    #[test]
    fn choice_is_even_and_order_free() {
        let owned = names(3);
        let nodes: Vec<&str> = owned.iter().map(String::as_str).collect();
        let mut reversed = nodes.clone();
        reversed.reverse();
        let mut count: HashMap<String, usize> = HashMap::new();
        let mut g = Gen(42);
        for _ in 0..10_000 {
            let player = format!("{:012x}", g.next() & 0xffff_ffff_ffff);
            let c = choose(&nodes, &[], &player, |_| true).unwrap();
            assert_eq!(c.node, c.home);
            assert_eq!(c.fallback, None);
            // The same whatever order the spread is given in.
            assert_eq!(
                choose(&reversed, &[], &player, |_| true).unwrap().node,
                c.node
            );
            *count.entry(c.node).or_default() += 1;
        }
        assert_eq!(count.len(), 3);
        for (n, c) in &count {
            // 10 000 / 3 = 3 333; ±10 % is > 9 standard deviations.
            assert!((3000..=3667).contains(c), "{n}: {c} of 10 000");
        }
    }

    #[test]
    fn losing_a_node_moves_exactly_its_players() {
        let owned = names(5);
        let nodes: Vec<&str> = owned.iter().map(String::as_str).collect();
        let rest = ["core-9"];
        let players: Vec<String> = (0..10_000).map(|i| format!("player{i}")).collect();
        let before: Vec<Choice> = players
            .iter()
            .map(|p| choose(&nodes, &rest, p, |_| true).unwrap())
            .collect();
        let on2 = before.iter().filter(|c| c.node == "core-2").count();
        let mut moved = 0;
        for (p, b) in players.iter().zip(&before) {
            let c = choose(&nodes, &rest, p, |n| n != "core-2").unwrap();
            if b.node == "core-2" {
                moved += 1;
                // To the next of its own order, inside the spread.
                assert_eq!(c.node, rank(&nodes, p)[1]);
                assert_eq!(c.fallback, Some("spread"));
                assert_eq!(c.home, "core-2");
            } else {
                assert_eq!(c, *b, "{p} moved although its node stayed");
            }
        }
        assert_eq!(moved, on2);
        // The node's players spread over the others, not onto one of them.
        let mut to: HashMap<String, usize> = HashMap::new();
        for (p, b) in players.iter().zip(&before) {
            if b.node == "core-2" {
                let c = choose(&nodes, &rest, p, |n| n != "core-2").unwrap();
                *to.entry(c.node).or_default() += 1;
            }
        }
        assert_eq!(to.len(), 4, "{to:?}");
        // No node of the spread eligible: the next eligible node of the ring walk.
        let c = choose(&nodes, &rest, "p", |n| n == "core-9").unwrap();
        assert_eq!((c.node.as_str(), c.fallback), ("core-9", Some("ring")));
        assert_eq!(choose(&nodes, &rest, "p", |_| false), None);
        assert_eq!(choose(&[], &rest, "p", |_| true), None);
    }

    #[test]
    fn book_is_bounded_and_forgets() {
        let t0 = Instant::now();
        let mut b = Book::new(2, Duration::from_secs(600));
        assert!(b.seen("a", 3, t0));
        assert!(b.seen("b", 2, t0));
        assert!(!b.seen("c", 2, t0), "full: not recorded");
        assert!(b.seen("a", 4, t0), "a known quiz is updated when full");
        assert_eq!(b.get("a").unwrap().k, 4);
        let n1: Arc<str> = "core-1".into();
        assert!(b.opened("a", &n1, t0));
        assert!(!b.opened("c", &n1, t0));
        assert!(b.opened("a", &n1, t0));
        assert_eq!(b.get("a").unwrap().tunnels[&n1], 2);
        // Past the TTL: b goes (no tunnel), a stays (open tunnels), and c finds room.
        let later = t0 + Duration::from_secs(601);
        assert!(b.seen("c", 5, later));
        assert!(b.get("b").is_none());
        assert_eq!(b.len(), 2);
        b.closed("a", "core-1", later);
        b.closed("a", "core-1", later);
        b.closed("a", "core-1", later); // never below zero
        assert!(b.get("a").unwrap().tunnels.is_empty());
        assert_eq!(b.sweep(later + Duration::from_secs(601)), 0);
    }
}

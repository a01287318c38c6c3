//! Randomized tests of the two parsers of client data, the WebSocket message
//! parser (`protocol::parse_client`) and the frame reader
//! (`frame::read_frame`): the stable, bounded counterpart of the
//! cargo-fuzz targets in `core/fuzz`, so that every `cargo test` throws a few
//! hundred thousand random and mutated inputs at them.
//!
//! Deterministic: a fixed seed unless `QUIZ_RANDOM_SEED` is set; the amount
//! of work scales with `QUIZ_RANDOM_ITERS` (default 1, i.e. ~1–2 s in a debug
//! build). A failure names the seed and the iteration that found it, and the
//! input.

use futures::executor::block_on;
use quiz_core::frame::{read_frame, InFrame, Partial, ReadError};
use quiz_core::protocol::{parse_client, ClientMsg};
use quiz_core::rules::{check_nickname, is_invisible};

/// xorshift64*: small, fast, good enough to generate test inputs.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let n = self.below(max_len + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn seed() -> u64 {
    std::env::var("QUIZ_RANDOM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c0de_2026_1127)
}

fn scale() -> usize {
    std::env::var("QUIZ_RANDOM_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1usize)
        .max(1)
}

/// Well-formed and nearly well-formed messages: what mutation starts from.
const SEEDS: &[&str] = &[
    r#"{"type":"answer","question_id":0,"choices":[1]}"#,
    r#"{"type":"answer","question_id":4294967295,"choices":[0,1,2,3,4,5]}"#,
    r#"{"choices":[2,0],"question_id":7,"type":"answer","extra":{"a":[1,{"b":null}]}}"#,
    r#"{"type":"answer","question_id":1,"choices":[]}"#,
    r#"{"type":"ping"}"#,
    r#"{ "type" : "ping" , "x" : 1.5e300 }"#,
    r#"{"type":"answer\u0000","question_id":-1,"choices":[1.5]}"#,
    r#"{"type":"pong"}"#,
    r#"{"type":"ÄnswerÄnswerÄnswerÄnswerÄnswerÄnswerÄnswerÄnswer"}"#,
    r#"{"type":null}"#,
    r#"[{"type":"ping"}]"#,
    r#""answer""#,
    r#"{"type":"answer","question_id":"1","choices":"1"}"#,
    r#"{"type":"answer","type":"ping"}"#,
    "{\"type\":\"answer\",\"question_id\":3,\"choices\":[1]}\n",
];

/// Bytes that matter to a JSON parser.
const INTERESTING: &[u8] = b"{}[]\":,-+.0123456789eEtrufalsn \\\t\n\x00\x7f\xc3\xa9\xff\xfe";

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            // flip a bit
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            // replace a byte with an interesting one
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            // insert an interesting byte
            2 => {
                let i = rng.below(len + 1);
                input.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
            // delete a range
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(8));
                input.drain(i..i + n);
            }
            // duplicate a range (deep nesting, long arrays)
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                let piece: Vec<u8> = input[i..i + n].to_vec();
                for _ in 0..1 + rng.below(64) {
                    input.splice(i..i, piece.iter().copied());
                }
            }
            // truncate
            5 if len > 0 => input.truncate(rng.below(len)),
            // splice in a piece of another input
            6 if !other.is_empty() => {
                let i = rng.below(len + 1);
                let j = rng.below(other.len());
                let n = 1 + rng.below(other.len() - j);
                input.splice(i..i, other[j..j + n].iter().copied());
            }
            // a random number where a number may be
            _ => {
                let n = match rng.below(4) {
                    0 => (rng.next() as i64).to_string(),
                    1 => u32::MAX.to_string(),
                    2 => format!("{}", rng.below(10)),
                    _ => format!("{}e{}", rng.below(100), rng.below(400)),
                };
                let i = rng.below(len + 1);
                input.splice(i..i, n.bytes());
            }
        }
    }
    // Frames are at most 4 KiB: never test beyond what the reader admits.
    input.truncate(4096);
}

/// The checks of the `ws_message` fuzz target, plus: errors carry one of the
/// documented codes and a bounded message (it is echoed to the client).
fn check_message(input: &[u8], ctx: &str) {
    match parse_client(input) {
        Ok(ClientMsg::Answer {
            question_id,
            choices,
        }) => {
            let again =
                format!(r#"{{"type":"answer","question_id":{question_id},"choices":{choices:?}}}"#);
            assert_eq!(
                parse_client(again.as_bytes()),
                Ok(ClientMsg::Answer {
                    question_id,
                    choices: choices.clone()
                }),
                "{ctx}: re-encoded answer does not parse back: {again}"
            );
            let _ = quiz_core::rules::normalize_choices(&choices, 6);
            let _ = quiz_core::rules::score(1000, 5000, u64::from(question_id));
        }
        Ok(ClientMsg::Ping) => {}
        Err(e) => {
            assert!(
                matches!(e.code, "malformed" | "unknown_type"),
                "{ctx}: unexpected code {}",
                e.code
            );
            assert!(
                e.message.len() <= 256,
                "{ctx}: error message of {} bytes",
                e.message.len()
            );
        }
    }
}

#[test]
fn message_parser_survives_random_and_mutated_input() {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let iters = 60_000 * scale();
    let (mut ok, mut err) = (0usize, 0usize);
    for it in 0..iters {
        let input = match rng.below(10) {
            // pure noise
            0 => rng.bytes(256),
            // noise made of JSON-ish bytes
            1 => (0..rng.below(200))
                .map(|_| INTERESTING[rng.below(INTERESTING.len())])
                .collect(),
            // a seed as it is (valid ones must keep parsing)
            2 => SEEDS[rng.below(SEEDS.len())].as_bytes().to_vec(),
            // a mutated seed
            _ => {
                let mut v = SEEDS[rng.below(SEEDS.len())].as_bytes().to_vec();
                let other = SEEDS[rng.below(SEEDS.len())].as_bytes();
                mutate(&mut rng, &mut v, other);
                v
            }
        };
        let ctx = format!(
            "seed {seed} iteration {it} input {:?}",
            String::from_utf8_lossy(&input)
        );
        check_message(&input, &ctx);
        match parse_client(&input) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    // The mutations must keep a useful share of inputs valid, or the test
    // would only exercise the first byte of the parser.
    assert!(
        ok > iters / 100,
        "only {ok} of {iters} inputs parsed ({err} errors)"
    );
}

/// One masked client frame.
fn frame(rng: &mut Rng, fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    let n = payload.len();
    // Sometimes a non-minimal length encoding: legal for the reader.
    let wide = rng.chance(8);
    if n < 126 && !wide {
        out.push(0x80 | n as u8);
    } else if n <= 0xffff && !rng.chance(4) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    let mask = (rng.next() as u32).to_be_bytes();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

/// What the reader should return for a stream of well-formed messages.
#[derive(Debug, PartialEq)]
enum Expect {
    Text(Vec<u8>),
    Binary,
    Ping(Vec<u8>),
    Pong,
    Close,
    TooBig,
}

fn build_stream(rng: &mut Rng, max: usize) -> (Vec<u8>, Vec<Expect>) {
    let mut bytes = Vec::new();
    let mut expect = Vec::new();
    for _ in 0..1 + rng.below(6) {
        match rng.below(8) {
            0 => {
                let p = rng.bytes(125);
                bytes.extend(frame(rng, true, 0x9, &p));
                expect.push(Expect::Ping(p));
            }
            1 => {
                let p = rng.bytes(20);
                bytes.extend(frame(rng, true, 0xA, &p));
                expect.push(Expect::Pong);
            }
            2 => {
                let p = rng.bytes(300);
                bytes.extend(frame(rng, true, 0x2, &p));
                expect.push(if p.len() > max {
                    Expect::TooBig
                } else {
                    Expect::Binary
                });
            }
            _ => {
                // A text message, sometimes in fragments, with control frames
                // between the fragments: each is returned when read (so the
                // read loop answers and rate-limits it), the fragments join.
                let total = if rng.chance(10) {
                    max + 1 + rng.below(64)
                } else {
                    rng.below(max + 1)
                };
                let p: Vec<u8> = (0..total).map(|_| rng.next() as u8).collect();
                let parts = 1 + rng.below(4);
                let mut cuts: Vec<usize> = (0..parts - 1).map(|_| rng.below(total + 1)).collect();
                cuts.sort_unstable();
                cuts.push(total);
                let mut start = 0;
                for (k, &end) in cuts.iter().enumerate() {
                    let op = if k == 0 { 0x1 } else { 0x0 };
                    bytes.extend(frame(rng, k == parts - 1, op, &p[start..end]));
                    start = end;
                    if k < parts - 1 && rng.chance(3) {
                        let ping = rng.chance(2);
                        let c = rng.bytes(10);
                        bytes.extend(frame(rng, true, if ping { 0x9 } else { 0xA }, &c));
                        // Read only if the fragments so far fit the limit.
                        if end <= max {
                            expect.push(if ping { Expect::Ping(c) } else { Expect::Pong });
                        }
                    }
                }
                expect.push(if total > max {
                    Expect::TooBig
                } else {
                    Expect::Text(p)
                });
            }
        }
        if matches!(expect.last(), Some(Expect::TooBig)) {
            break; // the reader stops at the first oversize message
        }
    }
    if !matches!(expect.last(), Some(Expect::TooBig)) && rng.chance(4) {
        bytes.extend(frame(rng, true, 0x8, &[0x03, 0xe8]));
        expect.push(Expect::Close);
    }
    (bytes, expect)
}

/// Reads frames as the read loop does (until an error) and checks the limit.
fn read_all(input: &[u8], max: usize, ctx: &str) -> Vec<Result<InFrame, ReadError>> {
    let mut rd = input;
    let mut out = Vec::new();
    let mut partial = Partial::default();
    for _ in 0..64 {
        let r = block_on(read_frame(&mut rd, max, &mut partial));
        if let Ok(InFrame::Text(p)) = &r {
            assert!(p.len() <= max, "{ctx}: text of {} bytes > {max}", p.len());
        }
        if let Ok(InFrame::Ping(p)) = &r {
            assert!(p.len() <= 125, "{ctx}: ping of {} bytes", p.len());
        }
        let stop = r.is_err();
        out.push(r);
        if stop {
            break;
        }
    }
    out
}

#[test]
fn frame_reader_reads_random_valid_streams_exactly() {
    let seed = seed();
    let mut rng = Rng::new(seed ^ 0xf4a3e);
    let max = 4096;
    for it in 0..3_000 * scale() {
        let (bytes, expect) = build_stream(&mut rng, max);
        let ctx = format!("seed {seed} iteration {it}");
        let got = read_all(&bytes, max, &ctx);
        let got: Vec<Expect> = got
            .into_iter()
            .filter_map(|r| match r {
                Ok(InFrame::Text(p)) => Some(Expect::Text(p)),
                Ok(InFrame::Binary) => Some(Expect::Binary),
                Ok(InFrame::Ping(p)) => Some(Expect::Ping(p)),
                Ok(InFrame::Pong) => Some(Expect::Pong),
                Ok(InFrame::Close) => Some(Expect::Close),
                Err(ReadError::TooBig) => Some(Expect::TooBig),
                Err(ReadError::Closed) => None,
                Err(ReadError::Protocol(why)) => panic!("{ctx}: valid stream refused: {why}"),
            })
            .collect();
        assert_eq!(got, expect, "{ctx}");
    }
}

#[test]
fn frame_reader_survives_random_and_mutated_streams() {
    let seed = seed();
    let mut rng = Rng::new(seed ^ 0xb17f11b);
    for it in 0..8_000 * scale() {
        let max = [0, 1, 125, 126, 4096][rng.below(5)];
        let input = if rng.chance(4) {
            rng.bytes(600)
        } else {
            let (mut bytes, _) = build_stream(&mut rng, 4096);
            let other = rng.bytes(16);
            // Mutate the header bytes more often than the payload: that is
            // where the reader's decisions are.
            if !bytes.is_empty() && rng.chance(2) {
                let i = rng.below(bytes.len().min(14));
                bytes[i] = rng.next() as u8;
            }
            mutate(&mut rng, &mut bytes, &other);
            bytes
        };
        read_all(
            &input,
            max,
            &format!("seed {seed} iteration {it} max {max}"),
        );
    }
}

#[test]
fn huge_declared_lengths_are_refused_before_reading() {
    // A 64-bit length near u64::MAX must be TooBig, never an allocation.
    for len in [u64::MAX, 1 << 63, 4097, 1 << 32] {
        let mut f = vec![0x81, 0xff];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend_from_slice(&[1, 2, 3, 4]);
        let mut rd = &f[..];
        assert_eq!(
            block_on(read_frame(&mut rd, 4096, &mut Partial::default())).err(),
            Some(ReadError::TooBig)
        );
    }
    // Same for a continuation pushing a message over the limit.
    let mut rng = Rng::new(7);
    let mut f = frame(&mut rng, false, 0x1, &[b'a'; 4000]);
    f.extend(frame(&mut rng, true, 0x0, &[b'b'; 97]));
    let mut rd = &f[..];
    assert_eq!(
        block_on(read_frame(&mut rd, 4096, &mut Partial::default())).err(),
        Some(ReadError::TooBig)
    );
}

/// Characters a nickname is built from: visible ones, spaces, and what must
/// be refused (controls, bidi controls, zero-width and other invisible ones).
const NICK_CHARS: &[char] = &[
    'a',
    'Z',
    '0',
    ' ',
    'é',
    'ß',
    '東',
    '🦀',
    '\'',
    '-',
    '\u{7}',
    '\u{1b}',
    '\u{7f}',
    '\u{85}',
    '\u{00AD}',
    '\u{034F}',
    '\u{061C}',
    '\u{180E}',
    '\u{200B}',
    '\u{200C}',
    '\u{200D}',
    '\u{200E}',
    '\u{200F}',
    '\u{2028}',
    '\u{2029}',
    '\u{202A}',
    '\u{202B}',
    '\u{202C}',
    '\u{202D}',
    '\u{202E}',
    '\u{2060}',
    '\u{2066}',
    '\u{2067}',
    '\u{2068}',
    '\u{2069}',
    '\u{3164}',
    '\u{FE0F}',
    '\u{FEFF}',
    '\u{FFA0}',
    '\u{E0001}',
    '\u{E007F}',
];

/// Random nicknames: one is accepted exactly when, trimmed, it is 1–24
/// characters with no control and no invisible character; an accepted one
/// never carries a bidi control or a zero-width character.
#[test]
fn nickname_check_refuses_invisible_and_bidi_characters() {
    let seed = seed();
    let mut rng = Rng::new(seed ^ 0x2a7e);
    let mut accepted = 0;
    for it in 0..20_000 * scale() {
        let n = rng.below(30);
        let raw: String = (0..n)
            .map(|_| {
                if rng.chance(4) {
                    NICK_CHARS[10 + rng.below(NICK_CHARS.len() - 10)]
                } else {
                    NICK_CHARS[rng.below(10)]
                }
            })
            .collect();
        let trimmed = raw.trim();
        let want = !trimmed.is_empty()
            && trimmed.chars().count() <= 24
            && !trimmed.chars().any(|c| c.is_control() || is_invisible(c));
        let got = check_nickname(&raw);
        assert_eq!(
            got.is_ok(),
            want,
            "seed {seed} iteration {it}: {raw:?} → {got:?}"
        );
        if let Ok(nick) = got {
            accepted += 1;
            assert!(
                !nick.chars().any(|c| matches!(c,
                    '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')),
                "seed {seed} iteration {it}: {nick:?}"
            );
        }
    }
    assert!(
        accepted > 1000,
        "{accepted}: the generator must also build valid nicknames"
    );
}

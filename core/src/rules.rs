//! The rules of a quiz, pure: no I/O, no clock of their own (the time is an
//! argument), no state. Definition validation, ids, the live / self-paced
//! state machine ([`transition`]), answer windows and scoring. The service
//! (`service.rs`) applies them to what the store holds.

use rand::Rng;

use crate::error::QuizError;
use crate::model::{Layout, Millis, Mode, Phase, Question, QuizDef, QuizState};
use crate::protocol::CreateQuizReq;

/// `1–64` chars of `[A-Za-z0-9_-]`.
pub fn valid_quiz_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The characters of generated ids (random and derived alike).
pub(crate) const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// `n` random lowercase alphanumerics (quiz ids: 8; player ids: 12).
pub fn random_id(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())] as char)
        .collect()
}

/// An `Idempotency-Key` header value: 1–64 visible ASCII characters
/// (0x21–0x7E), returned as a `&str`.
pub fn check_idempotency_key(key: &[u8]) -> Result<&str, QuizError> {
    let visible = |b: &u8| (0x21..=0x7e).contains(b);
    if !(1..=64).contains(&key.len()) || !key.iter().all(visible) {
        return Err(QuizError::Invalid(
            "Idempotency-Key: must be 1–64 visible ASCII characters (0x21–0x7E)".into(),
        ));
    }
    // All ASCII, so valid UTF-8.
    std::str::from_utf8(key)
        .map_err(|_| QuizError::Invalid("Idempotency-Key: must be ASCII".into()))
}

pub fn nickname_taken(nickname: &str) -> QuizError {
    QuizError::Conflict(format!("nickname: {nickname:?} is taken in this quiz"))
}

/// The contract's scoring rule: `round(P × (1 − (t/T)/2))`, `t` = 0 when
/// ≤ 500 ms, clamped to `T`. Integer arithmetic, rounding half up.
pub fn score(points: u32, time_limit_ms: u64, response_ms: u64) -> u32 {
    if time_limit_ms == 0 {
        return points;
    }
    let t = if response_ms <= 500 {
        0
    } else {
        response_ms.min(time_limit_ms)
    } as u128;
    let (p, tl) = (u128::from(points), u128::from(time_limit_ms));
    // P·(2T − t) / (2T), rounded: (2·x + y) / (2·y) with x = P·(2T − t), y = 2T.
    let x = p * (2 * tl - t);
    let y = 2 * tl;
    ((2 * x + y) / (2 * y)) as u32
}

/// Sorted, deduplicated choices; `None` if empty or an index is out of range.
pub fn normalize_choices(choices: &[u32], option_count: usize) -> Option<Vec<u32>> {
    if choices.is_empty() || choices.iter().any(|&c| c as usize >= option_count) {
        return None;
    }
    let mut v = choices.to_vec();
    v.sort_unstable();
    v.dedup();
    Some(v)
}

/// How a quiz's `expected_players` hint becomes its [`Layout`] (the
/// config keys of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// Players one core node should serve of one quiz: the spread is
    /// `ceil(expected_players / players_per_node)`, at most `max_spread`.
    pub players_per_node: u64,
    /// Players per scoring shard: the shards are
    /// `ceil(expected_players / players_per_shard)`, at most `max_shards`.
    pub players_per_shard: u64,
    pub max_spread: u32,
    pub max_shards: u32,
}

/// The largest `expected_players` a create request may state.
pub const MAX_EXPECTED_PLAYERS: u64 = 10_000_000;

/// The layout of a quiz expecting `expected` players (none: one node, one
/// slot). Deterministic, so a replayed create gets the same layout.
pub fn layout_for(expected: Option<u64>, sizing: &Sizing) -> Layout {
    let Some(n) = expected else {
        return Layout::SINGLE;
    };
    let parts = |per: u64, max: u32| -> u32 {
        let want = n.div_ceil(per.max(1)).max(1);
        want.min(u64::from(max.max(1))) as u32
    };
    Layout {
        spread: parts(sizing.players_per_node, sizing.max_spread),
        shards: parts(sizing.players_per_shard, sizing.max_shards),
    }
}

/// Validates a create request into a definition (named-field errors).
pub fn validate_quiz(
    req: CreateQuizReq,
    quiz_id: String,
    now: Millis,
    sizing: &Sizing,
) -> Result<QuizDef, QuizError> {
    let inv = |m: String| Err(QuizError::Invalid(m));
    if let Some(n) = req.expected_players {
        if !(1..=MAX_EXPECTED_PLAYERS).contains(&n) {
            return inv(format!(
                "expected_players: must be 1–{MAX_EXPECTED_PLAYERS}"
            ));
        }
    }
    let layout = layout_for(req.expected_players, sizing);
    let title = req.title.trim().to_string();
    if title.is_empty() || title.chars().count() > 200 {
        return inv("title: must be 1–200 characters".into());
    }
    if req.questions.is_empty() || req.questions.len() > 200 {
        return inv("questions: must hold 1–200 questions".into());
    }
    let mut questions = Vec::with_capacity(req.questions.len());
    for (i, q) in req.questions.into_iter().enumerate() {
        let f = |field: &str| format!("questions[{i}].{field}");
        if q.text.trim().is_empty() || q.text.chars().count() > 1000 {
            return inv(format!("{}: must be 1–1000 characters", f("text")));
        }
        if !(2..=6).contains(&q.options.len()) {
            return inv(format!("{}: must hold 2–6 options", f("options")));
        }
        if let Some(j) = q
            .options
            .iter()
            .position(|o| o.trim().is_empty() || o.chars().count() > 200)
        {
            return inv(format!("{}[{j}]: must be 1–200 characters", f("options")));
        }
        let Some(correct) = normalize_choices(&q.correct, q.options.len()) else {
            return inv(format!(
                "{}: must hold 1 or more indices into options",
                f("correct")
            ));
        };
        if !(5000..=240_000).contains(&q.time_limit_ms) {
            return inv(format!("{}: must be 5000–240000", f("time_limit_ms")));
        }
        if ![0, 1000, 2000].contains(&q.points) {
            return inv(format!("{}: must be 0, 1000 or 2000", f("points")));
        }
        questions.push(Question {
            id: i as u32,
            index: i as u32,
            text: q.text,
            options: q.options,
            correct,
            time_limit_ms: q.time_limit_ms,
            points: q.points,
        });
    }
    Ok(QuizDef {
        quiz_id,
        title,
        mode: req.mode,
        questions,
        created_at_ms: now,
        layout,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAction {
    Start,
    Next,
    End,
}

/// The state machine. Live: `start` opens question 0, `next` opens the
/// following one (closing the open one), `end` ends (closing the open one
/// now). Self-paced: `start` lets players in (each gets questions one by
/// one), `next` is a conflict, `end` ends.
pub fn transition(
    def: &QuizDef,
    s: &QuizState,
    action: HostAction,
    now: Millis,
) -> Result<QuizState, QuizError> {
    let conflict = |m: &str| Err(QuizError::Conflict(m.to_string()));
    let mut next = s.clone();
    next.version = s.version + 1;
    let open = |next: &mut QuizState, q: u32| {
        next.current_question = Some(q);
        next.opens_at_ms = Some(now);
        next.closes_at_ms = Some(now + def.questions[q as usize].time_limit_ms);
    };
    match (action, s.phase, def.mode) {
        (HostAction::Start, Phase::Lobby, Mode::Live) => {
            next.phase = Phase::Running;
            open(&mut next, 0);
        }
        (HostAction::Start, Phase::Lobby, Mode::SelfPaced) => next.phase = Phase::Running,
        (HostAction::Start, _, _) => return conflict("state: the quiz has already started"),
        (HostAction::Next, Phase::Running, Mode::Live) => {
            let q = s.current_question.map_or(0, |q| q + 1);
            if q as usize >= def.questions.len() {
                return conflict("state: no more questions; end the quiz");
            }
            open(&mut next, q);
        }
        (HostAction::Next, _, Mode::SelfPaced) => {
            return conflict("mode: a self-paced quiz has no `next`")
        }
        (HostAction::Next, _, _) => return conflict("state: the quiz is not running"),
        (HostAction::End, Phase::Ended, _) => return conflict("state: the quiz has already ended"),
        (HostAction::End, _, _) => {
            next.phase = Phase::Ended;
            if let Some(c) = next.closes_at_ms {
                next.closes_at_ms = Some(c.min(now));
            }
        }
    }
    Ok(next)
}

/// When a question is open for answers, as far as one answer is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    NotOpen,
    /// `opens_at` is `None` when unknown (a live question no longer current).
    Open {
        opens_at: Option<Millis>,
        closes_at: Millis,
    },
}

/// Live mode: the window of `question_id` given the quiz state.
pub fn live_window(s: &QuizState, question_id: u32) -> Window {
    match (s.phase, s.current_question) {
        (Phase::Lobby, _) | (_, None) => Window::NotOpen,
        (_, Some(cur)) if question_id > cur => Window::NotOpen,
        (_, Some(cur)) if question_id < cur => Window::Open {
            opens_at: None,
            closes_at: 0,
        },
        // `end` already clamped `closes_at` to the end time.
        (_, Some(_)) => Window::Open {
            opens_at: s.opens_at_ms,
            closes_at: s.closes_at_ms.unwrap_or(0),
        },
    }
}

/// A nickname, trimmed: 1–24 characters, no control characters.
pub fn check_nickname(nickname: &str) -> Result<&str, QuizError> {
    let nickname = nickname.trim();
    if nickname.is_empty() || nickname.chars().count() > 24 {
        return Err(QuizError::Invalid(
            "nickname: must be 1–24 characters after trimming".into(),
        ));
    }
    if nickname.chars().any(char::is_control) {
        return Err(QuizError::Invalid(
            "nickname: must not contain control characters".into(),
        ));
    }
    if nickname.chars().any(is_invisible) {
        return Err(QuizError::Invalid(
            "nickname: must not contain invisible characters (zero-width, bidirectional \
             controls, joiners, fillers, variation selectors)"
                .into(),
        ));
    }
    Ok(nickname)
}

/// Characters that change how a nickname reads without being seen: bidi
/// overrides and isolates ("Trojan Source" text that renders reversed),
/// zero-width spaces and joiners ("Alice" and "Al\u{200B}ice" would
/// be two players who look the same), and the rest of Unicode's
/// Default_Ignorable_Code_Point set, plus the line and paragraph
/// separators.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// Self-paced: the window of a question first sent to the player at
/// `sent`. After `end`, it closes at the end at the latest.
pub fn self_paced_window(phase: Phase, sent: Millis, time_limit_ms: u64, now: Millis) -> Window {
    let closes = sent.saturating_add(time_limit_ms);
    Window::Open {
        opens_at: Some(sent),
        closes_at: if phase == Phase::Ended {
            closes.min(now)
        } else {
            closes
        },
    }
}

/// An answer judged against its window on the server clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Graded {
    pub correct: bool,
    /// Received at or after `closes_at`: recorded with 0 points.
    pub late: bool,
    pub points: u32,
    pub response_ms: u64,
}

/// Grades normalized `choices` to `question`, received at `now`, in the
/// window `(opens_at, closes_at)` (`opens_at` unknown: the whole time
/// limit counts as the response time).
pub fn grade(
    question: &Question,
    choices: &[u32],
    opens_at: Option<Millis>,
    closes_at: Millis,
    now: Millis,
) -> Graded {
    let late = now >= closes_at;
    let response_ms = match opens_at {
        Some(o) => now.saturating_sub(o),
        None => question.time_limit_ms,
    };
    let correct = choices == question.correct;
    let points = if correct && !late {
        score(question.points, question.time_limit_ms, response_ms)
    } else {
        0
    };
    Graded {
        correct,
        late,
        points,
        response_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QuestionReq;

    const SIZING: Sizing = Sizing {
        players_per_node: 5000,
        players_per_shard: 50_000,
        max_spread: 16,
        max_shards: 16,
    };

    fn def(mode: Mode) -> QuizDef {
        let q = |i| QuestionReq {
            text: format!("q{i}"),
            options: vec!["a".into(), "b".into(), "c".into()],
            correct: vec![1],
            time_limit_ms: 10_000,
            points: 1000,
        };
        validate_quiz(
            CreateQuizReq {
                title: "t".into(),
                mode,
                quiz_id: None,
                questions: vec![q(0), q(1)],
                expected_players: None,
            },
            "qz".into(),
            0,
            &SIZING,
        )
        .unwrap()
    }

    #[test]
    fn scoring_rule() {
        assert_eq!(score(1000, 10_000, 0), 1000);
        assert_eq!(score(1000, 10_000, 500), 1000);
        assert_eq!(score(1000, 10_000, 501), 975); // 1000·(1 − 0.02505) = 974.95
        assert_eq!(score(1000, 10_000, 5000), 750);
        assert_eq!(score(1000, 10_000, 10_000), 500);
        assert_eq!(score(1000, 10_000, 99_999), 500);
        assert_eq!(score(2000, 5000, 1000), 1800);
        assert_eq!(score(0, 5000, 1000), 0);
        // Half rounds up: 1000·(1 − 0.0501/2)... exact half at t = 5 ms of T = 1000 is 997.5
        assert_eq!(score(1000, 1000, 501), 750);
    }

    #[test]
    fn ids() {
        assert!(valid_quiz_id("a"));
        assert!(valid_quiz_id(&"x".repeat(64)));
        assert!(!valid_quiz_id(&"x".repeat(65)));
        assert!(!valid_quiz_id(""));
        assert!(!valid_quiz_id("a.b"));
        let id = random_id(8);
        assert_eq!(id.len(), 8);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    }

    /// The size hint: none or small is one node and one slot; the issue's
    /// demonstration (12 000 players, 5 000 per node) is three nodes; the
    /// caps hold; out of range is a 400 naming the field.
    #[test]
    fn layouts_from_size_hints() {
        let at = |n| layout_for(n, &SIZING);
        assert_eq!(at(None), Layout::SINGLE);
        assert_eq!(at(Some(1)), Layout::SINGLE);
        assert_eq!(at(Some(5000)), Layout::SINGLE);
        assert_eq!(at(Some(5001)).spread, 2);
        let l = at(Some(12_000));
        assert_eq!((l.spread, l.shards), (3, 1));
        let l = at(Some(1_000_000));
        assert_eq!((l.spread, l.shards), (16, 16));
        let l = at(Some(120_000));
        assert_eq!((l.spread, l.shards), (16, 3));
        for bad in [0, MAX_EXPECTED_PLAYERS + 1] {
            let req = CreateQuizReq {
                title: "t".into(),
                mode: Mode::Live,
                quiz_id: None,
                expected_players: Some(bad),
                questions: vec![QuestionReq {
                    text: "x".into(),
                    options: vec!["a".into(), "b".into()],
                    correct: vec![0],
                    time_limit_ms: 5000,
                    points: 1000,
                }],
            };
            let e = validate_quiz(req, "q".into(), 0, &SIZING).unwrap_err();
            assert!(e.to_string().contains("expected_players"), "{e}");
        }
    }

    #[test]
    fn validation_names_fields() {
        let mut req = CreateQuizReq {
            title: "t".into(),
            mode: Mode::Live,
            quiz_id: None,
            expected_players: None,
            questions: vec![QuestionReq {
                text: "x".into(),
                options: vec!["a".into()],
                correct: vec![0],
                time_limit_ms: 5000,
                points: 1000,
            }],
        };
        let e = validate_quiz(req, "q".into(), 0, &SIZING).unwrap_err();
        assert!(e.to_string().contains("questions[0].options"), "{e}");
        req = CreateQuizReq {
            title: "t".into(),
            mode: Mode::Live,
            quiz_id: None,
            expected_players: None,
            questions: vec![QuestionReq {
                text: "x".into(),
                options: vec!["a".into(), "b".into()],
                correct: vec![0],
                time_limit_ms: 4999,
                points: 1000,
            }],
        };
        let e = validate_quiz(req, "q".into(), 0, &SIZING).unwrap_err();
        assert!(e.to_string().contains("time_limit_ms"), "{e}");
    }

    #[test]
    fn live_state_machine() {
        let d = def(Mode::Live);
        let s0 = QuizState::new_lobby();
        assert!(transition(&d, &s0, HostAction::Next, 0).is_err());
        let s1 = transition(&d, &s0, HostAction::Start, 1000).unwrap();
        assert_eq!(s1.version, 2);
        assert_eq!(s1.current_question, Some(0));
        assert_eq!(s1.closes_at_ms, Some(11_000));
        assert!(transition(&d, &s1, HostAction::Start, 0).is_err());
        let s2 = transition(&d, &s1, HostAction::Next, 2000).unwrap();
        assert_eq!(s2.current_question, Some(1));
        assert!(matches!(
            transition(&d, &s2, HostAction::Next, 0),
            Err(QuizError::Conflict(_))
        ));
        let s3 = transition(&d, &s2, HostAction::End, 3000).unwrap();
        assert_eq!(s3.phase, Phase::Ended);
        assert_eq!(s3.closes_at_ms, Some(3000));
        assert!(transition(&d, &s3, HostAction::End, 0).is_err());
        // Windows.
        assert_eq!(live_window(&s0, 0), Window::NotOpen);
        assert_eq!(
            live_window(&s2, 1),
            Window::Open {
                opens_at: Some(2000),
                closes_at: 12_000
            }
        );
        assert!(matches!(
            live_window(&s2, 0),
            Window::Open { closes_at: 0, .. }
        ));
        assert_eq!(live_window(&s1, 1), Window::NotOpen);
    }

    #[test]
    fn self_paced_state_machine() {
        let d = def(Mode::SelfPaced);
        let s1 = transition(&d, &QuizState::new_lobby(), HostAction::Start, 5).unwrap();
        assert_eq!(s1.phase, Phase::Running);
        assert_eq!(s1.current_question, None);
        assert!(transition(&d, &s1, HostAction::Next, 5).is_err());
    }

    #[test]
    fn idempotency_keys() {
        for ok in [
            "a",
            "3f2b7c1e-0a4d-4e8b-9c6f-2d5e8a1b7c90",
            "!~",
            &"k".repeat(64),
        ] {
            assert_eq!(check_idempotency_key(ok.as_bytes()), Ok(ok), "{ok}");
        }
        for bad in [
            &b""[..],
            b"has space",
            b"tab\t",
            b"\x7f",
            "é".as_bytes(),
            &[b'k'; 65],
        ] {
            let e = check_idempotency_key(bad).unwrap_err();
            assert!(e.to_string().contains("Idempotency-Key"), "{e}");
        }
    }

    #[test]
    fn grading_on_the_server_clock() {
        let d = def(Mode::Live);
        let q = &d.questions[0];
        let g = grade(q, &[1], Some(1000), 11_000, 1400);
        assert_eq!(
            (g.correct, g.late, g.points, g.response_ms),
            (true, false, 1000, 400)
        );
        let g = grade(q, &[0], Some(1000), 11_000, 6000);
        assert_eq!((g.correct, g.late, g.points), (false, false, 0));
        let g = grade(q, &[1], Some(1000), 11_000, 11_000);
        assert_eq!((g.correct, g.late, g.points), (true, true, 0));
        // An earlier question: the whole time limit counts.
        assert_eq!(grade(q, &[1], None, 0, 5).response_ms, 10_000);
        assert_eq!(
            self_paced_window(Phase::Ended, 100, 1000, 600),
            Window::Open {
                opens_at: Some(100),
                closes_at: 600
            }
        );
        assert_eq!(
            self_paced_window(Phase::Running, 100, 1000, 600),
            Window::Open {
                opens_at: Some(100),
                closes_at: 1100
            }
        );
        assert_eq!(check_nickname("  ann "), Ok("ann"));
        assert!(check_nickname("   ").is_err());
        assert!(check_nickname("a\u{7}b").is_err());
        assert!(check_nickname(&"x".repeat(25)).is_err());
        // Bidi overrides and isolates, zero-width characters, fillers.
        for bad in [
            "evil\u{202E}gnp.exe",
            "\u{2066}admin\u{2069}",
            "Al\u{200B}ice",
            "Al\u{200D}ice",
            "\u{FEFF}bob",
            "\u{3164}",
            "a\u{2028}b",
            "x\u{E0041}",
        ] {
            let e = check_nickname(bad).unwrap_err();
            assert!(e.to_string().contains("invisible"), "{bad:?}: {e}");
        }
        // Letters, accents, CJK, emoji without a joiner stay welcome.
        for ok in ["Zoë", "東京", "Ana María", "🦀 crab", "O'Brien-Smith"] {
            assert_eq!(check_nickname(ok), Ok(ok));
        }
    }
}

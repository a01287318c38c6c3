//! Micro-benchmarks of core's hot functions, with throughput:
//! - `answer/parse_and_score`: parse an inbound answer frame, normalise the
//!   choices, check correctness and compute the points (per answer);
//! - `answer/result_frame`: build and encode the player's `answer_result`
//!   (per answer);
//! - `leaderboard/encode`: encode one leaderboard message (bytes/s);
//! - `fan_out/board`: hand one encoded frame to N connections' outboxes
//!   (elements = connections).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use quiz_core::protocol::{self, ClientMsg};
use quiz_core::room::fan_out_board_to;
use quiz_core::rules::{normalize_choices, score};
use std::hint::black_box;

fn answer(c: &mut Criterion) {
    let q = quiz_benches::question();
    let mut g = c.benchmark_group("answer");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_and_score", |b| {
        b.iter(|| {
            let Ok(ClientMsg::Answer { choices, .. }) =
                protocol::parse_client(black_box(quiz_benches::ANSWER_FRAME))
            else {
                unreachable!()
            };
            let choices = normalize_choices(&choices, q.options.len()).unwrap_or_default();
            let correct = choices == q.correct;
            black_box(if correct {
                score(q.points, q.time_limit_ms, black_box(2345))
            } else {
                0
            })
        })
    });
    g.bench_function("result_frame", |b| {
        b.iter(|| {
            let mut res = protocol::AnswerResult::new(black_box(3));
            res.accepted = true;
            res.correct = true;
            res.points = black_box(873);
            res.score = black_box(15_204);
            res.rank = black_box(117);
            black_box(protocol::encode(&res))
        })
    });
    g.finish();
}

fn leaderboard(c: &mut Criterion) {
    let mut g = c.benchmark_group("leaderboard");
    for n in [10usize, 100] {
        let lb = quiz_benches::leaderboard(n);
        let size = protocol::encode_leaderboard(&lb, 0).len() as u64;
        g.throughput(Throughput::Bytes(size));
        g.bench_with_input(BenchmarkId::new("encode", n), &lb, |b, lb| {
            b.iter(|| black_box(protocol::encode_leaderboard(black_box(lb), 0)))
        });
    }
    g.finish();
}

fn fan_out(c: &mut Criterion) {
    let frame: Bytes = protocol::encode_leaderboard(&quiz_benches::leaderboard(10), 0);
    let mut g = c.benchmark_group("fan_out");
    for n in [1_000usize, 10_000] {
        let outboxes = quiz_benches::outboxes(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("board", n), &outboxes, |b, o| {
            b.iter(|| black_box(fan_out_board_to(o.iter().map(|x| &**x), &frame)))
        });
    }
    g.finish();
}

criterion_group!(benches, answer, leaderboard, fan_out);
criterion_main!(benches);

//! Criterion micro-bench of the routing hot function: a sticky lookup and a fresh placement.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edge_lb::ring::{Placement, RingConfig, RingNode};

fn bench(c: &mut Criterion) {
    let cfg = RingConfig {
        nodes: (0..8)
            .map(|i| RingNode {
                name: format!("core-{i}").into(),
                weight: 1,
            })
            .collect(),
        vnodes: 160,
        balance_factor: 1.25,
    };
    let mut p = Placement::new(&cfg);
    let ids: Vec<String> = (0..10_000).map(|i| format!("quiz{i:05}")).collect();
    for q in &ids {
        p.route(q);
    }
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("route_sticky", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            p.route(&ids[i])
        })
    });
    g.bench_function("peek_fresh", |b| b.iter(|| p.peek("never-seen-quiz")));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Prometheus metrics (one registry per persister instance, so several can
//! run in one test process) and the readiness flags `/readyz` reports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

pub struct Inner {
    pub registry: Registry,
    /// Messages behind the high watermark, per partition (from librdkafka's
    /// statistics, refreshed every `kafka.statistics_interval_ms`).
    pub consumer_lag: IntGaugeVec,
    pub batch_size: Histogram,
    pub write_latency: Histogram,
    pub events_persisted: IntCounter,
    pub events_consumed: IntCounter,
    pub write_retries: IntCounter,
    pub dead_lettered: IntCounterVec,
    pub commits: IntCounter,
    pub commit_failures: IntCounter,
    pub rebalances: IntCounterVec,
    /// Times the consumer had forgotten every broker and was given
    /// `bootstrap.servers` again (see `pipeline::rebootstrap`).
    pub kafka_rebootstraps: IntCounter,
    pub assigned_partitions: IntGauge,
    pub ready: IntGauge,
    mongo_ok: AtomicBool,
    kafka_ok: AtomicBool,
}

fn must<T>(r: Result<T, prometheus::Error>) -> T {
    // Metric definitions are static; failing here is a programming error.
    r.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let consumer_lag = must(IntGaugeVec::new(
            Opts::new(
                "persister_consumer_lag",
                "Messages between the consumer position and the high watermark",
            ),
            &["topic", "partition"],
        ));
        let batch_size = must(Histogram::with_opts(
            HistogramOpts::new("persister_batch_size", "Events per written batch").buckets(vec![
                1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
            ]),
        ));
        let write_latency = must(Histogram::with_opts(
            HistogramOpts::new(
                "persister_write_latency_seconds",
                "Time to write one batch to MongoDB (successful attempt)",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 14).unwrap_or_default()),
        ));
        let events_persisted = must(IntCounter::new(
            "persister_events_persisted_total",
            "Events written to MongoDB and committed",
        ));
        let events_consumed = must(IntCounter::new(
            "persister_events_consumed_total",
            "Records read from the topic",
        ));
        let write_retries = must(IntCounter::new(
            "persister_write_retries_total",
            "Failed batch writes that were retried",
        ));
        let dead_lettered = must(IntCounterVec::new(
            Opts::new(
                "persister_dead_lettered_total",
                "Poison events sent to the dead-letter topic",
            ),
            &["reason"],
        ));
        let commits = must(IntCounter::new(
            "persister_commits_total",
            "Offset commits issued",
        ));
        let commit_failures = must(IntCounter::new(
            "persister_commit_failures_total",
            "Offset commits that failed (retried with the next batch)",
        ));
        let rebalances = must(IntCounterVec::new(
            Opts::new(
                "persister_rebalances_total",
                "Partition assignments and revocations",
            ),
            &["kind"],
        ));
        let kafka_rebootstraps = must(IntCounter::new(
            "persister_kafka_rebootstraps_total",
            "Times the Kafka consumer had no broker left and was given its bootstrap servers again",
        ));
        let assigned_partitions = must(IntGauge::new(
            "persister_assigned_partitions",
            "Partitions currently assigned to this instance",
        ));
        let ready = must(IntGauge::new(
            "persister_ready",
            "1 when MongoDB and Kafka are reachable",
        ));
        let build_info = must(IntGaugeVec::new(
            Opts::new(
                "persister_build_info",
                "1, labelled with the version, git commit and rustc of this build",
            ),
            &["version", "commit", "rustc"],
        ));
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                env!("QUIZ_BUILD_COMMIT"),
                env!("QUIZ_BUILD_RUSTC"),
            ])
            .set(1);
        for c in [
            Box::new(consumer_lag.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(batch_size.clone()),
            Box::new(write_latency.clone()),
            Box::new(events_persisted.clone()),
            Box::new(events_consumed.clone()),
            Box::new(write_retries.clone()),
            Box::new(dead_lettered.clone()),
            Box::new(commits.clone()),
            Box::new(commit_failures.clone()),
            Box::new(rebalances.clone()),
            Box::new(kafka_rebootstraps.clone()),
            Box::new(assigned_partitions.clone()),
            Box::new(ready.clone()),
            Box::new(build_info),
        ] {
            must(registry.register(c));
        }
        // The process's CPU, memory, open files against its limit, threads and start time
        // (`process_*`, read from /proc at each scrape; Linux only).
        #[cfg(target_os = "linux")]
        must(registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )));
        Metrics {
            inner: Arc::new(Inner {
                registry,
                consumer_lag,
                batch_size,
                write_latency,
                events_persisted,
                events_consumed,
                write_retries,
                dead_lettered,
                commits,
                commit_failures,
                rebalances,
                kafka_rebootstraps,
                assigned_partitions,
                ready,
                mongo_ok: AtomicBool::new(false),
                kafka_ok: AtomicBool::new(true),
            }),
        }
    }

    pub fn set_mongo_ok(&self, ok: bool) {
        self.inner.mongo_ok.store(ok, Ordering::Relaxed);
        self.refresh_ready();
    }

    pub fn set_kafka_ok(&self, ok: bool) {
        self.inner.kafka_ok.store(ok, Ordering::Relaxed);
        self.refresh_ready();
    }

    fn refresh_ready(&self) {
        self.inner.ready.set(i64::from(self.is_ready()));
    }

    /// Ready: MongoDB accepted the last write (or ping) and Kafka is not
    /// reported down.
    pub fn is_ready(&self) -> bool {
        self.inner.mongo_ok.load(Ordering::Relaxed) && self.inner.kafka_ok.load(Ordering::Relaxed)
    }

    pub fn dead_lettered_total(&self) -> u64 {
        [
            "unparsable",
            "unsupported_version",
            "unknown_type",
            "invalid",
            "rejected_by_mongodb",
        ]
        .iter()
        .map(|l| self.inner.dead_lettered.with_label_values(&[l]).get())
        .sum()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if encoder
            .encode(&self.inner.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl std::ops::Deref for Metrics {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

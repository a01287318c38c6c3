//! Measurements: HdrHistograms of latencies (microseconds) and counters.
//!
//! Every latency is taken from the *scheduled* time of the event, not from the
//! moment the tool got round to it (no coordinated omission):
//! - `join`: scheduled join time (ramp slot) -> HTTP 201 received;
//! - `connect`: join done -> `welcome` received;
//! - `reconnect`: connection lost (or storm instant) -> `welcome` again;
//! - `answer`: scheduled answer time (`opens_at_ms` + think time) -> `answer_result`;
//! - `question`: server `opens_at_ms` -> `question` frame received;
//! - `leaderboard`: server tick time in the frame (`ts_ms`) -> received when
//!   the server stamps its leaderboard frames; otherwise the fan-out delay:
//!   first receipt of that (quiz, version) in the worker -> this receipt, a
//!   lower bound of staleness (counter `leaderboard_unstamped`).
//!
//! Workers record into a [`Metrics`], and once a second ship the interval
//! (histograms V2-serialized, base64) to the coordinator, which merges the
//! intervals into totals and a per-second [`SeriesPoint`] time line.

use std::collections::BTreeMap;

use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::{Counter, Histogram};
use serde::{Deserialize, Serialize};

/// Histogram names, in report order.
pub const HISTS: [&str; 6] = [
    "join",
    "connect",
    "reconnect",
    "answer",
    "question",
    "leaderboard",
];

/// Lowest discernible 1 µs, highest 1 hour, 3 significant digits.
pub fn new_hist<C: Counter>() -> Histogram<C> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid")
}

/// Counters and histograms of one interval (or of a whole run).
///
/// The count type is `u64` wherever intervals are merged into totals; a
/// worker's interval of one second uses `u32` ([`IntervalMetrics`]): no
/// bucket gets near 2^32 records in a second, and its six histograms then
/// take ~0.56 MB rather than ~1.1 MB, a fixed part of every worker's
/// memory.
#[derive(Debug, Clone)]
pub struct Metrics<C: Counter = u64> {
    pub hists: Vec<Histogram<C>>,
    pub counters: BTreeMap<String, u64>,
}

/// One worker's metrics of the current interval (see [`Metrics`]).
pub type IntervalMetrics = Metrics<u32>;

impl<C: Counter> Default for Metrics<C> {
    fn default() -> Self {
        Metrics {
            hists: HISTS.iter().map(|_| new_hist()).collect(),
            counters: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum H {
    Join = 0,
    Connect = 1,
    Reconnect = 2,
    Answer = 3,
    Question = 4,
    Leaderboard = 5,
}

impl<C: Counter> Metrics<C> {
    /// Record a latency in microseconds (saturating at the histogram's top).
    pub fn record(&mut self, h: H, micros: u64) {
        let hist = &mut self.hists[h as usize];
        let v = micros.clamp(1, hist.high());
        let _ = hist.record(v);
    }

    pub fn count(&mut self, name: &str, n: u64) {
        if let Some(c) = self.counters.get_mut(name) {
            *c += n;
        } else {
            self.counters.insert(name.to_string(), n);
        }
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    pub fn hist(&self, h: H) -> &Histogram<C> {
        &self.hists[h as usize]
    }

    pub fn to_wire(&self) -> WireMetrics {
        let mut hists = BTreeMap::new();
        for (name, h) in HISTS.iter().zip(&self.hists) {
            if h.is_empty() {
                continue;
            }
            hists.insert(name.to_string(), encode_hist(h));
        }
        WireMetrics {
            hists,
            counters: self.counters.clone(),
        }
    }

    /// Reset for the next interval, keeping allocations.
    pub fn reset(&mut self) {
        for h in &mut self.hists {
            h.reset();
        }
        self.counters.clear();
    }
}

impl Metrics {
    pub fn merge(&mut self, other: &Metrics) {
        for (a, b) in self.hists.iter_mut().zip(&other.hists) {
            let _ = a.add(b);
        }
        for (k, v) in &other.counters {
            self.count(k, *v);
        }
    }

    pub fn from_wire(w: &WireMetrics) -> Result<Metrics, String> {
        let mut m = Metrics::default();
        for (name, b64) in &w.hists {
            let idx = HISTS
                .iter()
                .position(|n| n == name)
                .ok_or_else(|| format!("unknown histogram `{name}`"))?;
            m.hists[idx] = decode_hist(b64)?;
        }
        m.counters = w.counters.clone();
        Ok(m)
    }
}

/// Metrics as they travel between processes and into result files.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WireMetrics {
    /// name -> V2-serialized histogram, base64.
    #[serde(default)]
    pub hists: BTreeMap<String, String>,
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
}

pub fn encode_hist<C: Counter>(h: &Histogram<C>) -> String {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .expect("serializing into a Vec cannot fail");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

pub fn decode_hist(b64: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("histogram base64: {e}"))?;
    let mut h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| format!("histogram: {e:?}"))?;
    h.auto(true);
    let mut out = new_hist();
    out.add(&h).map_err(|e| format!("histogram: {e:?}"))?;
    Ok(out)
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

pub fn summarize(h: &Histogram<u64>) -> Summary {
    if h.is_empty() {
        return Summary::default();
    }
    let ms = |v: u64| v as f64 / 1000.0;
    Summary {
        count: h.len(),
        min_ms: ms(h.min()),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        mean_ms: h.mean() / 1000.0,
    }
}

/// One second of the run, all workers merged.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// Seconds since the run's t0.
    pub t: u64,
    /// Open WebSocket connections at the end of the second (all workers).
    pub connected: u64,
    pub frames: u64,
    pub answers: u64,
    pub acks: u64,
    pub errors: u64,
    /// p50/p99 of the histograms with samples in this second, ms.
    pub p50: BTreeMap<String, f64>,
    pub p99: BTreeMap<String, f64>,
}

/// Merges worker intervals into per-second buckets and run totals.
#[derive(Default)]
pub struct Aggregator {
    pub total: Metrics,
    buckets: BTreeMap<u64, Metrics>,
    /// Latest gauge per worker per bucket: (bucket, worker) -> connected.
    connected: BTreeMap<(u64, u64), u64>,
}

impl Aggregator {
    pub fn add_interval(&mut self, worker: u64, second: u64, connected: u64, m: &Metrics) {
        self.total.merge(m);
        self.buckets.entry(second).or_default().merge(m);
        self.connected.insert((second, worker), connected);
    }

    /// Connections now: the latest gauge of each worker.
    pub fn connected_now(&self) -> u64 {
        let mut latest: BTreeMap<u64, u64> = BTreeMap::new();
        for ((_, w), c) in &self.connected {
            latest.insert(*w, *c);
        }
        latest.values().sum()
    }

    /// The last `n` seconds merged (for the live display).
    pub fn recent(&self, n: usize) -> Option<Metrics> {
        if self.buckets.is_empty() {
            return None;
        }
        let mut m = Metrics::default();
        for (_, b) in self.buckets.iter().rev().take(n) {
            m.merge(b);
        }
        Some(m)
    }

    pub fn series(&self) -> Vec<SeriesPoint> {
        let Some(last) = self.buckets.keys().next_back().copied() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut last_conn: BTreeMap<u64, u64> = BTreeMap::new();
        let empty = Metrics::default();
        for t in 0..=last {
            for ((s, w), c) in self.connected.range((t, 0)..=(t, u64::MAX)) {
                debug_assert_eq!(*s, t);
                last_conn.insert(*w, *c);
            }
            let m = self.buckets.get(&t).unwrap_or(&empty);
            let mut p = SeriesPoint {
                t,
                connected: last_conn.values().sum(),
                frames: m.counter("frames_in"),
                answers: m.counter("answers_sent"),
                acks: m.counter("answer_results"),
                errors: m
                    .counters
                    .iter()
                    .filter(|(k, _)| k.starts_with("error."))
                    .map(|(_, v)| v)
                    .sum(),
                ..Default::default()
            };
            for (name, h) in HISTS.iter().zip(&m.hists) {
                if !h.is_empty() {
                    p.p50
                        .insert(name.to_string(), h.value_at_quantile(0.5) as f64 / 1000.0);
                    p.p99
                        .insert(name.to_string(), h.value_at_quantile(0.99) as f64 / 1000.0);
                }
            }
            out.push(p);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip_keeps_counts_and_percentiles() {
        // A worker's interval (32-bit counts) read back as the coordinator's.
        let mut m = IntervalMetrics::default();
        for v in 1..=1000u64 {
            m.record(H::Answer, v * 100);
        }
        m.count("frames_in", 7);
        let json = serde_json::to_string(&m.to_wire()).unwrap();
        let back = Metrics::from_wire(&serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(back.hist(H::Answer).len(), 1000);
        assert_eq!(
            back.hist(H::Answer).value_at_quantile(0.99),
            m.hist(H::Answer).value_at_quantile(0.99)
        );
        assert_eq!(back.counter("frames_in"), 7);
        assert!(back.hist(H::Join).is_empty());
    }

    #[test]
    fn aggregation_merges_workers_exactly() {
        // Two workers, disjoint value ranges: the merged p50 must sit at the
        // boundary and the count must be the sum -- percentiles are merged
        // from histograms, never averaged.
        let mut a = Metrics::default();
        let mut b = Metrics::default();
        for _ in 0..500 {
            a.record(H::Answer, 1_000);
            b.record(H::Answer, 100_000);
        }
        a.count("frames_in", 10);
        b.count("frames_in", 5);
        b.count("error.connect", 1);
        let mut agg = Aggregator::default();
        agg.add_interval(0, 0, 10, &a);
        agg.add_interval(1, 0, 20, &b);
        agg.add_interval(0, 2, 9, &Metrics::default());
        let h = agg.total.hist(H::Answer);
        assert_eq!(h.len(), 1000);
        assert!(h.value_at_quantile(0.25) < 1_100);
        assert!(h.value_at_quantile(0.99) >= 99_000);
        assert_eq!(agg.total.counter("frames_in"), 15);
        let s = agg.series();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].connected, 30);
        assert_eq!(s[0].frames, 15);
        assert_eq!(s[0].errors, 1);
        assert_eq!(s[1].connected, 30); // carried forward
        assert_eq!(s[2].connected, 29);
        assert_eq!(agg.connected_now(), 29);
        let sum = summarize(h);
        assert_eq!(sum.count, 1000);
        assert!(sum.p99_ms > 99.0 && sum.min_ms < 1.1);
    }

    #[test]
    fn out_of_range_values_saturate() {
        let mut m = IntervalMetrics::default();
        m.record(H::Join, 0);
        m.record(H::Join, u64::MAX);
        assert_eq!(m.hist(H::Join).len(), 2);
    }
}

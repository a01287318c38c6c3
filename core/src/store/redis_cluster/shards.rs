//! Scoring shards: where a player of a sharded quiz (`layout.shards = S >
//! 1`) keeps its score, its answers and its pending `answer_scored` events,
//! and which hash tag each shard's keys carry.
//!
//! - **Player → shard**: [`shard_of`] is FNV-1a (64 bit) of the player id's
//!   bytes, modulo S. Stable across processes, versions and platforms (it
//!   is part of the stored data's layout: never change it).
//! - **Shard → hash tag**: shard `s` of quiz `X` uses the tag `X:s<s>.<j>`
//!   with `j` the smallest number (0, 1, 2, …) whose CRC16 slot lies in the
//!   `s`-th of S equal parts of the 16384 slots (the parts split where
//!   `redis-cli --cluster create` splits a cluster of S masters). So the
//!   tags are a pure function of (X, s, S), no cluster query, and with S
//!   equal to the number of masters of an evenly laid out cluster each
//!   shard is on its own master; with more shards than masters they are
//!   spread evenly. After resharding the slots may share masters: still
//!   correct, only less spread. Quiz ids never hold `:` or `.`, so no tag
//!   of one quiz can be another quiz's main tag `X`.
//! - S = 1 is the main tag itself: the keys of every ordinary quiz are
//!   exactly what they were before shards existed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::model::QuizDef;

/// The slots of a Redis Cluster.
const SLOTS: u32 = 16384;

/// The shards of one quiz: the hash tag of each (index = shard), and the
/// quiz's question ids (a shard's distributions are named after them).
#[derive(Debug)]
pub(super) struct Shards {
    pub(super) tags: Vec<String>,
    pub(super) questions: Vec<u32>,
}

impl Shards {
    /// The one-slot layout of an ordinary quiz: the main tag.
    pub(super) fn single(quiz_id: &str) -> Shards {
        Shards {
            tags: vec![quiz_id.to_string()],
            questions: Vec::new(),
        }
    }

    pub(super) fn of(def: &QuizDef) -> Shards {
        let n = def.layout.shards;
        if n <= 1 {
            return Shards::single(&def.quiz_id);
        }
        Shards {
            tags: (0..n).map(|s| shard_tag(&def.quiz_id, s, n)).collect(),
            questions: def.questions.iter().map(|q| q.id).collect(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.tags.len()
    }

    pub(super) fn is_sharded(&self) -> bool {
        self.tags.len() > 1
    }

    /// The shard of a player.
    pub(super) fn index_of(&self, player_id: &str) -> usize {
        shard_of(player_id, self.tags.len() as u32) as usize
    }

    /// The hash tag of a player's shard.
    pub(super) fn tag_of(&self, player_id: &str) -> &str {
        &self.tags[self.index_of(player_id)]
    }
}

/// The shard (0..shards) of a player: FNV-1a 64 of the id's bytes, mod
/// `shards`. 0 when `shards` ≤ 1.
pub fn shard_of(player_id: &str, shards: u32) -> u32 {
    if shards <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in player_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(shards)) as u32
}

/// The hash tag of shard `shard` of `shards` of quiz `quiz_id` (see the
/// module doc): `<quiz_id>:s<shard>.<j>`, its slot in the shard's part of
/// the slot space. The quiz id itself when `shards` ≤ 1.
pub fn shard_tag(quiz_id: &str, shard: u32, shards: u32) -> String {
    if shards <= 1 {
        return quiz_id.to_string();
    }
    let (lo, hi) = (part_start(shard, shards), part_start(shard + 1, shards));
    // A part holds 16384 / S slots, so a try lands in it with probability
    // 1/S: S tries on average (S ≤ 1024). The bound is never reached in
    // practice; past it any tag is still correct, only not spread.
    for j in 0..(64 * SLOTS) {
        let tag = format!("{quiz_id}:s{shard}.{j}");
        let slot = key_slot(&tag);
        if (lo..hi).contains(&slot) {
            return tag;
        }
    }
    format!("{quiz_id}:s{shard}.0")
}

/// Where part `i` of `n` equal parts of the slot space starts:
/// round(i × 16384 / n), which is where `redis-cli --cluster create` starts
/// the `i`-th master's range (0–5460, 5461–10922, 10923–16383 for 3).
fn part_start(i: u32, n: u32) -> u32 {
    let n = u64::from(n.max(1));
    ((2 * u64::from(i) * u64::from(SLOTS) + n) / (2 * n)) as u32
}

/// The cluster slot of a hash tag's content (CRC16-XMODEM mod 16384, as
/// Redis computes it for `{content}`).
pub(super) fn key_slot(tag: &str) -> u32 {
    u32::from(crc16(tag.as_bytes())) % SLOTS
}

/// CRC16-XMODEM, Redis Cluster's key hash.
pub(super) fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The shards of the quizzes this store has met, learnt from their
/// (immutable) definitions. Bounded: cleared past `LAYOUTS_MAX` entries
/// (a miss costs one `GET` of the definition).
#[derive(Default)]
pub(super) struct LayoutCache {
    map: Mutex<HashMap<String, Arc<Shards>>>,
}

const LAYOUTS_MAX: usize = 10_000;

impl LayoutCache {
    pub(super) fn get(&self, quiz_id: &str) -> Option<Arc<Shards>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(quiz_id)
            .cloned()
    }

    pub(super) fn insert(&self, def: &QuizDef) -> Arc<Shards> {
        if let Some(s) = self.get(&def.quiz_id) {
            return s;
        }
        // Computed outside the lock (a few thousand CRC16s for many shards).
        let s = Arc::new(Shards::of(def));
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= LAYOUTS_MAX {
            map.clear();
        }
        map.insert(def.quiz_id.clone(), Arc::clone(&s));
        s
    }
}

/// Per quiz, the highest state version known to be on every shard's state
/// copy (set by `set_state` after its pushes and by a repair): a reader
/// meeting a newer main state checks the copies once per version.
#[derive(Default)]
pub(super) struct CopiesSeen {
    map: Mutex<HashMap<String, u64>>,
}

impl CopiesSeen {
    pub(super) fn covers(&self, quiz_id: &str, version: u64) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(quiz_id)
            .is_some_and(|v| *v >= version)
    }

    pub(super) fn record(&self, quiz_id: &str, version: u64) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= LAYOUTS_MAX && !map.contains_key(quiz_id) {
            map.clear();
        }
        let v = map.entry(quiz_id.to_string()).or_default();
        *v = (*v).max(version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_redis() {
        // CLUSTER KEYSLOT values from Redis.
        assert_eq!(key_slot("bench"), 2933);
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("123456789"), 12739);
    }

    #[test]
    fn tags_land_in_their_part_and_are_stable() {
        for s in 0..3 {
            let tag = shard_tag("quiz-1", s, 3);
            let slot = key_slot(&tag);
            let (lo, hi) = [(0, 5461), (5461, 10923), (10923, 16384)][s as usize];
            assert!((lo..hi).contains(&slot), "{tag} -> {slot}");
            assert_eq!(tag, shard_tag("quiz-1", s, 3));
        }
        assert_eq!(shard_tag("q", 0, 1), "q");
        let many: Vec<String> = (0..64).map(|s| shard_tag("big", s, 64)).collect();
        for (s, t) in many.iter().enumerate() {
            let slot = key_slot(t);
            assert!(slot >= part_start(s as u32, 64) && slot < part_start(s as u32 + 1, 64));
        }
    }

    #[test]
    fn players_spread_over_shards() {
        let mut counts = [0u32; 3];
        for p in 0..3000 {
            counts[shard_of(&format!("p{p}"), 3) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
        assert_eq!(shard_of("anything", 1), 0);
        // Pinned: the mapping is part of the stored layout.
        assert_eq!(
            ["p1", "p2", "pa", "pb"].map(|p| shard_of(p, 3)),
            [2, 1, 0, 2]
        );
    }
}

//! Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018), per quiz.
//!
//! Pure and deterministic: no clocks, no randomness, no I/O. Two processes that hold the
//! same [`RingConfig`] and see the same sequence of quiz activations compute the same
//! placement, whatever their addresses or start times, because every position on the ring is
//! derived from a fixed hash of the node *name* (never its address: a restarted node with a
//! new address keeps its quizzes).
//!
//! The unit of load is a quiz, never a connection: a quiz is placed once, when it becomes
//! active, and stays on its owner for as long as that owner is eligible (healthy and not
//! draining). So a popular quiz is never split on purpose; it can only move when its owner
//! is lost, drained, or when its preferred node comes back (see [`Placement::rebalance_toward`]).
//!
//! Placement of a new quiz `q` with `m` quizzes already active on eligible nodes of total
//! weight `W`: walk the ring clockwise from `hash(q)` and take the first eligible node `n` whose
//! load is below `cap(n) = ceil(c × (m + 1) × w(n) / W)`, where `c ≥ 1` is the balance factor.
//! Because the caps sum to at least `c × (m + 1) > m`, some node always has room.

use std::collections::HashMap;
use std::sync::Arc;

/// 64-bit FNV-1a followed by the SplitMix64 finaliser: stable across processes, platforms and
/// Rust releases (unlike `std`'s `DefaultHasher`), and well mixed for short keys.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One node as the ring sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingNode {
    pub name: Arc<str>,
    /// Relative weight, 1..=1000; the node gets `weight × vnodes` points on the ring.
    pub weight: u32,
}

/// What the ring is built from. Equal configs give equal rings.
#[derive(Clone, Debug)]
pub struct RingConfig {
    pub nodes: Vec<RingNode>,
    /// Points per unit of weight.
    pub vnodes: u32,
    /// The balance factor `c` (> 1.0; 1.25 means a node may own 25 % more quizzes than average).
    pub balance_factor: f64,
}

/// The immutable ring: sorted points, each naming a node index.
#[derive(Clone, Debug)]
pub struct Ring {
    nodes: Vec<RingNode>,
    points: Vec<(u64, u32)>,
}

impl Ring {
    pub fn new(nodes: &[RingNode], vnodes: u32) -> Ring {
        let mut points = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            for v in 0..(n.weight.max(1) * vnodes.max(1)) {
                let key = format!("{}#{}", n.name, v);
                points.push((hash64(key.as_bytes()), i as u32));
            }
        }
        // Ties (astronomically rare) are broken by node name so the order is still total.
        points.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| nodes[a.1 as usize].name.cmp(&nodes[b.1 as usize].name))
        });
        Ring {
            nodes: nodes.to_vec(),
            points,
        }
    }

    pub fn nodes(&self) -> &[RingNode] {
        &self.nodes
    }

    /// Distinct node indices in clockwise order from the key's position.
    pub fn walk(&self, key: &str) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.nodes.len());
        if self.points.is_empty() {
            return out;
        }
        let h = hash64(key.as_bytes());
        let start = self.points.partition_point(|p| p.0 < h);
        let mut seen = vec![false; self.nodes.len()];
        for k in 0..self.points.len() {
            let idx = self.points[(start + k) % self.points.len()].1 as usize;
            if !seen[idx] {
                seen[idx] = true;
                out.push(idx);
                if out.len() == self.nodes.len() {
                    break;
                }
            }
        }
        out
    }

    /// A quiz spread over `k` nodes (`crate::spread`): its first node `owner` (the placement) and
    /// the nodes of its ring walk, as node indices `(spread, rest)`: `spread` has `min(k, nodes)`
    /// nodes, the owner first; `rest` is the remainder of the walk, in walk order.
    ///
    /// The spread is the first `k` nodes of the walk whenever the owner is among them (the usual
    /// case: placed on its primary node, or by overflow within the first `k`), so the *set* does
    /// not depend on which of them the placement chose, nor on health: a node lost (or owning the
    /// quiz after its owner was lost) within the first `k` changes nothing for the others. Only an
    /// owner beyond the first `k` (heavy overflow) takes the place of the `k`-th node.
    pub fn spread(&self, quiz: &str, owner: &str, k: usize) -> (Vec<usize>, Vec<usize>) {
        let walk = self.walk(quiz);
        let k = k.clamp(1, walk.len().max(1));
        let Some(pos) = walk
            .iter()
            .position(|i| self.nodes[*i].name.as_ref() == owner)
        else {
            // Not a node of this ring: no spread to speak of.
            return (Vec::new(), walk);
        };
        let mut spread = Vec::with_capacity(k);
        spread.push(walk[pos]);
        let others = if pos < k { k } else { k - 1 };
        spread.extend(walk[..others].iter().filter(|i| **i != walk[pos]));
        let rest = walk
            .iter()
            .copied()
            .filter(|i| !spread.contains(i))
            .collect();
        (spread, rest)
    }
}

/// Why a quiz went where it went; the admin endpoint prints this.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// Already active and its owner is still eligible.
    Sticky,
    /// First eligible node on its ring walk, under its cap.
    Primary,
    /// Earlier nodes of the walk were skipped: listed with why.
    Overflow { skipped: Vec<Skipped> },
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    pub node: String,
    pub why: String,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    #[serde(serialize_with = "ser_arc_str")]
    pub node: Arc<str>,
    pub reason: Reason,
    /// The node's cap at decision time (quizzes).
    pub cap: usize,
    /// Load of the chosen node (active quizzes), including this quiz when it was placed.
    pub load: usize,
}

fn ser_arc_str<S: serde::Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

/// The mutable placement: ring + eligibility + which active quiz lives where.
#[derive(Debug)]
pub struct Placement {
    ring: Ring,
    balance_factor: f64,
    /// Per node name: may it receive quizzes (healthy, held down long enough, not draining)?
    eligible: HashMap<Arc<str>, bool>,
    owners: HashMap<String, Arc<str>>,
    load: HashMap<Arc<str>, usize>,
}

impl Placement {
    pub fn new(cfg: &RingConfig) -> Placement {
        let ring = Ring::new(&cfg.nodes, cfg.vnodes);
        let eligible = cfg.nodes.iter().map(|n| (n.name.clone(), true)).collect();
        let load = cfg.nodes.iter().map(|n| (n.name.clone(), 0)).collect();
        Placement {
            ring,
            balance_factor: cfg.balance_factor,
            eligible,
            owners: HashMap::new(),
            load,
        }
    }

    /// Rebuild the ring from a new config (reload). Active quizzes whose owner still exists
    /// keep it; quizzes of removed nodes are released and placed again on their next request.
    pub fn reconfigure(&mut self, cfg: &RingConfig) {
        let ring = Ring::new(&cfg.nodes, cfg.vnodes);
        let mut eligible = HashMap::new();
        let mut load = HashMap::new();
        for n in &cfg.nodes {
            eligible.insert(n.name.clone(), *self.eligible.get(&n.name).unwrap_or(&true));
            load.insert(n.name.clone(), 0);
        }
        self.owners.retain(|_, owner| load.contains_key(owner));
        for owner in self.owners.values_mut() {
            // Re-point at the new Arc so names compare by pointer-free equality anyway.
            if let Some((k, v)) = load.get_key_value(owner) {
                *owner = k.clone();
                let _ = v;
            }
        }
        for owner in self.owners.values() {
            *load.get_mut(owner).expect("retained above") += 1;
        }
        self.ring = ring;
        self.balance_factor = cfg.balance_factor;
        self.eligible = eligible;
        self.load = load;
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    pub fn balance_factor(&self) -> f64 {
        self.balance_factor
    }

    pub fn set_eligible(&mut self, node: &str, eligible: bool) {
        if let Some(e) = self.eligible.get_mut(node) {
            *e = eligible;
        }
    }

    pub fn is_eligible(&self, node: &str) -> bool {
        self.eligible.get(node).copied().unwrap_or(false)
    }

    pub fn owner(&self, quiz: &str) -> Option<&Arc<str>> {
        self.owners.get(quiz)
    }

    pub fn load(&self, node: &str) -> usize {
        self.load.get(node).copied().unwrap_or(0)
    }

    pub fn active_quizzes(&self) -> usize {
        self.owners.len()
    }

    /// Active quizzes owned by `node`, sorted (deterministic order for gradual moves).
    pub fn quizzes_of(&self, node: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .owners
            .iter()
            .filter(|(_, o)| o.as_ref() == node)
            .map(|(q, _)| q.clone())
            .collect();
        v.sort();
        v
    }

    /// Quizzes counted on eligible nodes (the `m` of the cap formula).
    /// O(nodes): the sum of the loads of eligible nodes.
    fn eligible_active(&self) -> usize {
        self.load
            .iter()
            .filter(|(n, _)| self.is_eligible(n))
            .map(|(_, l)| *l)
            .sum()
    }

    fn eligible_weight(&self) -> u64 {
        self.ring
            .nodes()
            .iter()
            .filter(|n| self.is_eligible(&n.name))
            .map(|n| u64::from(n.weight.max(1)))
            .sum()
    }

    /// `ceil(c × (m + 1) × w / W)`, at least 1.
    pub fn cap(&self, node: &RingNode, m: usize) -> usize {
        let w_total = self.eligible_weight().max(1) as f64;
        let avg = (m as f64 + 1.0) * f64::from(node.weight.max(1)) / w_total;
        ((self.balance_factor * avg).ceil() as usize).max(1)
    }

    /// Where would `quiz` be placed now if it were not active? Does not mutate.
    /// `exclude_self` discounts the quiz's own current slot (used for rebalancing).
    fn fresh(&self, quiz: &str, exclude_self: Option<&str>) -> Option<Decision> {
        let mut m = self.eligible_active();
        if exclude_self.is_some_and(|o| self.is_eligible(o)) {
            m -= 1;
        }
        let mut skipped = Vec::new();
        for idx in self.ring.walk(quiz) {
            let node = &self.ring.nodes()[idx];
            if !self.is_eligible(&node.name) {
                skipped.push(Skipped {
                    node: node.name.to_string(),
                    why: "not eligible (down, held down, or draining)".into(),
                });
                continue;
            }
            let mut load = self.load(&node.name);
            if exclude_self == Some(node.name.as_ref()) {
                load -= 1;
            }
            let cap = self.cap(node, m);
            if load < cap {
                let reason = if skipped.is_empty() {
                    Reason::Primary
                } else {
                    Reason::Overflow { skipped }
                };
                return Some(Decision {
                    node: node.name.clone(),
                    reason,
                    cap,
                    load: load + 1,
                });
            }
            skipped.push(Skipped {
                node: node.name.to_string(),
                why: format!("at cap: {load} of {cap} active quizzes"),
            });
        }
        None
    }

    /// Route a quiz, placing it if it is not active or its owner is no longer eligible.
    /// `None` when no node is eligible.
    pub fn route(&mut self, quiz: &str) -> Option<Decision> {
        if let Some(owner) = self.owners.get(quiz) {
            if self.is_eligible(owner) {
                let node = self.ring.nodes().iter().find(|n| &n.name == owner)?;
                let m = self.eligible_active().saturating_sub(1);
                return Some(Decision {
                    node: owner.clone(),
                    reason: Reason::Sticky,
                    cap: self.cap(node, m),
                    load: self.load(owner),
                });
            }
            self.release(quiz);
        }
        let d = self.fresh(quiz, None)?;
        self.owners.insert(quiz.to_string(), d.node.clone());
        *self.load.entry(d.node.clone()).or_insert(0) += 1;
        Some(d)
    }

    /// What [`Self::route`] would answer, without placing anything.
    pub fn peek(&self, quiz: &str) -> Option<Decision> {
        if let Some(owner) = self.owners.get(quiz) {
            if self.is_eligible(owner) {
                let node = self.ring.nodes().iter().find(|n| &n.name == owner)?;
                return Some(Decision {
                    node: owner.clone(),
                    reason: Reason::Sticky,
                    cap: self.cap(node, self.eligible_active().saturating_sub(1)),
                    load: self.load(owner),
                });
            }
        }
        self.fresh(quiz, None)
    }

    /// The quiz is no longer active: free its slot.
    pub fn release(&mut self, quiz: &str) {
        if let Some(owner) = self.owners.remove(quiz) {
            if let Some(l) = self.load.get_mut(&owner) {
                *l = l.saturating_sub(1);
            }
        }
    }

    /// `node` has (re)become eligible: move back the quizzes it would now be given, i.e. those
    /// whose fresh placement is `node`. Deterministic (sorted by quiz id). Returns
    /// `(quiz, previous owner)` for each moved quiz, so the caller can close their tunnels.
    pub fn rebalance_toward(&mut self, node: &str) -> Vec<(String, Arc<str>)> {
        let mut quizzes: Vec<String> = self
            .owners
            .iter()
            .filter(|(_, o)| o.as_ref() != node)
            .map(|(q, _)| q.clone())
            .collect();
        quizzes.sort();
        let mut moved = Vec::new();
        for q in quizzes {
            let Some(from) = self.owners.get(&q).cloned() else {
                continue;
            };
            if let Some(d) = self.fresh(&q, Some(&from)) {
                if d.node.as_ref() == node {
                    self.release(&q);
                    self.owners.insert(q.clone(), d.node.clone());
                    *self.load.entry(d.node.clone()).or_insert(0) += 1;
                    moved.push((q, from));
                }
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(n: usize, c: f64) -> RingConfig {
        RingConfig {
            nodes: (0..n)
                .map(|i| RingNode {
                    name: format!("core-{i}").into(),
                    weight: 1,
                })
                .collect(),
            vnodes: 160,
            balance_factor: c,
        }
    }

    #[test]
    fn hash_is_stable() {
        // Pinned values: changing the hash would move every quiz of a running fleet, and
        // processes of different versions would disagree.
        assert_eq!(hash64(b"quiz-1"), 0x1734_805f_4dc2_4189);
        assert_eq!(hash64(b""), 0xc381_7c01_6ba4_ff30);
        assert_eq!(hash64(b"core-0#0"), 0x5c0f_03ed_f891_b1a0);
    }

    #[test]
    fn same_config_same_routes_across_instances() {
        let mut a = Placement::new(&cfg(5, 1.25));
        let mut b = Placement::new(&cfg(5, 1.25));
        for i in 0..5000 {
            let q = format!("q{i}");
            assert_eq!(a.route(&q), b.route(&q));
        }
    }

    #[test]
    fn keyed_by_name_not_order() {
        let mut c1 = cfg(4, 1.25);
        let a = Placement::new(&c1);
        c1.nodes.reverse();
        let b = Placement::new(&c1);
        for i in 0..2000 {
            let q = format!("quiz{i}");
            assert_eq!(a.peek(&q).unwrap().node, b.peek(&q).unwrap().node);
        }
    }

    #[test]
    fn sticky_while_eligible() {
        let mut p = Placement::new(&cfg(3, 1.25));
        let first = p.route("abc").unwrap();
        for _ in 0..10 {
            let d = p.route("abc").unwrap();
            assert_eq!(d.node, first.node);
            assert_eq!(d.reason, Reason::Sticky);
        }
        assert_eq!(p.active_quizzes(), 1);
    }

    #[test]
    fn bounded_load_holds_under_skew() {
        // Adversarial skew: only quiz ids whose unbounded owner is core-0.
        let c = 1.25;
        let mut p = Placement::new(&cfg(5, c));
        let plain = Placement::new(&cfg(5, 100.0));
        let skewed: Vec<String> = (0..200_000)
            .map(|i| format!("s{i}"))
            .filter(|q| plain.peek(q).unwrap().node.as_ref() == "core-0")
            .take(5000)
            .collect();
        for (k, q) in skewed.iter().enumerate() {
            p.route(q).unwrap();
            let m = k + 1;
            let bound = (c * m as f64 / 5.0).ceil() as usize;
            for i in 0..5 {
                assert!(p.load(&format!("core-{i}")) <= bound.max(1), "m={m}");
            }
        }
    }

    #[test]
    fn node_loss_moves_only_its_quizzes() {
        let mut p = Placement::new(&cfg(5, 1.25));
        let qs: Vec<String> = (0..3000).map(|i| format!("q{i}")).collect();
        let before: Vec<_> = qs.iter().map(|q| p.route(q).unwrap().node).collect();
        p.set_eligible("core-2", false);
        for (q, b) in qs.iter().zip(&before) {
            let d = p.route(q).unwrap();
            if b.as_ref() != "core-2" {
                assert_eq!(&d.node, b, "{q} moved although its node stayed");
            } else {
                assert_ne!(d.node.as_ref(), "core-2");
            }
        }
    }

    #[test]
    fn returning_node_gets_its_quizzes_back() {
        let mut p = Placement::new(&cfg(4, 1.25));
        let qs: Vec<String> = (0..1000).map(|i| format!("q{i}")).collect();
        let before: Vec<_> = qs.iter().map(|q| p.route(q).unwrap().node).collect();
        p.set_eligible("core-1", false);
        for q in &qs {
            p.route(q);
        }
        p.set_eligible("core-1", true);
        let moved = p.rebalance_toward("core-1");
        assert!(!moved.is_empty());
        let back = qs
            .iter()
            .zip(&before)
            .filter(|(q, b)| b.as_ref() == "core-1" && p.owner(q).unwrap().as_ref() == "core-1")
            .count();
        let orig = before.iter().filter(|b| b.as_ref() == "core-1").count();
        assert!(back * 10 >= orig * 9, "{back} of {orig} returned");
        // Nobody else moved onto a node other than core-1.
        for (q, from) in &moved {
            assert_ne!(from.as_ref(), "core-1");
            assert_eq!(p.owner(q).unwrap().as_ref(), "core-1");
        }
    }

    #[test]
    fn no_eligible_node_gives_none() {
        let mut p = Placement::new(&cfg(2, 1.25));
        p.set_eligible("core-0", false);
        p.set_eligible("core-1", false);
        assert!(p.route("x").is_none());
    }

    #[test]
    fn weights_are_respected() {
        let mut c = cfg(2, 1.1);
        c.nodes[0].weight = 3;
        let mut p = Placement::new(&c);
        for i in 0..4000 {
            p.route(&format!("w{i}"));
        }
        let l0 = p.load("core-0") as f64;
        let l1 = p.load("core-1") as f64;
        assert!(l0 / (l0 + l1) > 0.65, "{l0} {l1}");
    }

    #[test]
    fn spread_is_the_first_k_of_the_walk_whoever_of_them_owns() {
        let p = Placement::new(&cfg(6, 1.25));
        let r = p.ring();
        let name = |i: usize| r.nodes()[i].name.to_string();
        for q in ["q1", "q2", "q3"] {
            let walk = r.walk(q);
            let first3: Vec<String> = walk[..3].iter().map(|i| name(*i)).collect();
            let set = |owner: usize| {
                let (s, rest) = r.spread(q, &name(owner), 3);
                assert_eq!(s[0], owner, "the owner comes first");
                assert_eq!(s.len() + rest.len(), 6);
                let mut v: Vec<String> = s.iter().map(|i| name(*i)).collect();
                v.sort();
                v
            };
            let mut want = first3.clone();
            want.sort();
            for owner in &walk[..3] {
                assert_eq!(set(*owner), want, "{q}");
            }
            // An owner beyond the first k takes the k-th node's place.
            let mut far = vec![name(walk[4]), first3[0].clone(), first3[1].clone()];
            far.sort();
            assert_eq!(set(walk[4]), far);
            // Capped by the ring's size; k = 1 is the owner alone.
            assert_eq!(r.spread(q, &name(walk[0]), 64).0.len(), 6);
            assert_eq!(r.spread(q, &name(walk[2]), 1).0, vec![walk[2]]);
            assert_eq!(r.spread(q, "nope", 3).0, Vec::<usize>::new());
        }
    }

    #[test]
    fn reconfigure_keeps_owners_of_remaining_nodes() {
        let mut p = Placement::new(&cfg(3, 1.25));
        let qs: Vec<String> = (0..300).map(|i| format!("q{i}")).collect();
        let before: Vec<_> = qs.iter().map(|q| p.route(q).unwrap().node).collect();
        let mut c = cfg(4, 1.25);
        c.nodes.remove(1); // core-1 removed, core-3 added
        p.reconfigure(&c);
        for (q, b) in qs.iter().zip(&before) {
            if b.as_ref() != "core-1" {
                assert_eq!(p.route(q).unwrap().node, *b);
            }
        }
    }
}

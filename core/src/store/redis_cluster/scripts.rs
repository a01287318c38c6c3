//! The store's Lua scripts, one `.lua` file each under `lua/` (each file's
//! header says what it does, its KEYS, ARGV and reply), loaded at compile
//! time and hashed once per process.

/// A Lua script with its SHA1, sent as EVALSHA and re-sent as EVAL when the
/// node answers NOSCRIPT (a freshly promoted replica, a restarted node).
pub(super) struct Lua {
    pub(super) body: &'static str,
    pub(super) sha: String,
}

impl Lua {
    fn new(body: &'static str) -> Lua {
        Lua {
            body,
            sha: redis::Script::new(body).get_hash().to_string(),
        }
    }
}

/// `apply_batch`'s KEYS before the distributions' (see
/// `lua/apply_batch.lua`), as suffixes of the slot's keys: the batcher and
/// the lane write the same call.
pub(super) const APPLY_BATCH_KEYS: [&str; 6] = [
    "players",
    "answers",
    "leaderboard",
    "lbver",
    "state",
    "pending_answers",
];

/// Every script of the store.
pub(super) struct Scripts {
    /// `lua/apply_batch.lua`: a batch of answers to one quiz (the hot path).
    pub(super) apply: Lua,
    /// `lua/create_quiz.lua`.
    pub(super) create: Lua,
    /// `lua/set_state.lua`: compare-and-set on the state's version.
    pub(super) set_state: Lua,
    /// `lua/add_player.lua`.
    pub(super) add_player: Lua,
    /// `lua/leaderboard.lua`.
    pub(super) leaderboard: Lua,
    /// `lua/standing.lua`.
    pub(super) standing: Lua,
    /// `lua/distribution.lua`.
    pub(super) distribution: Lua,
    /// `lua/sent_at.lua`: self-paced send time, set once.
    pub(super) sent_at: Lua,
    /// `lua/present_batch.lua`: self-paced presentations, batched like answers.
    pub(super) present: Lua,
    /// `lua/pending_read.lua`: the pending events, for the repair sweep.
    pub(super) pending_read: Lua,
    /// `lua/pending_clear.lua`: removes acknowledged pending events.
    pub(super) pending_clear: Lua,
    /// `lua/join_main.lua`: a sharded quiz's join, main-slot step.
    pub(super) join_main: Lua,
    /// `lua/join_shard.lua`: a sharded quiz's join, shard step (idempotent).
    pub(super) join_shard: Lua,
    /// `lua/state_copy.lua`: a shard's state copy, set if newer.
    pub(super) state_copy: Lua,
    /// `lua/shard_top.lua`: one shard's share of the leaderboard.
    pub(super) shard_top: Lua,
    /// `lua/count_higher.lua`: players of a shard above given scores.
    pub(super) count_higher: Lua,
    /// `lua/names.lua`: players' JSON from the main slot.
    pub(super) names: Lua,
}

/// The scripts, hashed on first use and shared by every store of the process.
pub(super) fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        apply: Lua::new(include_str!("lua/apply_batch.lua")),
        create: Lua::new(include_str!("lua/create_quiz.lua")),
        set_state: Lua::new(include_str!("lua/set_state.lua")),
        add_player: Lua::new(include_str!("lua/add_player.lua")),
        leaderboard: Lua::new(include_str!("lua/leaderboard.lua")),
        standing: Lua::new(include_str!("lua/standing.lua")),
        distribution: Lua::new(include_str!("lua/distribution.lua")),
        sent_at: Lua::new(include_str!("lua/sent_at.lua")),
        present: Lua::new(include_str!("lua/present_batch.lua")),
        pending_read: Lua::new(include_str!("lua/pending_read.lua")),
        pending_clear: Lua::new(include_str!("lua/pending_clear.lua")),
        join_main: Lua::new(include_str!("lua/join_main.lua")),
        join_shard: Lua::new(include_str!("lua/join_shard.lua")),
        state_copy: Lua::new(include_str!("lua/state_copy.lua")),
        shard_top: Lua::new(include_str!("lua/shard_top.lua")),
        count_higher: Lua::new(include_str!("lua/count_higher.lua")),
        names: Lua::new(include_str!("lua/names.lua")),
    })
}

#[cfg(test)]
mod tests {
    use super::scripts;

    #[test]
    fn every_script_opens_with_its_contract() {
        let s = scripts();
        for lua in [
            &s.apply,
            &s.create,
            &s.set_state,
            &s.add_player,
            &s.leaderboard,
            &s.standing,
            &s.distribution,
            &s.sent_at,
            &s.present,
            &s.pending_read,
            &s.pending_clear,
            &s.join_main,
            &s.join_shard,
            &s.state_copy,
            &s.shard_top,
            &s.count_higher,
            &s.names,
        ] {
            let header: Vec<&str> = lua
                .body
                .lines()
                .take_while(|l| l.starts_with("--"))
                .collect();
            let header = header.join("\n");
            assert!(
                header.contains("KEYS:") && header.contains("ARGV:"),
                "a script's header names its KEYS and ARGV:\n{}",
                lua.body
            );
            assert_eq!(lua.sha.len(), 40);
        }
    }
}

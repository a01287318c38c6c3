//! What the coordinator hands a worker process (JSON on its stdin): the
//! worker's share of the players, its source addresses, the scenario and the
//! run's clock. Below both `worker` and `player`, which read it.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::scenario::Scenario;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerPlan {
    pub worker: u64,
    pub workers: u64,
    /// Loopback source addresses; players are spread over them in blocks of
    /// `load.players_per_source_ip`.
    pub sources: Vec<IpAddr>,
    pub target: String,
    pub scenario: Scenario,
    pub quiz_ids: Vec<String>,
    /// Wall clock (µs) of the ramp start.
    pub t0_wall_us: u64,
    /// Hard end of the load phase.
    pub deadline_wall_us: u64,
    /// Hard end of verification; the worker exits by then.
    pub verify_deadline_wall_us: u64,
    pub seed: u64,
}

impl WorkerPlan {
    /// Global indices of this worker's players.
    pub fn players(&self) -> impl Iterator<Item = u64> + '_ {
        (self.worker..self.scenario.load.players).step_by(self.workers as usize)
    }
}

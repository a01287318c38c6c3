//! The tool's one clock: wall-clock microseconds, so that times taken by
//! players, the hub and the coordinator compare with each other and with the
//! server's `opens_at_ms` on the same machine.

/// Wall clock in microseconds since the Unix epoch.
pub fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

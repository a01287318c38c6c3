//! This process's file descriptors: how many it may open, and the kernel's
//! table that holds them.
//!
//! Why grow the table up front: Linux keeps a process's open files in one
//! array that starts at 64 slots and doubles when a new descriptor does not
//! fit. In a multi-threaded process each doubling waits for an RCU grace
//! period (`expand_fdtable` calls `synchronize_rcu`), and every thread that
//! opens a file meanwhile waits too. On the dev VM each of those stalls
//! took 9–15 ms (`strace -T`: the `accept4` or `socket` that returned
//! descriptor 256, 512, …, 8192), so a fresh edge-lb taking its first
//! 5 000 tunnels stood still for ~73 ms, all of it while its clients
//! waited (docs/performance.md, "edge-lb: the descriptor table grown at
//! start"). The table never shrinks, so one growth at start, to the size
//! the process's configuration allows, removes every later one.
//!
//! [`socket`]: the one socket option the proxy and the load generator both
//! set on the sockets they bind to a source address.

pub mod socket;

use std::io;
use std::os::fd::AsRawFd;

/// The open-file limits (soft and hard) in force.
fn rlimit() -> io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a plain syscall on a stack struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim)
}

/// Set the soft open-file limit (at most the hard one).
fn set_soft_limit(soft: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        ..rlimit()?
    };
    // SAFETY: a plain syscall on a stack struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raise the soft open-file limit to the hard one, and return the soft
/// limit in force afterwards (0 when it cannot be read). Raising is
/// allowed without privilege; a failure leaves the old limit.
pub fn raise_limit() -> u64 {
    let Ok(lim) = rlimit() else { return 0 };
    let _ = set_soft_limit(lim.rlim_max);
    limit().unwrap_or(lim.rlim_cur)
}

/// The soft open-file limit: the highest descriptor this process may hold,
/// plus one.
pub fn limit() -> io::Result<u64> {
    Ok(rlimit()?.rlim_cur)
}

/// Grow the kernel's descriptor table now so that it holds `wanted`
/// descriptors (at most the soft open-file limit), and return how many it
/// was asked to hold. The kernel rounds the table up to a power of two of
/// slots, 8 bytes each, in its own memory, not in this process's heap: 256 KB
/// for 20 000 (`FDSize: 32768`).
///
/// How: `F_DUPFD` returns the lowest free descriptor at or above its
/// argument, so duplicating onto `wanted - 1` makes the kernel grow the
/// table to cover it; the duplicate is closed at once and the table stays.
pub fn reserve_table(wanted: u64) -> io::Result<u64> {
    let n = wanted.min(limit()?);
    if n <= 64 {
        // The table's first size: nothing to grow.
        return Ok(n);
    }
    let highest = libc::c_int::try_from(n - 1)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "descriptor count"))?;
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: duplicating a descriptor this function owns; the duplicate
    // is closed below and never escapes.
    let dup = unsafe { libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, highest) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` is the descriptor just created, owned here alone.
    unsafe { libc::close(dup) };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table's size as the kernel reports it (`FDSize` in
    /// `/proc/self/status`).
    fn table_size() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("FDSize")
    }

    /// One test, not three: the tests of a file share a process, and a
    /// count of open descriptors must not see another test's.
    #[test]
    fn the_table_holds_what_was_reserved_up_to_the_limit_and_nothing_is_left_open() {
        assert_eq!(reserve_table(10).expect("small"), 10, "the first size");

        let limit = raise_limit();
        let wanted = 3_000.min(limit);
        let open_before = std::fs::read_dir("/proc/self/fd").expect("fd dir").count();
        assert_eq!(reserve_table(wanted).expect("reserve"), wanted);
        assert!(table_size() >= wanted, "table {} < {wanted}", table_size());
        let open_after = std::fs::read_dir("/proc/self/fd").expect("fd dir").count();
        assert_eq!(
            open_before, open_after,
            "the duplicate and /dev/null are closed"
        );

        // Past the limit: held to it. The soft limit is set to a small ceiling first, so a
        // machine whose limit is a billion does not build a table of 8 GB here.
        let ceiling = limit.min(8_192);
        set_soft_limit(ceiling).expect("lower the soft limit");
        assert_eq!(reserve_table(u64::MAX).expect("past the limit"), ceiling);
        assert!(
            table_size() >= ceiling,
            "table {} < {ceiling}",
            table_size()
        );
        set_soft_limit(limit).expect("restore the soft limit");
    }
}

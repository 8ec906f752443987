//! Whole-host CPU time from `/proc/stat`, for `pfs-ior --cpu`.
//!
//! The first line of `/proc/stat` (`cpu  user nice system idle iowait irq softirq steal guest
//! guest_nice`) counts, summed over all CPUs, the time spent in each state since boot, in
//! USER_HZ ticks (`sysconf(_SC_CLK_TCK)`). Two readings bracket a stage; the difference is the
//! CPU time every process of the host spent in it: the benchmark's ranks, the pfs servers when
//! they run on the same host, and anything else that ran meanwhile.

use crate::error::{Error, Result};

/// Where the counters come from.
pub const PROC_STAT: &str = "/proc/stat";

/// One reading of the host's CPU counters, in USER_HZ ticks summed over all CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTimes {
    /// user + nice + system + irq + softirq + steal (guest time is already inside user and
    /// nice, so it is not added again).
    pub busy: u64,
    /// busy + idle + iowait: every tick of every CPU.
    pub total: u64,
    /// CPUs counted (`cpuN` lines).
    pub cpus: usize,
}

/// Why a text is not `/proc/stat` as [`parse`] needs it; each names the line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProcStatError {
    /// No line starts with `cpu` alone (the sum over all CPUs).
    #[error("no aggregate `cpu` line")]
    NoCpuLine,
    /// A counter of the `cpu` line is not a number.
    #[error("bad number `{field}` in `{line}`")]
    BadNumber { field: String, line: String },
    /// The `cpu` line has fewer than the 4 counters every kernel gives.
    #[error("`{line}` has fewer than 4 counters")]
    TooFew { line: String },
}

/// Parses the text of `/proc/stat`.
pub fn parse(text: &str) -> std::result::Result<CpuTimes, ProcStatError> {
    let line = text.lines().find(|l| l.split_whitespace().next() == Some("cpu")).ok_or(ProcStatError::NoCpuLine)?;
    let fields = line
        .split_whitespace()
        .skip(1)
        .map(|f| {
            f.parse::<u64>().map_err(|_| ProcStatError::BadNumber { field: f.to_string(), line: line.to_string() })
        })
        .collect::<std::result::Result<Vec<u64>, ProcStatError>>()?;
    // user nice system idle are in every kernel; iowait, irq, softirq and steal came later
    // (2.5.41, 2.6.0, 2.6.11): missing ones count as 0.
    if fields.len() < 4 {
        return Err(ProcStatError::TooFew { line: line.to_string() });
    }
    let f = |i: usize| fields.get(i).copied().unwrap_or(0);
    let busy = f(0) + f(1) + f(2) + f(5) + f(6) + f(7);
    let cpus = text
        .lines()
        .filter(|l| l.strip_prefix("cpu").is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit())))
        .count();
    Ok(CpuTimes { busy, total: busy + f(3) + f(4), cpus: cpus.max(1) })
}

/// Reads the host's counters now.
pub fn sample() -> Result<CpuTimes> {
    let text = std::fs::read_to_string(PROC_STAT)
        .map_err(|e| Error::io(format!("reading {PROC_STAT} (--cpu measures the host's CPU time from it)"), e))?;
    parse(&text).map_err(|e| Error::Invalid(format!("{PROC_STAT}: {e}")))
}

/// USER_HZ: the ticks per second of `/proc/stat`'s counters.
pub fn ticks_per_second() -> Result<f64> {
    // SAFETY: sysconf only reads a constant of the C library; it takes no pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return Err(Error::Invalid(format!("sysconf(_SC_CLK_TCK) returned {hz}")));
    }
    Ok(hz as f64)
}

/// The host's CPU use between two readings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuUse {
    /// CPU-seconds spent busy, all CPUs together.
    pub busy_s: f64,
    /// CPU-seconds that passed, all CPUs together (CPUs × wall-clock seconds).
    pub total_s: f64,
    /// CPUs of the host.
    pub cpus: usize,
}

impl CpuUse {
    /// The use from `a` to `b`, with `hz` ticks per second. Saturating: a counter that went
    /// backwards (iowait may, on some kernels) counts as 0.
    pub fn between(a: &CpuTimes, b: &CpuTimes, hz: f64) -> CpuUse {
        CpuUse {
            busy_s: b.busy.saturating_sub(a.busy) as f64 / hz,
            total_s: b.total.saturating_sub(a.total) as f64 / hz,
            cpus: b.cpus,
        }
    }

    /// Busy CPU-seconds per GiB (2^30 bytes) of `bytes` moved; `None` if nothing moved.
    pub fn per_gib(&self, bytes: f64) -> Option<f64> {
        (bytes > 0.0).then(|| self.busy_s / (bytes / (1u64 << 30) as f64))
    }

    /// Busy share of the host's CPU time (0..1), 0 for an empty interval.
    pub fn utilisation(&self) -> f64 {
        if self.total_s > 0.0 {
            self.busy_s / self.total_s
        } else {
            0.0
        }
    }

    /// The sum of two intervals' use.
    pub fn add(&self, other: &CpuUse) -> CpuUse {
        CpuUse { busy_s: self.busy_s + other.busy_s, total_s: self.total_s + other.total_s, cpus: self.cpus }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_aggregate_line_and_counts_cpus() {
        let t = parse("cpu  100 5 50 1000 20 3 7 2 40 0\ncpu0 50 2 25 500 10 1 3 1 20 0\ncpu1 50 3 25 500 10 2 4 1 20 0\nintr 1 2\n")
            .unwrap();
        assert_eq!(t, CpuTimes { busy: 100 + 5 + 50 + 3 + 7 + 2, total: 167 + 1000 + 20, cpus: 2 });
    }

    #[test]
    fn old_kernels_have_fewer_fields() {
        assert_eq!(parse("cpu 1 2 3 4\ncpu0 1 2 3 4\n").unwrap(), CpuTimes { busy: 6, total: 10, cpus: 1 });
    }

    #[test]
    fn refuses_what_is_not_proc_stat() {
        assert_eq!(parse(""), Err(ProcStatError::NoCpuLine));
        let e = parse("cpu 1 2 x 4\n");
        assert_eq!(e, Err(ProcStatError::BadNumber { field: "x".into(), line: "cpu 1 2 x 4".into() }));
        assert_eq!(parse("cpu 1 2\n"), Err(ProcStatError::TooFew { line: "cpu 1 2".into() }));
        // `cpu0` alone is not the aggregate line.
        assert_eq!(parse("cpu0 1 2 3 4\n"), Err(ProcStatError::NoCpuLine));
    }

    #[test]
    fn use_per_gib() {
        let a = CpuTimes { busy: 100, total: 1000, cpus: 2 };
        let b = CpuTimes { busy: 300, total: 1400, cpus: 2 };
        let u = CpuUse::between(&a, &b, 100.0);
        assert_eq!((u.busy_s, u.total_s), (2.0, 4.0));
        assert_eq!(u.per_gib(512.0 * 1048576.0), Some(4.0));
        assert_eq!(u.per_gib(0.0), None);
        assert_eq!(u.utilisation(), 0.5);
        // A counter that went backwards counts as nothing.
        assert_eq!(CpuUse::between(&b, &a, 100.0).busy_s, 0.0);
    }
}

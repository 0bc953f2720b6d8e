//! Resource use of a process, read from /proc (Linux): for the benchmark's figures.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Usage {
    /// Peak resident set size (VmHWM).
    pub peak_rss_kib: u64,
    /// User + system CPU time, including reaped children.
    pub cpu_secs: f64,
}

/// This process's usage.
pub fn own() -> Usage {
    of(std::process::id()).unwrap_or_default()
}

/// A process's usage; None when it is gone or /proc is not there.
pub fn of(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let peak_rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Some(Usage {
        peak_rss_kib,
        cpu_secs: cpu_secs(pid)?,
    })
}

/// utime + stime + cutime + cstime of a process, in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3, so utime (14) .. cstime (17) sit at indices 11..=14.
    let ticks: f64 = fields
        .get(11..=14)?
        .iter()
        .filter_map(|f| f.parse::<f64>().ok())
        .sum();
    Some(ticks / clock_ticks_per_sec())
}

fn clock_ticks_per_sec() -> f64 {
    // USER_HZ is 100 on every Linux architecture we run on.
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_peak_and_spends_cpu() {
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let u = own();
        assert!(u.peak_rss_kib > 1000, "{u:?}");
        assert!(u.cpu_secs >= 0.0);
    }
}

//! What every long-running imgstream process exports besides its own work: `imgstream_build_info`
//! and the standard `process_*` metrics (CPU seconds, resident memory, open and allowed file
//! descriptors, start time).
//!
//! prometheus-client has no process collector, so these are read from `/proc/self` at each
//! scrape: Linux only. Elsewhere the `process_*` metrics are simply absent, never zero (a zero
//! would read as "no memory in use"). They keep the unprefixed names every Prometheus client
//! uses, so existing dashboards and alerts on `process_resident_memory_bytes` work unchanged.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

/// Registers `imgstream_build_info` and the process collector on the root registry (unprefixed:
/// the build info carries its own prefix).
pub fn register(registry: &mut Registry) {
    registry.register_collector(Box::new(ProcessCollector));
}

#[derive(Debug)]
struct ProcessCollector;

/// What `/proc/self` says, read once per scrape.
#[derive(Debug, Default, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

unsafe extern "C" {
    fn sysconf(name: i32) -> i64;
}

/// `_SC_CLK_TCK` on Linux: the unit of the CPU times in `/proc/self/stat`.
const SC_CLK_TCK: i32 = 2;

impl ProcessSample {
    /// Reads `/proc/self`; `None` where there is no such thing (not Linux).
    pub fn read() -> Option<ProcessSample> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { sysconf(SC_CLK_TCK) };
        let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
        let mut sample = parse_stat(&stat, ticks)?;
        sample.resident_bytes = parse_vm_rss(&status)?;
        sample.open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        sample.max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| parse_max_fds(&l));
        // The start time in /proc/self/stat counts ticks since boot.
        if let (Some(since_boot), Some(boot)) = (
            sample.start_time_seconds,
            std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| parse_btime(&s)),
        ) {
            sample.start_time_seconds = Some(boot + since_boot);
        } else {
            sample.start_time_seconds = None;
        }
        Some(sample)
    }
}

/// CPU seconds (user + system) and the start time in seconds after boot, from `/proc/self/stat`.
fn parse_stat(stat: &str, ticks_per_second: f64) -> Option<ProcessSample> {
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime), 15 (stime) and 22 (starttime), counted from 1 with field 3 at index 0.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let cpu = (field(14)? + field(15)?) as f64 / ticks_per_second;
    Some(ProcessSample {
        cpu_seconds: cpu,
        start_time_seconds: field(22).map(|t| t as f64 / ticks_per_second),
        ..ProcessSample::default()
    })
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn parse_btime(stat: &str) -> Option<f64> {
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let version = env!("CARGO_PKG_VERSION");
        let librdkafka = rdkafka::util::get_rdkafka_version().1;
        let mut info = encoder.encode_descriptor(
            "imgstream_build_info",
            "Always 1; the labels say which build runs",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1).encode(
            info.encode_family(&[("version", version), ("librdkafka", librdkafka.as_str())])?,
        )?;
        let Some(p) = ProcessSample::read() else {
            return Ok(());
        };
        ConstCounter::new(p.cpu_seconds).encode(encoder.encode_descriptor(
            "process_cpu",
            "User and system CPU time spent",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?)?;
        ConstGauge::new(p.resident_bytes as i64).encode(encoder.encode_descriptor(
            "process_resident_memory",
            "Resident memory size",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(p.open_fds as i64).encode(encoder.encode_descriptor(
            "process_open_fds",
            "Open file descriptors",
            None,
            MetricType::Gauge,
        )?)?;
        if let Some(max) = p.max_fds {
            ConstGauge::new(max as i64).encode(encoder.encode_descriptor(
                "process_max_fds",
                "The limit on open file descriptors",
                None,
                MetricType::Gauge,
            )?)?;
        }
        if let Some(start) = p.start_time_seconds {
            ConstGauge::new(start).encode(encoder.encode_descriptor(
                "process_start_time",
                "Start time of the process since the Unix epoch",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    250 50 0 0 20 0 9 0 12345 1000000 300 18446744073709551615";
        let sample = parse_stat(stat, 100.0).unwrap();
        assert_eq!(sample.cpu_seconds, 3.0);
        assert_eq!(sample.start_time_seconds, Some(123.45));
    }

    #[test]
    fn resident_memory_and_the_descriptor_limit_are_read_in_bytes_and_files() {
        assert_eq!(
            parse_vm_rss("Name:\timgstream\nVmRSS:\t   2048 kB\n"),
            Some(2048 * 1024)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 1048576              files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(parse_btime("cpu 1 2 3\nbtime 1700000000\n"), Some(1.7e9));
    }

    #[test]
    fn this_process_reads_as_using_memory_and_descriptors() {
        let p = ProcessSample::read().expect("Linux");
        assert!(p.resident_bytes > 0 && p.open_fds > 0, "{p:?}");
    }
}

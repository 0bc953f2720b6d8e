//! What the services on this machine spend, read from their pid files and /proc.

use imgstream::pipeline::usage;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

pub fn stack_dir() -> PathBuf {
    std::env::var("IMGSTREAM_STACK_DIR").map_or_else(|_| PathBuf::from(".stack"), PathBuf::from)
}

/// The running Kafka nodes under `kafka_dir` (`<cluster>/<node>/`, as the stack lays them out):
/// each node's directory and the pid in its `kafka.pid`, for nodes whose process is alive.
pub fn running_kafka_nodes(kafka_dir: &Path) -> Vec<(PathBuf, u32)> {
    let children = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    children(kafka_dir)
        .iter()
        .flat_map(|cluster| children(cluster))
        .filter_map(|node| {
            let pid = pid_in(&node.join("kafka.pid"))?;
            Path::new(&format!("/proc/{pid}"))
                .exists()
                .then_some((node, pid))
        })
        .collect()
}

/// A `/proc/meminfo` field (`MemFree:`, `MemAvailable:`, ...) in MiB.
pub fn meminfo_mib(field: &str) -> Option<f64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| {
            let kib: f64 = l
                .strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()?;
            Some(kib / 1024.0)
        })
}

fn pid_in(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Live children of a process (PostgreSQL backends of the postmaster).
fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = &s[s.rfind(')')? + 2..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

#[derive(Debug, Clone, Default)]
pub struct CpuDelta {
    pub kafka: f64,
    /// The part of `kafka` its JVMs' JIT compiler threads spent: a broker compiles the code a
    /// new kind of load runs (small paced produce requests, fetches waiting for them) for the
    /// first 15-20 s it sees that load, at 0.26-0.46 of a core here.
    pub kafka_jit: f64,
    pub minio: f64,
    pub postgres: f64,
}

impl CpuDelta {
    pub fn total(&self) -> f64 {
        self.kafka + self.minio + self.postgres
    }

    pub fn plus(&self, other: &CpuDelta) -> CpuDelta {
        CpuDelta {
            kafka: self.kafka + other.kafka,
            kafka_jit: self.kafka_jit + other.kafka_jit,
            minio: self.minio + other.minio,
            postgres: self.postgres + other.postgres,
        }
    }

    pub fn since(&self, before: &CpuDelta) -> CpuDelta {
        CpuDelta {
            kafka: self.kafka - before.kafka,
            // A compiler thread the JVM retired takes its CPU with it: never below 0.
            kafka_jit: (self.kafka_jit - before.kafka_jit).max(0.0),
            minio: self.minio - before.minio,
            postgres: self.postgres - before.postgres,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "kafka": self.kafka, "kafka_jit": self.kafka_jit,
            "minio": self.minio, "postgresql": self.postgres,
        })
    }
}

/// CPU seconds spent so far by Kafka (every node), MinIO and PostgreSQL (postmaster, its reaped
/// children, and its live backends).
pub fn cpu() -> CpuDelta {
    let dir = stack_dir();
    let (mut kafka, mut kafka_jit) = (0.0, 0.0);
    for (_, pid) in running_kafka_nodes(&dir.join("kafka")) {
        kafka += usage::cpu_secs(pid).unwrap_or(0.0);
        kafka_jit += jit_cpu_secs(pid);
    }
    let minio = pid_in(&dir.join("minio/minio.pid"))
        .and_then(usage::cpu_secs)
        .unwrap_or(0.0);
    let postgres = pid_in(&dir.join("postgres/data/postmaster.pid")).map_or(0.0, |pm| {
        usage::cpu_secs(pm).unwrap_or(0.0)
            + children(pm)
                .into_iter()
                .filter_map(usage::cpu_secs)
                .sum::<f64>()
    });
    CpuDelta {
        kafka,
        kafka_jit,
        minio,
        postgres,
    }
}

/// CPU seconds of a JVM's JIT compiler threads alive now (HotSpot names them `C1 CompilerThreadN`
/// and `C2 CompilerThreadN`; the kernel keeps the first 15 bytes of a thread's name).
fn jit_cpu_secs(pid: u32) -> f64 {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    threads
        .flatten()
        .filter_map(|thread| {
            let stat = std::fs::read_to_string(thread.path().join("stat")).ok()?;
            let name = &stat[stat.find('(')? + 1..stat.rfind(')')?];
            is_jit_compiler(name).then_some(())?;
            // utime and stime: fields 14 and 15, indices 11 and 12 after the name.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks: f64 = fields
                .get(11..=12)?
                .iter()
                .filter_map(|f| f.parse::<f64>().ok())
                .sum();
            Some(ticks / 100.0) // USER_HZ
        })
        .sum()
}

fn is_jit_compiler(thread_name: &str) -> bool {
    thread_name.starts_with("C1 Compiler") || thread_name.starts_with("C2 Compiler")
}

pub fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string());
    json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu_model": model,
        "memory_gib": meminfo_mib("MemTotal:").map(|mib| mib / 1024.0),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}

/// Service versions as `make stack-status` reports them.
pub fn versions() -> Value {
    let out = std::process::Command::new("scripts/stack/stack.sh")
        .arg("status")
        .output();
    let mut v = serde_json::Map::new();
    v.insert("imgstream".into(), json!(env!("CARGO_PKG_VERSION")));
    if let Ok(out) = out {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() >= 3 {
                v.insert(parts[0].into(), json!(parts[2]));
            }
        }
    }
    Value::Object(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hotspot_compiler_threads_are_told_from_the_brokers_own() {
        assert!(is_jit_compiler("C2 CompilerThre"));
        assert!(is_jit_compiler("C1 CompilerThre"));
        assert!(!is_jit_compiler("data-plane-kafk"));
        assert!(!is_jit_compiler("GC Thread#0"));
    }

    #[test]
    fn this_process_has_no_jit_compiler_threads() {
        assert_eq!(jit_cpu_secs(std::process::id()), 0.0);
    }
}

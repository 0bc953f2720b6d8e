//! The consumer's live view: a status line on a terminal, a log line every ten seconds otherwise.

use crate::kafka::source::KafkaSource;
use crate::pipeline::Stats;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tracing::info;

pub fn spawn(source: Arc<KafkaSource>, stats: Arc<Stats>, terminal: bool) -> JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let period = if terminal {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        };
        let mut last = (Instant::now(), 0u64, 0u64);
        loop {
            tokio::time::sleep(period).await;
            let s = source.clone();
            let lag = tokio::task::spawn_blocking(move || s.owned_lag())
                .await
                .ok()
                .flatten();
            let stored = stats.stored.load(Ordering::Relaxed);
            let bytes = stats.bytes.load(Ordering::Relaxed);
            let dlq = stats.dead_lettered.load(Ordering::Relaxed);
            let dt = last.0.elapsed().as_secs_f64().max(1e-9);
            let rate = (stored - last.1) as f64 / dt;
            let mb = (bytes - last.2) as f64 / dt / 1e6;
            last = (Instant::now(), stored, bytes);
            let lag = lag.map_or("?".to_string(), |l| l.to_string());
            if terminal {
                eprint!(
                    "\r\x1b[2Kstored {stored}  {rate:.0} images/s  {mb:.1} MB/s  lag {lag}  dlq {dlq}  [{:.0}s]",
                    started.elapsed().as_secs_f64()
                );
                let _ = std::io::stderr().flush();
            } else {
                info!(
                    stored,
                    images_per_sec = format!("{rate:.0}"),
                    mb_per_sec = format!("{mb:.1}"),
                    lag,
                    dead_lettered = dlq,
                    "consuming"
                );
            }
        }
    })
}

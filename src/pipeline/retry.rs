//! Retrying transient failures: capped exponential backoff with jitter, and one log line when an
//! outage starts and one when it ends (not one per attempt). A call that has waited long for an
//! answer is logged while it waits, so a frozen service is visible before any timeout fires.

use crate::shutdown::Shutdown;
use rand::Rng;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Backoff bounds. The cap keeps recovery prompt once a service is back.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// A call still unanswered after this long is logged as slow, and again each time as long.
    pub slow_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            slow_after: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The delay before attempt `n` (0-based): exponential, capped, with "full jitter" between half
    /// and all of it so that many workers do not retry in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.initial.saturating_mul(1u32 << attempt.min(16));
        let capped = exp.min(self.max);
        let jitter = rand::thread_rng().gen_range(0.5..=1.0);
        capped.mul_f64(jitter)
    }
}

/// Tracks whether a service is in an outage, so start and end are each logged once, and counts
/// the calls that were slow to answer.
#[derive(Debug)]
pub struct Outage {
    service: &'static str,
    since: Mutex<Option<Instant>>,
    slow_waits: AtomicU64,
    retries: AtomicU64,
    started: AtomicU64,
}

impl Outage {
    pub const fn new(service: &'static str) -> Self {
        Outage {
            service,
            since: Mutex::new(None),
            slow_waits: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            started: AtomicU64::new(0),
        }
    }

    /// How many times a call to this service was seen waiting past the slow threshold.
    pub fn slow_waits(&self) -> u64 {
        self.slow_waits.load(Ordering::Relaxed)
    }

    /// How many failed calls to this service were retried.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// How many outages of this service began (a second failure in a row starts one).
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    fn still_waiting(&self, waited: Duration) {
        self.slow_waits.fetch_add(1, Ordering::Relaxed);
        warn!(
            service = self.service,
            waited_secs = waited.as_secs_f64(),
            "still waiting for an answer"
        );
    }

    fn failed(&self, error: &str) {
        let mut since = self.since.lock().expect("outage lock");
        if since.is_none() {
            *since = Some(Instant::now());
            self.started.fetch_add(1, Ordering::Relaxed);
            warn!(service = self.service, %error, "outage started: retrying with backoff");
        }
    }

    fn succeeded(&self) {
        let mut since = self.since.lock().expect("outage lock");
        if let Some(start) = since.take() {
            info!(
                service = self.service,
                seconds = start.elapsed().as_secs_f64(),
                "outage ended"
            );
        }
    }

    pub fn service(&self) -> &'static str {
        self.service
    }

    pub fn is_ongoing(&self) -> bool {
        self.since.lock().expect("outage lock").is_some()
    }
}

/// Why a retried operation stopped without succeeding.
#[derive(Debug)]
pub enum Stopped<E> {
    /// Not worth retrying: the error as it came.
    Permanent(E),
    /// Shutdown was requested while the service was still failing.
    Shutdown(E),
}

/// Runs `op` until it succeeds, fails permanently (`is_transient` false), or shutdown is requested.
pub async fn retry<T, E, F, Fut>(
    outage: &Outage,
    backoff: Backoff,
    shutdown: &Shutdown,
    is_transient: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, Stopped<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut attempt = 0;
    loop {
        match answer_watched(outage, backoff.slow_after, op()).await {
            Ok(v) => {
                outage.succeeded();
                return Ok(v);
            }
            Err(e) if !is_transient(&e) => return Err(Stopped::Permanent(e)),
            Err(e) => {
                // One failure alone is not an outage: MinIO, for one, now and then resets a
                // pooled keep-alive connection, and the retry goes through on a fresh one.
                if attempt == 0 {
                    debug!(service = outage.service, error = %e, "failed once; retrying");
                } else {
                    outage.failed(&e.to_string());
                }
                if shutdown.is_triggered() {
                    return Err(Stopped::Shutdown(e));
                }
                outage.retries.fetch_add(1, Ordering::Relaxed);
                let delay = backoff.delay(attempt);
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.triggered() => {}
                }
            }
        }
    }
}

/// Awaits `call`, saying so each time it has waited another `slow_after` without an answer.
async fn answer_watched<T>(
    outage: &Outage,
    slow_after: Duration,
    call: impl Future<Output = T>,
) -> T {
    let mut call = std::pin::pin!(call);
    let mut waited = Duration::ZERO;
    loop {
        tokio::select! {
            answer = &mut call => return answer,
            _ = tokio::time::sleep(slow_after) => {
                waited += slow_after;
                outage.still_waiting(waited);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn delays_grow_and_stay_under_the_cap() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            ..Backoff::default()
        };
        assert!(b.delay(0) <= Duration::from_millis(100));
        assert!(b.delay(0) >= Duration::from_millis(50));
        assert!(b.delay(3) >= Duration::from_millis(400));
        for n in 0..40 {
            assert!(b.delay(n) <= Duration::from_secs(2));
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let (_t, shutdown) = Shutdown::new();
        let outage = Outage::new("test");
        let calls = AtomicU32::new(0);
        let fast = Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
            ..Backoff::default()
        };
        let result: Result<u32, Stopped<String>> = retry(
            &outage,
            fast,
            &shutdown,
            |_| true,
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 3 {
                    Err(format!("down {n}"))
                } else {
                    Ok(n)
                }
            },
        )
        .await;
        assert_eq!(result.unwrap(), 3);
        assert!(!outage.is_ongoing());
    }

    /// Runs `retry` over an operation that fails `failures` times, and says whether an outage was
    /// declared by the time it succeeded.
    async fn outage_declared_after(failures: u32) -> bool {
        let (_t, shutdown) = Shutdown::new();
        let outage = Outage::new("test");
        let calls = AtomicU32::new(0);
        let declared = std::sync::atomic::AtomicBool::new(false);
        let fast = Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
            ..Backoff::default()
        };
        let result: Result<(), Stopped<String>> = retry(
            &outage,
            fast,
            &shutdown,
            |_| true,
            || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                declared.store(outage.is_ongoing(), Ordering::SeqCst);
                async move {
                    if n < failures {
                        Err("connection reset".to_string())
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .await;
        assert!(result.is_ok());
        declared.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_single_failure_is_retried_without_declaring_an_outage() {
        assert!(!outage_declared_after(1).await);
    }

    #[tokio::test]
    async fn a_second_failure_in_a_row_declares_an_outage() {
        assert!(outage_declared_after(2).await);
    }

    #[tokio::test]
    async fn permanent_failures_are_not_retried() {
        let (_t, shutdown) = Shutdown::new();
        let calls = AtomicU32::new(0);
        let result: Result<(), Stopped<String>> = retry(
            &Outage::new("test"),
            Backoff::default(),
            &shutdown,
            |_| false,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("bad record".to_string())
            },
        )
        .await;
        assert!(matches!(result, Err(Stopped::Permanent(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn shutdown_stops_an_endless_outage() {
        let (trigger, shutdown) = Shutdown::new();
        trigger.trigger();
        let result: Result<(), Stopped<String>> = retry(
            &Outage::new("test"),
            Backoff::default(),
            &shutdown,
            |_| true,
            || async { Err("still down".to_string()) },
        )
        .await;
        assert!(matches!(result, Err(Stopped::Shutdown(_))));
    }
}

#[cfg(test)]
mod slow_tests {
    use super::*;

    #[tokio::test]
    async fn a_call_that_waits_long_is_reported_while_it_waits_and_still_succeeds() {
        let (_t, shutdown) = Shutdown::new();
        let outage = Outage::new("test");
        let backoff = Backoff {
            slow_after: Duration::from_millis(20),
            ..Backoff::default()
        };
        let result: Result<(), Stopped<String>> = retry(
            &outage,
            backoff,
            &shutdown,
            |_| true,
            || async {
                tokio::time::sleep(Duration::from_millis(70)).await;
                Ok(())
            },
        )
        .await;
        assert!(result.is_ok());
        assert!(outage.slow_waits() >= 2, "{}", outage.slow_waits());
        assert!(!outage.is_ongoing(), "slow is not down");
    }

    #[tokio::test]
    async fn a_prompt_call_is_not_reported() {
        let (_t, shutdown) = Shutdown::new();
        let outage = Outage::new("test");
        let result: Result<(), Stopped<String>> = retry(
            &outage,
            Backoff::default(),
            &shutdown,
            |_| true,
            || async { Ok(()) },
        )
        .await;
        assert!(result.is_ok());
        assert_eq!(outage.slow_waits(), 0);
    }
}

//! Scripted failures for the in-memory fakes.

use crate::domain::{ErasureProbe, ImageRecord, IndexEntry};
use crate::pipeline::{DeadLetter, DeadLetterSink, Failure, ImageSink, IndexSink, Indexed, Put};
use futures::future::BoxFuture;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;

/// What the next calls of a fake do, in order; once the script is empty, calls succeed.
pub struct Faults {
    script: Mutex<VecDeque<Failure>>,
    calls: AtomicU64,
    /// While closed, every call past `held_from` waits here: a stuck service.
    gate: watch::Sender<bool>,
    /// The number of the first call the closed gate holds.
    held_from: AtomicU64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            script: Mutex::new(VecDeque::new()),
            calls: AtomicU64::new(0),
            gate: watch::channel(true).0,
            held_from: AtomicU64::new(0),
        }
    }
}

impl Faults {
    /// The next `n` calls fail with `failure`.
    pub fn fail_next(&self, n: usize, failure: Failure) {
        let mut script = self.script.lock().expect("faults lock");
        script.extend(std::iter::repeat_n(failure, n));
    }

    /// From now on calls wait, without answering, until `release`.
    pub fn hold(&self) {
        self.hold_after(0);
    }

    /// Lets the next `n` calls through, then holds every later one until `release`.
    pub fn hold_after(&self, n: u64) {
        self.held_from
            .store(self.calls.load(Ordering::SeqCst) + n, Ordering::SeqCst);
        self.gate.send_replace(false);
    }

    pub fn release(&self) {
        self.gate.send_replace(true);
    }

    /// Calls made so far, including failed and waiting ones.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Run at the start of every call of the wrapped fake.
    pub async fn enter(&self) -> Result<(), Failure> {
        let nth = self.calls.fetch_add(1, Ordering::SeqCst);
        if nth >= self.held_from.load(Ordering::SeqCst) {
            let mut gate = self.gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
        }
        match self.script.lock().expect("faults lock").pop_front() {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }
}

/// A port with scripted failures in front of it.
pub struct Flaky<T> {
    pub inner: T,
    pub faults: Faults,
}

impl<T> Flaky<T> {
    pub fn new(inner: T) -> Self {
        Flaky {
            inner,
            faults: Faults::default(),
        }
    }
}

impl<T: ImageSink> ImageSink for Flaky<T> {
    fn put<'a>(&'a self, record: &'a ImageRecord) -> BoxFuture<'a, Result<Put, Failure>> {
        Box::pin(async move {
            self.faults.enter().await?;
            self.inner.put(record).await
        })
    }

    fn bucket(&self) -> &str {
        self.inner.bucket()
    }
}

impl<T: IndexSink> IndexSink for Flaky<T> {
    fn insert<'a>(
        &'a self,
        entries: &'a [IndexEntry],
    ) -> BoxFuture<'a, Result<Vec<Indexed>, Failure>> {
        Box::pin(async move {
            self.faults.enter().await?;
            self.inner.insert(entries).await
        })
    }

    fn erased<'a>(
        &'a self,
        probes: &'a [ErasureProbe],
    ) -> BoxFuture<'a, Result<Vec<bool>, Failure>> {
        // The scripted faults are the insert's (a crash between put and insert holds the
        // inserts); the erasure check before uploading passes through.
        self.inner.erased(probes)
    }
}

impl<T: DeadLetterSink> DeadLetterSink for Flaky<T> {
    fn send<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            self.faults.enter().await?;
            self.inner.send(letter).await
        })
    }
}

//! The pipeline's memory bound: the bytes of the records it holds, from the poll that brought
//! them to the commit that lets them go. The stages' channels and the upload stage bound batches
//! by count; a batch is bounded by `batch_max_bytes`; but batches of large images each fill
//! their byte limit, and fourteen of them (every stage, channel and waiting place full) held
//! 224 MiB at 2 MiB images. The fetch stage asks for a batch only while the held bytes are under
//! the budget, so the pipeline holds at most the budget plus one batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    held: AtomicUsize,
    freed: Notify,
}

/// Bytes a batch holds against the budget, given back when the batch is dropped, wherever
/// that happens (committed, or abandoned at shutdown).
#[derive(Debug)]
pub struct Held {
    bytes: usize,
    budget: Arc<ByteBudget>,
}

impl ByteBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(ByteBudget {
            limit,
            held: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Waits until the held bytes are under the limit.
    pub async fn room(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a release between the check and the wait wakes it.
            freed.as_mut().enable();
            if self.held() < self.limit {
                return;
            }
            freed.await;
        }
    }

    pub fn hold(self: &Arc<Self>, bytes: usize) -> Held {
        self.held.fetch_add(bytes, Ordering::Relaxed);
        Held {
            bytes,
            budget: self.clone(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::Relaxed);
        self.budget.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn there_is_room_while_the_held_bytes_are_under_the_limit() {
        let budget = ByteBudget::new(100);
        let first = budget.hold(60);
        tokio::time::timeout(Duration::from_millis(50), budget.room())
            .await
            .expect("60 of 100 held: room");
        let second = budget.hold(60);
        assert_eq!(budget.held(), 120);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), budget.room())
                .await
                .is_err(),
            "120 of 100 held: no room"
        );
        drop(second);
        drop(first);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_batch_let_go_wakes_the_stage_waiting_for_room() {
        let budget = ByteBudget::new(100);
        let held = budget.hold(150);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.room().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "over the limit: it waits");
        drop(held);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken once the bytes were given back")
            .unwrap();
    }
}

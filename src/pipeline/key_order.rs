//! Uploads of one image id happen one after another, in offset order, even across the batches
//! that upload at the same time. Without this, two records claiming the same id race for the
//! create-only write and whichever lands first wins; with it, the earliest record always wins and
//! later ones are compared against it (a replay is stored, an impostor is dead-lettered).

use super::Polled;
use crate::domain::ImageRecord;
use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::Shared;
use std::collections::HashMap;
use std::sync::Mutex;
use uuid::Uuid;

type Done = Shared<oneshot::Receiver<()>>;

/// The latest registered record of each image id still in flight.
#[derive(Default)]
pub struct KeyOrder {
    latest: Mutex<HashMap<Uuid, (u64, Done)>>,
    next: Mutex<u64>,
}

/// One record's place in line for its image id.
pub struct Turn<'a> {
    order: &'a KeyOrder,
    id: Uuid,
    seq: u64,
    after: Option<Done>,
    release: Option<oneshot::Sender<()>>,
}

impl KeyOrder {
    /// Takes a place in line for each record, in the given (offset) order. Must be called in the
    /// order batches were read, before any of their uploads start.
    pub(crate) fn register(&self, records: &[(Polled, ImageRecord)]) -> Vec<Turn<'_>> {
        records.iter().map(|(_, r)| self.turn(r.image_id)).collect()
    }

    pub fn turn(&self, id: Uuid) -> Turn<'_> {
        let seq = {
            let mut next = self.next.lock().expect("key order lock");
            *next += 1;
            *next
        };
        let (release, done) = oneshot::channel();
        let after = self
            .latest
            .lock()
            .expect("key order lock")
            .insert(id, (seq, done.shared()))
            .map(|(_, d)| d);
        Turn {
            order: self,
            id,
            seq,
            after,
            release: Some(release),
        }
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.latest.lock().expect("key order lock").len()
    }
}

impl Turn<'_> {
    /// Resolves once the previous record with this id has finished (or was abandoned).
    pub async fn wait(&self) {
        if let Some(after) = &self.after {
            let _ = after.clone().await;
        }
    }
}

impl Drop for Turn<'_> {
    // Releasing on drop means a cancelled upload can never leave its successor waiting forever.
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
        let mut latest = self.order.latest.lock().expect("key order lock");
        if latest
            .get(&self.id)
            .is_some_and(|(seq, _)| *seq == self.seq)
        {
            latest.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_record_of_an_id_waits_for_the_first() {
        let order = KeyOrder::default();
        let id = Uuid::new_v4();
        let first = order.turn(id);
        let second = order.turn(id);
        let other = order.turn(Uuid::new_v4());
        first.wait().await;
        other.wait().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(50), second.wait())
                .await
                .is_err(),
            "the second record must not start before the first is done"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), second.wait())
            .await
            .expect("released");
        drop(second);
        drop(other);
        assert_eq!(order.in_flight(), 0, "finished ids are forgotten");
    }
}

//! The index, dead-letter and schema twins.

use crate::domain::IndexEntry;
use crate::pipeline::{DeadLetter, DeadLetterSink, Failure, IndexSink, Indexed};
use crate::schema::{RegistryError, SchemaLookup};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::Mutex;
use uuid::Uuid;

/// The `images` table: one row per image id, never updated.
#[derive(Default)]
pub struct MemoryIndex {
    rows: Mutex<HashMap<Uuid, IndexEntry>>,
}

impl MemoryIndex {
    pub fn rows(&self) -> Vec<IndexEntry> {
        let mut rows: Vec<_> = self
            .rows
            .lock()
            .expect("index lock")
            .values()
            .cloned()
            .collect();
        rows.sort_by_key(|r| (r.kafka_partition, r.kafka_offset));
        rows
    }

    pub fn len(&self) -> usize {
        self.rows.lock().expect("index lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl IndexSink for MemoryIndex {
    fn insert<'a>(
        &'a self,
        entries: &'a [IndexEntry],
    ) -> BoxFuture<'a, Result<Vec<Indexed>, Failure>> {
        Box::pin(async move {
            // As `INSERT … ON CONFLICT DO NOTHING` then a comparison: the first entry of a new id
            // is inserted, every other one is compared with the row that holds the id.
            let mut rows = self.rows.lock().expect("index lock");
            let outcomes = entries
                .iter()
                .map(|entry| match rows.get(&entry.image_id) {
                    None => {
                        rows.insert(entry.image_id, entry.clone());
                        Indexed::Inserted
                    }
                    Some(row) if row.same_image_as(entry) => Indexed::AlreadyIndexed,
                    Some(row) => Indexed::Conflict(Box::new(row.clone())),
                })
                .collect();
            Ok(outcomes)
        })
    }
}

/// The dead-letter topic.
#[derive(Default)]
pub struct MemoryDeadLetters {
    letters: Mutex<Vec<DeadLetter>>,
}

impl MemoryDeadLetters {
    pub fn letters(&self) -> Vec<DeadLetter> {
        self.letters.lock().expect("dlq lock").clone()
    }

    /// The codes of the letters, in the order they were written.
    pub fn codes(&self) -> Vec<&'static str> {
        self.letters().iter().map(|l| l.refusal.code()).collect()
    }
}

impl DeadLetterSink for MemoryDeadLetters {
    fn send<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            self.letters.lock().expect("dlq lock").push(letter.clone());
            Ok(())
        })
    }
}

/// A registry holding a fixed set of schemas; it can be told to answer with an HTTP error.
#[derive(Default)]
pub struct MemorySchemas {
    schemas: HashMap<u32, String>,
    answer_status: Mutex<Option<u16>>,
}

impl MemorySchemas {
    pub fn with(schemas: &[(u32, &str)]) -> Self {
        MemorySchemas {
            schemas: schemas.iter().map(|(id, s)| (*id, s.to_string())).collect(),
            answer_status: Mutex::new(None),
        }
    }

    /// From now on every lookup is answered with this HTTP status (e.g. 401, 503).
    pub fn answer_with(&self, status: u16) {
        *self.answer_status.lock().expect("schemas lock") = Some(status);
    }

    /// Back to serving the schemas it holds.
    pub fn answer_normally(&self) {
        *self.answer_status.lock().expect("schemas lock") = None;
    }
}

impl SchemaLookup for MemorySchemas {
    fn schema_text(&self, id: u32) -> BoxFuture<'_, Result<String, RegistryError>> {
        let status = *self.answer_status.lock().expect("schemas lock");
        let found = self.schemas.get(&id).cloned();
        Box::pin(async move {
            if let Some(status) = status {
                return Err(RegistryError::Http {
                    request: format!("memory://schemas/ids/{id}"),
                    status,
                    body: "refused by the test".into(),
                });
            }
            found.ok_or_else(|| RegistryError::NotFound {
                what: format!("schema with id {id}"),
            })
        })
    }
}

//! The index, dead-letter and schema twins.

use crate::domain::IndexEntry;
use crate::pipeline::letter::Stamp;
use crate::pipeline::{
    DeadLetter, DeadLetterSink, Failure, IndexSink, Indexed, LetterBudget, WireLetter,
};
use crate::schema::{RegistryError, SchemaLookup};
use chrono::Utc;
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

/// The dead-letter topic: it holds each letter in the form the Kafka writer would write
/// ([`DeadLetter::to_wire`] against the topic's budget), and refuses one larger than the topic's
/// `max.message.bytes` as the broker does, a failure no retry fixes.
pub struct MemoryDeadLetters {
    max_message_bytes: usize,
    letters: Mutex<Vec<(DeadLetter, WireLetter)>>,
}

/// The group the twin stamps its letters with.
pub const MEMORY_GROUP: &str = "memory-group";

impl Default for MemoryDeadLetters {
    /// A topic sized as `setup` sizes it for the default image limit.
    fn default() -> Self {
        MemoryDeadLetters::with_max_message_bytes((10 << 20) + 64 * 1024)
    }
}

impl MemoryDeadLetters {
    pub fn with_max_message_bytes(max_message_bytes: usize) -> Self {
        MemoryDeadLetters {
            max_message_bytes,
            letters: Mutex::new(Vec::new()),
        }
    }

    pub fn letters(&self) -> Vec<DeadLetter> {
        let letters = self.letters.lock().expect("dlq lock");
        letters.iter().map(|(l, _)| l.clone()).collect()
    }

    /// The letters as the topic holds them.
    pub fn written(&self) -> Vec<WireLetter> {
        let letters = self.letters.lock().expect("dlq lock");
        letters.iter().map(|(_, w)| w.clone()).collect()
    }

    /// The codes of the letters, in the order they were written.
    pub fn codes(&self) -> Vec<&'static str> {
        self.letters().iter().map(|l| l.refusal.code()).collect()
    }
}

impl DeadLetterSink for MemoryDeadLetters {
    fn send<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let stamp = Stamp {
                group: MEMORY_GROUP,
                at: Utc::now(),
            };
            let wire = letter.to_wire(stamp, LetterBudget::for_topic(self.max_message_bytes));
            // The batch header the budget leaves room for, as the broker counts it.
            if wire.size() + 61 > self.max_message_bytes {
                return Err(Failure::Fatal(format!(
                    "Kafka refused: MessageSizeTooLarge ({} bytes, the topic takes {})",
                    wire.size() + 61,
                    self.max_message_bytes
                )));
            }
            self.letters
                .lock()
                .expect("dlq lock")
                .push((letter.clone(), wire));
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

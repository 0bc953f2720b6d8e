//! The index, dead-letter and schema twins.

use crate::domain::{Erasing, ErasureProbe, IndexEntry};
use crate::pipeline::letter::Stamp;
use crate::pipeline::{
    DeadLetter, DeadLetterSink, Failure, IndexSink, Indexed, LetterBudget, WireLetter,
};
use crate::schema::{RegistryError, SchemaLookup};
use chrono::Utc;
use futures::future::BoxFuture;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use uuid::Uuid;

/// The `images` table: one row per image id, never updated.
#[derive(Default)]
pub struct MemoryIndex {
    rows: Mutex<HashMap<Uuid, IndexEntry>>,
    /// Ids whose row the database refuses for a value it holds, and its words.
    refused: Mutex<HashMap<Uuid, String>>,
    /// The `erasures` table.
    erasures: Mutex<Vec<Erasing>>,
    /// Objects written for records found erased at insert (`erasure_leftovers`).
    leftovers: Mutex<Vec<String>>,
}

impl MemoryIndex {
    /// From now on the row of `image_id` is refused, as PostgreSQL refuses a value it cannot
    /// store (a NUL byte, an index entry above its size limit).
    pub fn refuse(&self, image_id: Uuid, detail: &str) {
        self.refused
            .lock()
            .expect("index lock")
            .insert(image_id, detail.to_string());
    }

    /// Records an erasure and removes the rows it covers, as `imgstream erase` does.
    pub fn erase(&self, erasing: Erasing) {
        self.rows
            .lock()
            .expect("index lock")
            .retain(|_, row| !erasing.covers(&probe(row)));
        self.erasures.lock().expect("index lock").push(erasing);
    }

    /// Objects written for records found erased at insert.
    pub fn leftovers(&self) -> Vec<String> {
        self.leftovers.lock().expect("index lock").clone()
    }

    fn is_erased(&self, probe: &ErasureProbe) -> bool {
        self.erasures
            .lock()
            .expect("index lock")
            .iter()
            .any(|e| e.covers(probe))
    }

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
            let refused = self.refused.lock().expect("index lock");
            let outcomes = entries
                .iter()
                .map(|entry| match rows.get(&entry.image_id) {
                    _ if self.is_erased(&probe(entry)) => {
                        self.leftovers
                            .lock()
                            .expect("index lock")
                            .push(entry.object_key.clone());
                        Indexed::Erased
                    }
                    None if refused.contains_key(&entry.image_id) => {
                        Indexed::Refused(refused[&entry.image_id].clone())
                    }
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

    fn erased<'a>(
        &'a self,
        probes: &'a [ErasureProbe],
    ) -> BoxFuture<'a, Result<Vec<bool>, Failure>> {
        Box::pin(async move { Ok(probes.iter().map(|p| self.is_erased(p)).collect()) })
    }
}

fn probe(entry: &IndexEntry) -> ErasureProbe {
    ErasureProbe {
        image_id: entry.image_id,
        customer_id: entry.customer_id.clone(),
        created_at: entry.created_at,
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

/// A registry holding a fixed set of schemas, registered under every subject unless added as
/// foreign; it can be told to answer with an HTTP error.
#[derive(Default)]
pub struct MemorySchemas {
    schemas: HashMap<u32, String>,
    /// Ids registered under some other subject only.
    foreign: HashSet<u32>,
    answer_status: Mutex<Option<u16>>,
}

impl MemorySchemas {
    pub fn with(schemas: &[(u32, &str)]) -> Self {
        MemorySchemas {
            schemas: schemas.iter().map(|(id, s)| (*id, s.to_string())).collect(),
            foreign: HashSet::new(),
            answer_status: Mutex::new(None),
        }
    }

    /// Adds a schema registered under another subject than the one a codec reads.
    pub fn with_foreign(mut self, id: u32, schema: &str) -> Self {
        self.schemas.insert(id, schema.to_string());
        self.foreign.insert(id);
        self
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

    fn registered_under<'a>(
        &'a self,
        _subject: &'a str,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<bool, RegistryError>> {
        let ours = self
            .schemas
            .iter()
            .any(|(id, text)| text == schema && !self.foreign.contains(id));
        Box::pin(async move { Ok(ours) })
    }
}

//! `imgstream dlq ls` and `imgstream dlq replay`: look at the dead letters, and send the ones whose
//! cause is fixed back to the data topic.
//!
//! A replay sends the original key, value and headers unchanged, plus a replay count
//! (`imgstream.replay.count`). The count travels with the record: if it fails again, its new dead
//! letter carries the raised count, and a letter replayed `max_replays` times is not sent again.
//! Replaying the same letter twice is harmless: the commit protocol stores a record once however
//! often it arrives.
//!
//! "Unchanged" includes a producer's headers under imgstream's namespace, which the letter
//! carries renamed (see [`crate::pipeline::letter`]): they go back under their own names, even
//! a forged `imgstream.dlq.code`. That is safe because the data topic's consumer reads no header
//! at all (it only copies them onto a letter, renaming them again); only readers of the
//! dead-letter topic give `imgstream.dlq.*` a meaning.
//!
//! A letter that carries a reference instead of its value (`imgstream.dlq.omitted`) is not
//! replayed: sending it would put an empty or partial record on the data topic. It is reported,
//! with where the original is, and the command fails.

use crate::config::Settings;
use crate::domain::ErasureProbe;
use crate::index::IndexError;
use crate::kafka::dlq::{StoredLetter, headers, read_letters};
use crate::kafka::{BrokerError, off_thread};
use crate::pipeline::RecordHeader;
use crate::pipeline::letter::{bounded_reason, bounded_text, original_key};
use crate::wiring;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;

/// Which letters a command looks at.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub code: Option<String>,
    /// Letters dead-lettered at or after this time.
    pub since: Option<DateTime<Utc>>,
}

/// The longest key a listing shows, in bytes.
const SHOWN_KEY_BYTES: usize = 256;

/// One dead letter, as a person reads it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Letter {
    pub dlq_partition: i32,
    pub dlq_offset: i64,
    pub code: String,
    pub class: String,
    pub reason: String,
    /// `topic/partition@offset` of the original record.
    pub original: String,
    pub dead_lettered_at: Option<DateTime<Utc>>,
    pub key: Option<String>,
    pub replays: u32,
    /// What the letter leaves out of the original (`value`, `headers`, `key`), if anything; then
    /// the original value's size and sha256 stand in for it.
    pub omitted: Option<String>,
    pub original_value_size: Option<u64>,
    pub original_value_sha256: Option<String>,
}

impl Letter {
    fn from_stored(l: &StoredLetter) -> Letter {
        let header = |name| l.header(name).unwrap_or_default();
        Letter {
            dlq_partition: l.partition,
            dlq_offset: l.offset,
            code: header(headers::CODE),
            class: header(headers::CLASS),
            // Bounded here too: letters written before reasons were bounded, and keys, are
            // as long as a producer made them, and both are shown on a terminal and a page.
            reason: bounded_reason(header(headers::REASON)),
            original: format!(
                "{}/{}@{}",
                header(headers::ORIGINAL_TOPIC),
                header(headers::ORIGINAL_PARTITION),
                header(headers::ORIGINAL_OFFSET)
            ),
            dead_lettered_at: l
                .header(headers::DEAD_LETTERED_AT)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc))
                .or_else(|| l.timestamp_ms.and_then(DateTime::from_timestamp_millis)),
            key: l
                .key
                .as_deref()
                .map(|k| bounded_text(String::from_utf8_lossy(k).into_owned(), SHOWN_KEY_BYTES)),
            replays: replays(l),
            omitted: l.header(headers::OMITTED).filter(|o| !o.is_empty()),
            original_value_size: l
                .header(headers::ORIGINAL_VALUE_SIZE)
                .and_then(|n| n.parse().ok()),
            original_value_sha256: l.header(headers::ORIGINAL_VALUE_SHA256),
        }
    }

    /// Whether the letter holds the whole original record, so that it can be sent back.
    pub fn replayable(&self) -> bool {
        self.omitted.is_none()
    }

    /// Why a letter carrying a reference instead of its record is not replayed, and where the
    /// original is while the data topic retains it.
    pub fn why_not_replayed(&self) -> String {
        format!(
            "not replayed: {} from {}: the dead letter carries a reference, not the record ({} omitted; value {} bytes, sha256 {}); the original is at {} while the data topic retains it",
            self.code,
            self.original,
            self.omitted.as_deref().unwrap_or("-"),
            self.original_value_size
                .map_or("-".to_string(), |n| n.to_string()),
            self.original_value_sha256.as_deref().unwrap_or("-"),
            self.original
        )
    }

    fn selected(&self, selection: &Selection) -> bool {
        selection.code.as_ref().is_none_or(|c| *c == self.code)
            && selection
                .since
                .is_none_or(|since| self.dead_lettered_at.is_some_and(|at| at >= since))
    }
}

fn replays(l: &StoredLetter) -> u32 {
    l.header(headers::REPLAY_COUNT)
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// `dlq ls`: counts per code and the letters, both for the selection.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub topic: String,
    pub counts: BTreeMap<String, u64>,
    pub letters: Vec<Letter>,
    /// Letters of erased images, left out: their bytes stay in the topic until its retention.
    pub erased: usize,
}

/// `dlq replay`: what was (or, with `--dry-run`, would be) sent back.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub to_topic: String,
    pub dry_run: bool,
    pub selected: usize,
    pub replayed: Vec<Letter>,
    /// Letters already replayed `max_replays` times: left in the dead-letter topic.
    pub held_back: Vec<Letter>,
    /// Letters that carry a reference instead of the original value: nothing to send.
    pub not_replayable: Vec<Letter>,
    /// Letters of erased images: never sent back.
    pub erased: usize,
    /// Letters an earlier `dlq replay` already sent back: not sent twice.
    pub already_replayed: Vec<Letter>,
}

/// `imgstream dlq ls` for a person: the count, counts per code, then one line per letter.
impl std::fmt::Display for Listing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} dead letter(s) in {}", self.letters.len(), self.topic)?;
        if self.erased > 0 {
            writeln!(
                f,
                "{} letter(s) of erased images left out (in the topic until its retention)",
                self.erased
            )?;
        }
        for (code, n) in &self.counts {
            writeln!(f, "{n:>8}  {code}")?;
        }
        for l in &self.letters {
            let at = l.dead_lettered_at.map_or("-".into(), |t| t.to_rfc3339());
            let omitted = l
                .omitted
                .as_ref()
                .map_or(String::new(), |o| format!("  [{o} omitted]"));
            writeln!(
                f,
                "{}@{}  {at}  {}  from {}  replays {}{omitted}: {}",
                self.topic, l.dlq_offset, l.code, l.original, l.replays, l.reason
            )?;
        }
        Ok(())
    }
}

impl ReplayReport {
    /// `imgstream dlq replay` for a person: what was (or would be) sent, and what was held back
    /// after `max_replays`. Letters that cannot be replayed are said on stderr, each with
    /// [`Letter::why_not_replayed`].
    pub fn render(&self, max_replays: u32) -> String {
        let verb = if self.dry_run {
            "would replay"
        } else {
            "replayed"
        };
        let mut out = format!(
            "{verb} {} of {} selected letter(s) to {}; {} held back after {max_replays} replays",
            self.replayed.len(),
            self.selected,
            self.to_topic,
            self.held_back.len(),
        );
        if !self.already_replayed.is_empty() {
            out += &format!(
                "; {} sent by an earlier replay, not again",
                self.already_replayed.len()
            );
        }
        if self.erased > 0 {
            out += &format!("; {} of erased images skipped", self.erased);
        }
        out.push('\n');
        for l in &self.held_back {
            out += &format!(
                "held back: {} from {} ({} replays)\n",
                l.code, l.original, l.replays
            );
        }
        out
    }
}

/// The dead-letter topic's letters: all, or the last `last` of each partition.
async fn stored_letters(
    settings: &Settings,
    last: Option<i64>,
) -> Result<Vec<StoredLetter>, BrokerError> {
    let reader = wiring::offsets_reader(settings)?;
    let (topic, timeout) = (settings.kafka.dlq_topic.clone(), settings.connect_timeout);
    off_thread(move || read_letters(&reader, &topic, timeout, last)).await
}

/// The selected letters, and how many of them hold a record an erasure covers (left out).
async fn selected_letters(
    settings: &Settings,
    selection: &Selection,
) -> Result<(Vec<(StoredLetter, Letter)>, usize), DlqError> {
    let stored = stored_letters(settings, None).await?;
    let selected: Vec<(StoredLetter, Letter)> = stored
        .into_iter()
        .map(|s| {
            let letter = Letter::from_stored(&s);
            (s, letter)
        })
        .filter(|(_, letter)| letter.selected(selection))
        .collect();
    let erased = erased_letters(settings, &selected).await?;
    let before = selected.len();
    let kept: Vec<_> = selected
        .into_iter()
        .zip(erased)
        .filter(|(_, erased)| !erased)
        .map(|(letter, _)| letter)
        .collect();
    let left_out = before - kept.len();
    Ok((kept, left_out))
}

/// Which letters carry a record an erasure covers. A letter whose value does not decode (the
/// reason many are letters) names no image or customer, so no erasure can be matched to it.
async fn erased_letters(
    settings: &Settings,
    letters: &[(StoredLetter, Letter)],
) -> Result<Vec<bool>, DlqError> {
    if letters.is_empty() {
        return Ok(Vec::new());
    }
    let codec = wiring::codec(settings).map_err(DlqError::Registry)?;
    let mut probes = Vec::new();
    let mut at = Vec::new();
    for (i, (stored, _)) in letters.iter().enumerate() {
        if let Some(value) = &stored.value
            && let Ok(record) = codec.decode(&bytes::Bytes::copy_from_slice(value)).await
        {
            probes.push(ErasureProbe::of(&record));
            at.push(i);
        }
    }
    let mut erased = vec![false; letters.len()];
    if probes.is_empty() {
        return Ok(erased);
    }
    let index = wiring::index(settings).await?;
    let found = index.erased_among(&probes).await;
    index.close().await;
    for (i, e) in at.into_iter().zip(found?) {
        erased[i] = e;
    }
    Ok(erased)
}

/// Why `dlq ls` or `dlq replay` failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("{0}")]
    Registry(String),
}

pub async fn list(settings: &Settings, selection: &Selection) -> Result<Listing, DlqError> {
    let (selected, erased) = selected_letters(settings, selection).await?;
    let letters: Vec<Letter> = selected.into_iter().map(|(_, letter)| letter).collect();
    let mut counts = BTreeMap::new();
    for letter in &letters {
        *counts.entry(letter.code.clone()).or_default() += 1;
    }
    Ok(Listing {
        topic: settings.kafka.dlq_topic.clone(),
        counts,
        letters,
        erased,
    })
}

/// The most recent `n` dead letters, newest first (by the time they were dead-lettered).
pub async fn recent(settings: &Settings, n: usize) -> Result<Vec<Letter>, BrokerError> {
    let stored = stored_letters(settings, Some(n as i64)).await?;
    let mut letters: Vec<Letter> = stored.iter().map(Letter::from_stored).collect();
    letters.sort_by(|a, b| {
        (b.dead_lettered_at, b.dlq_partition, b.dlq_offset).cmp(&(
            a.dead_lettered_at,
            a.dlq_partition,
            a.dlq_offset,
        ))
    });
    letters.truncate(n);
    Ok(letters)
}

pub async fn replay(
    settings: &Settings,
    selection: &Selection,
    max_replays: u32,
    dry_run: bool,
) -> Result<ReplayReport, DlqError> {
    let (selected, erased) = selected_letters(settings, selection).await?;
    let mut report = ReplayReport {
        to_topic: settings.kafka.data_topic.clone(),
        dry_run,
        selected: selected.len() + erased,
        replayed: Vec::new(),
        held_back: Vec::new(),
        not_replayable: Vec::new(),
        erased,
        already_replayed: Vec::new(),
    };
    // What earlier runs sent: recorded after each send, so a crash between the two sends that
    // one letter again (the consumer stores it once), and nothing else twice.
    let index = wiring::index(settings).await?;
    let topic = &settings.kafka.dlq_topic;
    let sent = index.replayed_letters(topic).await?;
    let producer = if dry_run {
        None
    } else {
        Some(wiring::producer(settings)?)
    };
    for (stored, letter) in selected {
        if !letter.replayable() {
            report.not_replayable.push(letter);
            continue;
        }
        if letter.replays >= max_replays {
            report.held_back.push(letter);
            continue;
        }
        if sent.contains(&(stored.partition, stored.offset)) {
            report.already_replayed.push(letter);
            continue;
        }
        if let Some(producer) = &producer {
            producer
                .send_as_is(
                    stored.key.as_deref(),
                    stored.value.as_deref(),
                    &replay_headers(&stored),
                )
                .await?;
            index
                .record_replay(topic, stored.partition, stored.offset)
                .await?;
        }
        report.replayed.push(letter);
    }
    index.close().await;
    Ok(report)
}

/// The original record's headers under their original names, with the replay count raised by
/// one.
fn replay_headers(letter: &StoredLetter) -> Vec<RecordHeader> {
    let count = replays(letter) + 1;
    letter
        .headers
        .iter()
        .filter_map(|(k, v)| original_key(k).map(|k| (k, v)))
        .filter(|(k, _)| *k != headers::REPLAY_COUNT.as_bytes())
        .map(|(k, v)| (k.to_vec(), v.clone()))
        .chain([(
            headers::REPLAY_COUNT.as_bytes().to_vec(),
            Some(count.to_string().into_bytes()),
        )])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(code: &str, at: &str, extra: &[(&str, &str)]) -> StoredLetter {
        let mut hs: Vec<RecordHeader> = vec![(b"trace-id".to_vec(), Some(b"t1".to_vec()))];
        for (k, v) in extra {
            hs.push((k.as_bytes().to_vec(), Some(v.as_bytes().to_vec())));
        }
        for (k, v) in [
            (headers::CODE, code),
            (headers::CLASS, "invalid"),
            (headers::REASON, "why"),
            (headers::ORIGINAL_TOPIC, "images"),
            (headers::ORIGINAL_PARTITION, "2"),
            (headers::ORIGINAL_OFFSET, "41"),
            (headers::DEAD_LETTERED_AT, at),
        ] {
            hs.push((k.as_bytes().to_vec(), Some(v.as_bytes().to_vec())));
        }
        StoredLetter {
            partition: 0,
            offset: 7,
            timestamp_ms: None,
            key: Some(b"cam-1".to_vec()),
            value: Some(b"value".to_vec()),
            headers: hs,
        }
    }

    #[test]
    fn a_letter_reads_its_reason_its_origin_and_its_replay_count_from_the_headers() {
        let letter = Letter::from_stored(&stored(
            "too-many-pixels",
            "2026-11-26T10:00:00Z",
            &[(headers::REPLAY_COUNT, "2")],
        ));
        assert_eq!(letter.code, "too-many-pixels");
        assert_eq!(letter.original, "images/2@41");
        assert_eq!(letter.replays, 2);
        assert_eq!(letter.key.as_deref(), Some("cam-1"));
    }

    #[test]
    fn a_selection_filters_by_code_and_by_time() {
        let letter = Letter::from_stored(&stored("bad-field", "2026-11-26T10:00:00Z", &[]));
        let at = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc);
        let select = |code: Option<&str>, since: Option<&str>| {
            letter.selected(&Selection {
                code: code.map(str::to_string),
                since: since.map(at),
            })
        };
        assert!(select(None, None));
        assert!(select(Some("bad-field"), Some("2026-11-26T09:59:59Z")));
        assert!(!select(Some("empty-image"), None));
        assert!(!select(None, Some("2026-11-26T10:00:01Z")));
    }

    #[test]
    fn a_replay_keeps_the_original_headers_drops_ours_and_raises_the_count() {
        let first = replay_headers(&stored("bad-field", "2026-11-26T10:00:00Z", &[]));
        assert_eq!(
            first,
            vec![
                (b"trace-id".to_vec(), Some(b"t1".to_vec())),
                (
                    headers::REPLAY_COUNT.as_bytes().to_vec(),
                    Some(b"1".to_vec())
                ),
            ]
        );
        let again = replay_headers(&stored(
            "bad-field",
            "2026-11-26T10:00:00Z",
            &[(headers::REPLAY_COUNT, "1")],
        ));
        assert_eq!(
            again[1],
            (
                headers::REPLAY_COUNT.as_bytes().to_vec(),
                Some(b"2".to_vec())
            )
        );
        assert_eq!(again.len(), 2);
    }

    #[test]
    fn a_letter_shows_our_verdict_even_when_the_producers_header_of_that_name_came_first() {
        // As written before producers' headers were renamed: theirs first, ours after.
        let letter = Letter::from_stored(&stored(
            "bad-field",
            "2026-11-26T10:00:00Z",
            &[
                (headers::CODE, "ok"),
                (headers::ORIGINAL_TOPIC, "elsewhere"),
            ],
        ));
        assert_eq!(letter.code, "bad-field");
        assert_eq!(letter.original, "images/2@41");
    }

    #[test]
    fn a_replay_restores_renamed_producer_headers_under_their_own_names() {
        let mut letter = stored("bad-field", "2026-11-26T10:00:00Z", &[]);
        letter.headers.insert(
            1,
            (
                [headers::RENAMED.as_bytes(), headers::CODE.as_bytes()].concat(),
                Some(b"ok".to_vec()),
            ),
        );
        letter.headers.insert(2, (vec![0xff, b'k'], None));
        assert_eq!(
            replay_headers(&letter),
            vec![
                (b"trace-id".to_vec(), Some(b"t1".to_vec())),
                (headers::CODE.as_bytes().to_vec(), Some(b"ok".to_vec())),
                (vec![0xff, b'k'], None),
                (
                    headers::REPLAY_COUNT.as_bytes().to_vec(),
                    Some(b"1".to_vec())
                ),
            ]
        );
    }

    #[test]
    fn a_letter_that_omits_its_value_is_not_replayable_and_says_what_stands_in() {
        let letter = Letter::from_stored(&stored(
            "bad-field",
            "2026-11-26T10:00:00Z",
            &[
                (headers::OMITTED, "value"),
                (headers::ORIGINAL_VALUE_SIZE, "1048000"),
                (headers::ORIGINAL_VALUE_SHA256, "ab"),
            ],
        ));
        assert!(!letter.replayable());
        assert_eq!(letter.original_value_size, Some(1_048_000));
        assert_eq!(letter.original_value_sha256.as_deref(), Some("ab"));
        let whole = Letter::from_stored(&stored("bad-field", "2026-11-26T10:00:00Z", &[]));
        assert!(whole.replayable());
    }

    #[test]
    fn a_listing_renders_the_counts_then_one_line_per_letter() {
        let letter = Letter::from_stored(&stored("bad-field", "2026-11-26T10:00:00Z", &[]));
        let listing = Listing {
            topic: "images-dlq".into(),
            counts: BTreeMap::from([("bad-field".to_string(), 1)]),
            letters: vec![letter],
            erased: 0,
        };
        assert_eq!(
            listing.to_string(),
            "1 dead letter(s) in images-dlq\n       1  bad-field\n\
             images-dlq@7  2026-11-26T10:00:00+00:00  bad-field  from images/2@41  replays 0: why\n"
        );
    }

    #[test]
    fn a_dry_run_says_what_would_be_replayed_and_what_is_held_back() {
        let at = "2026-11-26T10:00:00Z";
        let fresh = Letter::from_stored(&stored("bad-field", at, &[]));
        let tired = Letter::from_stored(&stored("bad-field", at, &[(headers::REPLAY_COUNT, "3")]));
        let report = ReplayReport {
            to_topic: "images".into(),
            dry_run: true,
            selected: 2,
            replayed: vec![fresh],
            held_back: vec![tired],
            not_replayable: Vec::new(),
            erased: 1,
            already_replayed: Vec::new(),
        };
        assert_eq!(
            report.render(3),
            "would replay 1 of 2 selected letter(s) to images; 1 held back after 3 replays; 1 of erased images skipped\n\
             held back: bad-field from images/2@41 (3 replays)\n"
        );
    }

    #[test]
    fn a_letter_without_its_record_says_where_the_original_is() {
        let letter = Letter::from_stored(&stored(
            "record-too-large",
            "2026-11-26T10:00:00Z",
            &[
                (headers::OMITTED, "value"),
                (headers::ORIGINAL_VALUE_SIZE, "9000000"),
            ],
        ));
        assert_eq!(
            letter.why_not_replayed(),
            "not replayed: record-too-large from images/2@41: the dead letter carries a reference, \
             not the record (value omitted; value 9000000 bytes, sha256 -); the original is at \
             images/2@41 while the data topic retains it"
        );
    }
}

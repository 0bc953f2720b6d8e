//! `imgstream dlq ls` and `imgstream dlq replay`: look at the dead letters, and send the ones whose
//! cause is fixed back to the data topic.
//!
//! A replay sends the original key, value and headers unchanged, plus a replay count
//! (`imgstream.replay.count`). The count travels with the record: if it fails again, its new dead
//! letter carries the raised count, and a letter replayed `max_replays` times is not sent again.
//! Replaying the same letter twice is harmless: the commit protocol stores a record once however
//! often it arrives.

use crate::config::Settings;
use crate::kafka::dlq::{StoredLetter, headers, read_letters};
use crate::kafka::{BrokerError, off_thread};
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
}

impl Letter {
    fn from_stored(l: &StoredLetter) -> Letter {
        let header = |name| l.header(name).unwrap_or_default();
        Letter {
            dlq_partition: l.partition,
            dlq_offset: l.offset,
            code: header(headers::CODE),
            class: header(headers::CLASS),
            reason: header(headers::REASON),
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
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            replays: replays(l),
        }
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

async fn selected_letters(
    settings: &Settings,
    selection: &Selection,
) -> Result<Vec<(StoredLetter, Letter)>, BrokerError> {
    let stored = stored_letters(settings, None).await?;
    Ok(stored
        .into_iter()
        .map(|s| {
            let letter = Letter::from_stored(&s);
            (s, letter)
        })
        .filter(|(_, letter)| letter.selected(selection))
        .collect())
}

pub async fn list(settings: &Settings, selection: &Selection) -> Result<Listing, BrokerError> {
    let letters: Vec<Letter> = selected_letters(settings, selection)
        .await?
        .into_iter()
        .map(|(_, letter)| letter)
        .collect();
    let mut counts = BTreeMap::new();
    for letter in &letters {
        *counts.entry(letter.code.clone()).or_default() += 1;
    }
    Ok(Listing {
        topic: settings.kafka.dlq_topic.clone(),
        counts,
        letters,
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
) -> Result<ReplayReport, BrokerError> {
    let selected = selected_letters(settings, selection).await?;
    let mut report = ReplayReport {
        to_topic: settings.kafka.data_topic.clone(),
        dry_run,
        selected: selected.len(),
        replayed: Vec::new(),
        held_back: Vec::new(),
    };
    let producer = if dry_run {
        None
    } else {
        Some(wiring::producer(settings)?)
    };
    for (stored, letter) in selected {
        if letter.replays >= max_replays {
            report.held_back.push(letter);
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
        }
        report.replayed.push(letter);
    }
    Ok(report)
}

/// The original record's headers, with the replay count raised by one.
fn replay_headers(letter: &StoredLetter) -> Vec<(String, Option<Vec<u8>>)> {
    let count = replays(letter) + 1;
    letter
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with(headers::PREFIX) && k != headers::REPLAY_COUNT)
        .cloned()
        .chain([(
            headers::REPLAY_COUNT.to_string(),
            Some(count.to_string().into_bytes()),
        )])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(code: &str, at: &str, extra: &[(&str, &str)]) -> StoredLetter {
        let mut hs: Vec<(String, Option<Vec<u8>>)> =
            vec![("trace-id".into(), Some(b"t1".to_vec()))];
        for (k, v) in extra {
            hs.push((k.to_string(), Some(v.as_bytes().to_vec())));
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
            hs.push((k.to_string(), Some(v.as_bytes().to_vec())));
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
                ("trace-id".to_string(), Some(b"t1".to_vec())),
                (headers::REPLAY_COUNT.to_string(), Some(b"1".to_vec())),
            ]
        );
        let again = replay_headers(&stored(
            "bad-field",
            "2026-11-26T10:00:00Z",
            &[(headers::REPLAY_COUNT, "1")],
        ));
        assert_eq!(
            again[1],
            (headers::REPLAY_COUNT.to_string(), Some(b"2".to_vec()))
        );
        assert_eq!(again.len(), 2);
    }
}

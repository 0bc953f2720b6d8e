//! The pipeline at a glance, read from the services themselves: per-partition lag of the consumer
//! group, index rows (never a listing of the bucket), rows stored per minute, and the dead-letter topic's depth and latest
//! letters. Taken at most once per [`FRESH_FOR`], however many people reload the page.

use super::{App, ServeError};
use crate::audit::{self, Status};
use crate::dlq::{self, Letter};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How long a taken overview is shown before it is taken again.
pub const FRESH_FOR: Duration = Duration::from_secs(2);
/// Minutes of throughput shown.
pub const MINUTES: u32 = 15;
/// Dead letters shown.
pub const RECENT_LETTERS: usize = 20;

#[derive(Debug, Clone, Serialize)]
pub struct MinuteCount {
    pub minute: DateTime<Utc>,
    pub rows: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub taken_at: DateTime<Utc>,
    #[serde(flatten)]
    pub status: Status,
    /// Rows stored per minute, oldest first, the current minute last.
    pub stored_per_minute: Vec<MinuteCount>,
    pub recent_dead_letters: Vec<Letter>,
}

#[derive(Default)]
pub struct OverviewCache {
    latest: Mutex<Option<(Instant, Arc<Overview>)>>,
}

impl OverviewCache {
    /// The latest overview, taken now if the last one is stale. Callers arriving while one is
    /// being taken wait for it rather than take their own.
    pub async fn get(&self, app: &App) -> Result<Arc<Overview>, ServeError> {
        let mut latest = self.latest.lock().await;
        if let Some((at, overview)) = latest.as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return Ok(overview.clone());
        }
        let overview = Arc::new(take(app).await?);
        *latest = Some((Instant::now(), overview.clone()));
        Ok(overview)
    }
}

async fn take(app: &App) -> Result<Overview, ServeError> {
    let broker = |e: crate::kafka::BrokerError| ServeError::Unavailable(e.to_string());
    // Kafka, the index and the dead-letter topic answer side by side: one after another, they
    // took about a second on a million rows.
    let (status, stored_per_minute, recent_dead_letters) = tokio::join!(
        audit::status(&app.settings, &app.store, &app.index, false),
        app.index.stored_per_minute(app.store.bucket(), MINUTES),
        dlq::recent(&app.settings, RECENT_LETTERS),
    );
    let status = status.map_err(|e| match e {
        audit::AuditError::Store(e) => e.into(),
        audit::AuditError::Index(e) => e.into(),
        audit::AuditError::Broker(e) => broker(e),
    })?;
    let stored_per_minute = stored_per_minute?
        .into_iter()
        .map(|(minute, rows)| MinuteCount { minute, rows })
        .collect();
    Ok(Overview {
        taken_at: Utc::now(),
        status,
        stored_per_minute,
        recent_dead_letters: recent_dead_letters.map_err(broker)?,
    })
}

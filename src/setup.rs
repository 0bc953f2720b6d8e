//! `imgstream setup`: everything the pipeline needs, created in code and idempotent — index
//! migrations, the data and dead-letter topics, the bucket, and the registered value schema.
//! `--check` changes nothing and lists what is missing or different.

use crate::config::Settings;
use crate::index::{Access, ImageIndex, RoleAudit};
use crate::kafka::admin::{Shortfall, TopicState, data_topic_spec, dlq_topic_spec};
use crate::schema::{RegistryError, SUBJECT_COMPATIBILITY, value_subject};
use crate::wiring;
use std::fmt;
use std::time::Duration;

/// One thing setup looks after, and how it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub service: &'static str,
    pub name: String,
    pub state: State,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Ok,
    Changed(String),
    Missing(String),
    Unreachable(String),
    Failed(String),
    /// Present, but this identity may not see enough to check it; not a problem.
    Unchecked(String),
    /// Differs from what setup would make, in a way that threatens nothing (an operator's
    /// choice, or a retention below the setting): reported, never refused.
    Noted(String),
}

impl State {
    pub fn is_problem(&self) -> bool {
        matches!(
            self,
            State::Missing(_) | State::Unreachable(_) | State::Failed(_)
        )
    }
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (tag, detail) = match &self.state {
            State::Ok => ("ok", String::new()),
            State::Changed(d) => ("done", d.clone()),
            State::Missing(d) => ("missing", d.clone()),
            State::Unreachable(d) => ("unreachable", d.clone()),
            State::Failed(d) => ("failed", d.clone()),
            State::Unchecked(d) => ("unchecked", d.clone()),
            State::Noted(d) => ("note", d.clone()),
        };
        write!(f, "{:<11} {:<10} {}", tag, self.service, self.name)?;
        if !detail.is_empty() {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

/// Runs setup (or only checks when `check_only`), one service after another, each bounded by the
/// connect timeout so that a service that is down is named instead of hanging the command.
pub async fn run(settings: &Settings, schema: &str, check_only: bool) -> Vec<Item> {
    let mut items = Vec::new();
    items.extend(index(settings, check_only).await);
    items.extend(topics(settings, check_only, &TOPICS_CONSUMED).await);
    items.push(bucket(settings, check_only).await);
    items.extend(registry(settings, schema, check_only).await);
    items
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topic {
    Data,
    DeadLetters,
}
const TOPICS_CONSUMED: [Topic; 2] = [Topic::Data, Topic::DeadLetters];

/// Which command a preflight is for: each checks only the services it uses, so a least-privilege
/// identity is not asked for what it neither has nor needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// The data topic and the registered schema.
    Producer,
    /// Everything setup looks after.
    Consumer,
}

async fn bounded<T>(
    timeout: Duration,
    what: &str,
    fut: impl Future<Output = T>,
) -> Result<T, String> {
    tokio::time::timeout(timeout * 2, fut)
        .await
        .map_err(|_| format!("{what} did not answer within {}s", (timeout * 2).as_secs()))
}

async fn index(settings: &Settings, check_only: bool) -> Vec<Item> {
    let url = &settings.database_url;
    let item = |state| Item {
        service: "postgresql",
        name: format!(
            "migrations in {} at {}",
            url.database_name(),
            url.host_port()
        ),
        state,
    };
    let timeout = settings.connect_timeout;
    let index = match bounded(timeout, "PostgreSQL", wiring::index(settings)).await {
        Ok(Ok(index)) => index,
        Ok(Err(e)) => return vec![item(State::Unreachable(e.to_string()))],
        Err(e) => return vec![item(State::Unreachable(e))],
    };
    let pending = match index.pending_migrations().await {
        Ok(p) => p,
        Err(e) => return vec![item(State::Failed(e.to_string()))],
    };
    let state = if pending.is_empty() {
        State::Ok
    } else if check_only {
        State::Missing(format!("pending: {}", pending.join(", ")))
    } else {
        match index.migrate().await {
            Ok(()) => State::Changed(format!("applied {}", pending.join(", "))),
            Err(e) => State::Failed(e.to_string()),
        }
    };
    let migrated = !state.is_problem();
    let mut items = vec![item(state)];
    if migrated {
        let roles = [
            (settings.app_role.as_deref(), Access::ReadInsert),
            (settings.reader_role.as_deref(), Access::Read),
            (settings.serve_role.as_deref(), Access::Serve),
            (settings.eraser_role.as_deref(), Access::Erase),
        ];
        for (role, access) in roles {
            if let Some(role) = role {
                items.push(role_item(&index, role, access, check_only).await);
            }
        }
    }
    index.close().await;
    items
}

/// The privileges of an application role on the index: exactly what its access needs.
async fn role_item(index: &ImageIndex, role: &str, access: Access, check_only: bool) -> Item {
    let item = |state| Item {
        service: "postgresql",
        name: format!(
            "role {role} may only {} the index",
            match access {
                Access::ReadInsert => "read and insert into",
                Access::Read => "read",
                Access::Serve => "read the images of",
                Access::Erase => "read and delete from",
            }
        ),
        state,
    };
    let audit = match index.audit_role(role, access).await {
        Ok(Some(audit)) => audit,
        Ok(None) => {
            return item(State::Failed(format!(
                "role {role} does not exist; create it (CREATE ROLE {role} LOGIN PASSWORD '…') and run `imgstream setup` again"
            )));
        }
        Err(e) => return item(State::Failed(e.to_string())),
    };
    if audit.is_exact() {
        return item(State::Ok);
    }
    let describe = |a: &RoleAudit| {
        let mut parts = Vec::new();
        if !a.missing.is_empty() {
            parts.push(format!("lacks {}", a.missing.join(", ")));
        }
        if !a.excess.is_empty() {
            parts.push(format!("also holds {}", a.excess.join(", ")));
        }
        parts.join("; ")
    };
    // An owner or superuser cannot be narrowed, and revoking from the owner would only weaken the
    // identity that runs setup: refuse before changing anything.
    let unnarrowable: Vec<&String> = audit
        .excess
        .iter()
        .filter(|e| *e == "ownership of images" || *e == "superuser")
        .collect();
    if !unnarrowable.is_empty() {
        return item(State::Failed(format!(
            "role {role} has {}, which no grant can narrow; give the application a role of its own",
            unnarrowable
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" and ")
        )));
    }
    if check_only {
        return item(State::Missing(describe(&audit)));
    }
    if let Err(e) = index.grant_role(role, access).await {
        return item(State::Failed(e.to_string()));
    }
    match index.audit_role(role, access).await {
        Ok(Some(after)) if after.is_exact() => item(State::Changed(format!(
            "granted and revoked: it {}",
            describe(&audit)
                .replace("lacks", "lacked")
                .replace("also holds", "also held")
        ))),
        Ok(Some(after)) => item(State::Failed(format!(
            "role {role} {} even after the grants and revokes (through ownership, superuser or membership of a stronger role); give the application a role of its own",
            describe(&after)
        ))),
        Ok(None) => item(State::Failed(format!(
            "role {role} disappeared during setup"
        ))),
        Err(e) => item(State::Failed(e.to_string())),
    }
}

async fn topics(settings: &Settings, check_only: bool, which: &[Topic]) -> Vec<Item> {
    let kafka = &settings.kafka;
    let specs: Vec<_> = which
        .iter()
        .map(|t| match t {
            Topic::Data => data_topic_spec(kafka, &settings.limits),
            Topic::DeadLetters => dlq_topic_spec(kafka, &settings.limits),
        })
        .collect();
    let item = |name: &str, state| Item {
        service: "kafka",
        name: format!("topic {name}"),
        state,
    };
    let admin = match wiring::topic_admin(settings) {
        Ok(a) => a,
        Err(e) => {
            return specs
                .iter()
                .map(|s| item(&s.name, State::Failed(e.to_string())))
                .collect();
        }
    };
    // librdkafka's metadata call blocks; keep it off the async thread.
    let admin = std::sync::Arc::new(admin);
    let probe = {
        let admin = admin.clone();
        crate::kafka::off_thread(move || admin.metadata(None)).await
    };
    if let Err(e) = probe {
        return specs
            .iter()
            .map(|s| item(&s.name, State::Unreachable(e.to_string())))
            .collect();
    }
    let mut items = Vec::new();
    for spec in &specs {
        let state = if check_only {
            match admin.state(spec).await {
                Ok(TopicState::Present(shortfalls)) => checked(&shortfalls),
                Ok(TopicState::Missing) => State::Missing("does not exist".into()),
                Ok(TopicState::ConfigHidden) => State::Unchecked(
                    "exists; its settings are not visible to this identity (no DescribeConfigs), so not checked".into(),
                ),
                Err(e) => State::Failed(e.to_string()),
            }
        } else {
            match admin.ensure(spec).await {
                Ok(ensured) => match (ensured.done, ensured.left.is_empty()) {
                    (None, true) => State::Ok,
                    (None, false) => State::Noted(ensured.left.join("; ")),
                    (Some(done), true) => State::Changed(done),
                    (Some(done), false) => State::Changed(format!(
                        "{done}; left as found: {}",
                        ensured.left.join("; ")
                    )),
                },
                Err(e) => State::Failed(e.to_string()),
            }
        };
        items.push(item(&spec.name, state));
    }
    items
}

/// What `--check` (and a producer's or consumer's preflight) makes of a topic's shortfalls: only
/// one that stops imgstream working is missing; the rest are noted.
fn checked(shortfalls: &[Shortfall]) -> State {
    if shortfalls.is_empty() {
        return State::Ok;
    }
    let detail = shortfalls
        .iter()
        .map(|s| {
            if s.setup_mends() && !s.blocks {
                format!("{}; `imgstream setup` raises it", s.detail)
            } else {
                s.detail.clone()
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    if shortfalls.iter().any(|s| s.blocks) {
        State::Missing(detail)
    } else {
        State::Noted(detail)
    }
}

/// How setup names the bucket in its report: name and endpoint, credentials left out.
fn bucket_name(settings: &Settings) -> String {
    format!(
        "bucket {} at {}",
        settings.store.bucket,
        crate::config::redact_url(&settings.store.endpoint)
    )
}

async fn bucket(settings: &Settings, check_only: bool) -> Item {
    let item = |state| Item {
        service: "minio",
        name: bucket_name(settings),
        state,
    };
    let store = match wiring::store(settings) {
        Ok(s) => s,
        Err(e) => return item(State::Failed(e.to_string())),
    };
    let timeout = settings.connect_timeout;
    let exists = match bounded(timeout, "MinIO", store.bucket_exists()).await {
        Ok(Ok(exists)) => exists,
        Ok(Err(e)) => return item(State::Unreachable(e.to_string())),
        Err(e) => return item(State::Unreachable(e)),
    };
    if exists {
        match store.check_write_options().await {
            Ok(()) => item(State::Ok),
            Err(e) => item(State::Failed(e.to_string())),
        }
    } else if check_only {
        item(State::Missing("does not exist".into()))
    } else {
        match store.create_bucket().await {
            Ok(_) => item(State::Changed("created".into())),
            Err(e) => item(State::Failed(e.to_string())),
        }
    }
}

/// The producer's check of the bucket: that it takes the write options.
async fn write_options(settings: &Settings) -> Item {
    let item = |state| Item {
        service: "minio",
        name: bucket_name(settings),
        state,
    };
    let store = match wiring::store(settings) {
        Ok(s) => s,
        Err(e) => return item(State::Failed(e.to_string())),
    };
    match bounded(
        settings.connect_timeout,
        "MinIO",
        store.check_write_options(),
    )
    .await
    {
        Ok(Ok(())) => item(State::Ok),
        Ok(Err(crate::store::StoreError::NoBucket { .. })) => {
            item(State::Missing("does not exist".into()))
        }
        Ok(Err(e @ crate::store::StoreError::Unavailable { .. })) => {
            item(State::Unreachable(e.to_string()))
        }
        Ok(Err(e)) => item(State::Failed(e.to_string())),
        Err(e) => item(State::Unreachable(e)),
    }
}

async fn registry(settings: &Settings, schema: &str, check_only: bool) -> Vec<Item> {
    let subject = value_subject(&settings.kafka.data_topic);
    let schema_item = |state| Item {
        service: "registry",
        name: format!("schema under {subject}"),
        state,
    };
    let level_item = |state| Item {
        service: "registry",
        name: format!("compatibility {SUBJECT_COMPATIBILITY} on {subject}"),
        state,
    };
    let client = match wiring::registry(settings) {
        Ok(c) => c,
        Err(e) => return vec![schema_item(State::Failed(e.to_string()))],
    };
    let unreachable = |e: RegistryError| {
        if e.is_transient() {
            State::Unreachable(e.to_string())
        } else {
            State::Failed(e.to_string())
        }
    };
    let found = match client.lookup(&subject, schema).await {
        Ok(found) => found,
        Err(e) => return vec![schema_item(unreachable(e))],
    };
    let schema_state = match (found, check_only) {
        (Some(_), _) => State::Ok,
        (None, true) => State::Missing("this schema is not registered".into()),
        (None, false) => match client.register(&subject, schema).await {
            Ok(id) => State::Changed(format!("registered with id {id}")),
            Err(e) => unreachable(e),
        },
    };
    if schema_state.is_problem() {
        return vec![schema_item(schema_state)];
    }
    let level_state = match client.compatibility_level(&subject).await {
        Ok(Some(level)) if level.eq_ignore_ascii_case(SUBJECT_COMPATIBILITY) => State::Ok,
        Ok(current) if check_only => {
            State::Missing(format!("is {}", current.unwrap_or_else(|| "unset".into())))
        }
        Ok(_) => match client
            .set_compatibility_level(&subject, SUBJECT_COMPATIBILITY)
            .await
        {
            Ok(()) => State::Changed("set".into()),
            Err(e) => unreachable(e),
        },
        Err(e) => unreachable(e),
    };
    vec![schema_item(schema_state), level_item(level_state)]
}

/// What the consumer and producer need before they start; a one-line error that names the
/// missing piece and says to run setup.
pub async fn preflight(settings: &Settings, schema: &str, needs: Needs) -> Result<(), String> {
    let items = match needs {
        Needs::Consumer => run(settings, schema, true).await,
        Needs::Producer => {
            let mut items = topics(settings, true, &[Topic::Data]).await;
            items.extend(registry(settings, schema, true).await);
            // Large images go to the bucket with the write options: a refused option is
            // named now rather than at the first large image. Checked by the write itself (a
            // multipart upload started and aborted), which is all the producer's key may do:
            // it may not list the bucket (deploy/policies/s3-producer.json).
            if settings.store.write != crate::config::WriteOptions::default() {
                items.push(write_options(settings).await);
            }
            items
        }
    };
    // Only what is missing is setup's to fix; a refused login or an outage says its own fix.
    let missing = items.iter().any(|i| matches!(i.state, State::Missing(_)));
    let mut problems: Vec<String> = Vec::new();
    for item in items {
        let problem = match item.state {
            State::Unreachable(d) | State::Failed(d) => d,
            State::Missing(d) => format!("{} {}: {d}", item.service, item.name),
            State::Noted(d) => {
                tracing::warn!("{} {}: {d}", item.service, item.name);
                continue;
            }
            State::Ok | State::Changed(_) | State::Unchecked(_) => continue,
        };
        // One cause (a refused login) fails every item of its service alike: say it once.
        if !problems.contains(&problem) {
            problems.push(problem);
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let hint = if missing {
        "; run `imgstream setup`"
    } else {
        ""
    };
    Err(format!("not ready: {}{hint}", problems.join("; ")))
}

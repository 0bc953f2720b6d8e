//! Settings, read once from the environment and an optional `.env` file, with the original demo's
//! variable names. Every problem is reported by the variable's name; secrets are never printed.

mod kafka_security;
mod redact;
mod serve;

use crate::validate::{IdCharacters, IdRules};
pub use kafka_security::ClientProperties;
pub use redact::{redact, redact_url};
pub use serve::{BrowserSettings, OidcSettings, Secret, ServeSettings};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use url::Url;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

fn invalid(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// Which group protocol the consumer speaks (`KAFKA_GROUP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupProtocol {
    /// The original protocol: members join, a leader assigns (cooperative-sticky here), the
    /// client sets its own session timeout and heartbeat interval.
    Classic,
    /// KIP-848: the broker assigns and moves partitions one member at a time, over heartbeats;
    /// the session timeout and heartbeat interval are the broker's
    /// (`group.consumer.session.timeout.ms`, `group.consumer.heartbeat.interval.ms`).
    Consumer,
}

impl GroupProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }
}

/// Where auto offset reset points when the group has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
}

impl OffsetReset {
    pub fn as_str(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// Security and any other librdkafka properties, for every Kafka client.
    pub client: ClientProperties,
    pub bootstrap_servers: String,
    pub group_id: String,
    /// Static membership (`group.instance.id`): a member restarted under the same id within the
    /// session timeout gets its partitions back without a rebalance.
    pub group_instance_id: Option<String>,
    /// How long the group waits for a silent member before it hands the member's partitions on
    /// (`session.timeout.ms`). It must outlast a broker's failure detection: until the
    /// controller fences a dead broker (its `broker.session.timeout.ms`, 9 s by default), a group
    /// coordinator whose offsets partition had that broker in sync cannot answer heartbeats.
    /// Under [`GroupProtocol::Consumer`] the broker decides it; this is then Kafka's default,
    /// used only for how long a member waits to rejoin before it gives up.
    pub session_timeout: Duration,
    pub group_protocol: GroupProtocol,
    pub auto_offset_reset: OffsetReset,
    pub data_topic: String,
    pub dlq_topic: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// The data topic's `retention.ms` that `setup` asks for at least (`KAFKA_DATA_RETENTION_MS`);
    /// -1 keeps records forever. A longer retention an operator set is kept.
    pub data_retention_ms: i64,
    /// The same for the dead-letter topic (`KAFKA_DLQ_RETENTION_MS`).
    pub dlq_retention_ms: i64,
    /// librdkafka `debug` contexts (e.g. `cgrp,fetch`), for diagnosing the client itself.
    pub debug: Option<String>,
    /// Producer compression: none, lz4, snappy or gzip.
    pub compression: String,
}

/// A user and a password; the password never appears in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BasicAuth({}:<redacted>)", self.user)
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// Full endpoint URL, e.g. `http://127.0.0.1:9000`.
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// `MINIO_CREDENTIALS=aws`: credentials from the AWS chain (these `AWS_*` settings: keys with
    /// a session token, web identity / IRSA, the container endpoint, else instance metadata)
    /// instead of the keys above.
    pub aws_chain: Option<Vec<(String, String)>>,
    /// `MINIO_VIRTUAL_HOSTED_STYLE=true`: the bucket in the host name (`bucket.s3.…`), as AWS S3
    /// prefers, instead of in the path (`…/bucket`, what MinIO serves without a domain).
    pub virtual_hosted: bool,
    pub region: String,
    /// `MINIO_CA_FILE`: a PEM bundle trusted besides the system's roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// `MINIO_PUBLIC_ENDPOINT`: where browsers reach the store, when that differs from where
    /// imgstream does (a container network, a cluster-internal service name). Presigned URLs are
    /// signed for it.
    pub public_endpoint: Option<String>,
    /// Encryption, storage class and tags for every object written.
    pub write: WriteOptions,
}

impl fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSettings")
            .field("endpoint", &redact_url(&self.endpoint))
            .field(
                "public_endpoint",
                &self.public_endpoint.as_deref().map(redact_url),
            )
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field(
                "aws_chain",
                // Names only: the values hold secret keys and session tokens.
                &self
                    .aws_chain
                    .as_ref()
                    .map(|vars| vars.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>()),
            )
            .finish()
    }
}

/// A PostgreSQL URL; its password never appears in Debug or Display.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(Url);

impl DatabaseUrl {
    /// The URL with the password, for the client library only.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    pub fn database_name(&self) -> &str {
        self.0.path().trim_start_matches('/')
    }

    /// The same server and credentials, another database.
    pub fn with_database(&self, name: &str) -> DatabaseUrl {
        let mut url = self.0.clone();
        url.set_path(&format!("/{name}"));
        DatabaseUrl(url)
    }

    pub fn host_port(&self) -> String {
        format!(
            "{}:{}",
            self.0.host_str().unwrap_or("?"),
            self.0.port().unwrap_or(5432)
        )
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        f.write_str(shown.as_str())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    /// `IMGSTREAM_MAX_IMAGE_BYTES`: the largest image, inline or uploaded.
    pub max_image_bytes: usize,
    /// `IMGSTREAM_INLINE_MAX_BYTES`: the largest image a record carries itself; a larger one is
    /// uploaded first and referenced (docs/claim-check.md).
    pub inline_max_bytes: usize,
    /// `IMGSTREAM_UPLOAD_PART_BYTES`: an upload larger than this goes in multipart parts of this
    /// size, two in flight.
    pub upload_part_bytes: usize,
    pub max_pixels: u64,
    /// `IMGSTREAM_MAX_ID_CHARS` and `IMGSTREAM_ID_CHARACTERS`: what `customer_id` and `source_id`
    /// may hold.
    pub ids: IdRules,
}

impl LimitSettings {
    /// `max.message.bytes` for the data topic: the largest image plus room for the record's other
    /// fields, the wire-format header and Kafka's batch overhead.
    pub fn max_message_bytes(&self) -> usize {
        self.inline_max_bytes + RECORD_ENVELOPE_BYTES
    }
}

/// Room a record needs besides its image: the other fields (ids of up to 512 four-byte
/// characters each), the key, the wire-format header and Kafka's batch overhead. With the default
/// `IMGSTREAM_INLINE_MAX_BYTES`, `max.message.bytes` is exactly 1 MiB, what a topic gets by default.
pub const RECORD_ENVELOPE_BYTES: usize = 16 * 1024;

/// `IMGSTREAM_INLINE_MAX_BYTES` by default: what fits a topic left at Kafka's 1 MiB.
pub const DEFAULT_INLINE_MAX_BYTES: usize = (1 << 20) - RECORD_ENVELOPE_BYTES;

/// Server-side encryption of the objects imgstream writes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Encryption {
    #[default]
    None,
    /// SSE-S3 (`AES256`): keys the store manages.
    S3,
    /// SSE-KMS (`aws:kms`), with the store's default key or the one named.
    Kms { key_id: Option<String> },
}

/// Options sent with every object imgstream writes (images, uploads, thumbnails), as Vector's and
/// Confluent's S3 sinks offer them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteOptions {
    /// `MINIO_SERVER_SIDE_ENCRYPTION` (`AES256` or `aws:kms`) and `MINIO_SSE_KMS_KEY_ID`.
    pub encryption: Encryption,
    /// `MINIO_STORAGE_CLASS`, e.g. `STANDARD_IA`; the store's default when unset.
    pub storage_class: Option<String>,
    /// `MINIO_OBJECT_TAGS=customer,source`: tag each object with its record's customer and
    /// source, for lifecycle rules and cost reports.
    pub tag_customer: bool,
    pub tag_source: bool,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub customer_id: String,
    pub database_url: DatabaseUrl,
    pub store: StoreSettings,
    pub registry_url: String,
    /// `SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO=user:secret`, the Confluent clients' convention.
    pub registry_auth: Option<BasicAuth>,
    /// `SCHEMA_REGISTRY_SSL_CA_LOCATION`: a PEM bundle trusted besides the system's roots.
    pub registry_ca_file: Option<PathBuf>,
    /// `DATABASE_APP_ROLE`: the PostgreSQL role the consumer runs as; `setup` grants it SELECT and
    /// INSERT on the index and nothing more.
    pub app_role: Option<String>,
    /// `DATABASE_READER_ROLE`: the role `status` and `verify` run as; SELECT only.
    pub reader_role: Option<String>,
    /// `DATABASE_SERVE_ROLE`: the role `serve` runs as; SELECT on `images` alone (it never reads
    /// the erasure records).
    pub serve_role: Option<String>,
    /// `DATABASE_ERASER_ROLE`: the role `erase` and `retain` run as; SELECT and DELETE on the
    /// index, and the erasure records.
    pub eraser_role: Option<String>,
    /// `IMGSTREAM_RETENTION` (e.g. `400d`): `retain` erases images created longer ago than this.
    /// Unset: images are kept forever.
    pub retention: Option<Duration>,
    pub limits: LimitSettings,
    /// How long to wait for a service to answer before calling it unreachable.
    pub connect_timeout: Duration,
}

/// Every field, the URLs' credentials masked. The fields are named one by one, so a field added to
/// `Settings` does not compile here until someone has decided whether it can hold a secret.
impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Settings {
            kafka,
            customer_id,
            database_url,
            store,
            registry_url,
            registry_auth,
            registry_ca_file,
            app_role,
            reader_role,
            serve_role,
            eraser_role,
            retention,
            limits,
            connect_timeout,
        } = self;
        f.debug_struct("Settings")
            .field("kafka", kafka)
            .field("customer_id", customer_id)
            .field("database_url", database_url)
            .field("store", store)
            .field("registry_url", &redact_url(registry_url))
            .field("registry_auth", registry_auth)
            .field("registry_ca_file", registry_ca_file)
            .field("app_role", app_role)
            .field("reader_role", reader_role)
            .field("serve_role", serve_role)
            .field("eraser_role", eraser_role)
            .field("retention", retention)
            .field("limits", limits)
            .field("connect_timeout", connect_timeout)
            .finish()
    }
}

/// The variables settings are read from: the process environment, with `.env` (or the file
/// named by `IMGSTREAM_ENV_FILE`) filling in what is unset. Tools that derive settings of their
/// own (the benchmark) start from this map, so they read configuration the way `imgstream` does.
pub fn load_vars() -> Result<HashMap<String, String>, ConfigError> {
    let env_file = std::env::var("IMGSTREAM_ENV_FILE").unwrap_or_else(|_| ".env".to_string());
    let mut vars = read_env_file(Path::new(&env_file))?;
    vars.extend(std::env::vars());
    Ok(vars)
}

/// Secrets that may come from a file instead (`<NAME>_FILE=/run/secrets/…`, as container
/// orchestrators mount them), so they need not sit in the environment.
const SECRET_FILES: [(&str, &str); 8] = [
    ("KAFKA_SASL_PASSWORD", "KAFKA_SASL_PASSWORD_FILE"),
    ("KAFKA_SSL_KEY_PASSWORD", "KAFKA_SSL_KEY_PASSWORD_FILE"),
    ("MINIO_ACCESS_KEY", "MINIO_ACCESS_KEY_FILE"),
    ("MINIO_SECRET_KEY", "MINIO_SECRET_KEY_FILE"),
    (
        "IMGSTREAM_SERVE_S3_ACCESS_KEY",
        "IMGSTREAM_SERVE_S3_ACCESS_KEY_FILE",
    ),
    (
        "IMGSTREAM_SERVE_S3_SECRET_KEY",
        "IMGSTREAM_SERVE_S3_SECRET_KEY_FILE",
    ),
    (
        "DATABASE_CONNECTION_STRING",
        "DATABASE_CONNECTION_STRING_FILE",
    ),
    (
        "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO",
        "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO_FILE",
    ),
];

/// `vars` with each `<NAME>_FILE` read into `<NAME>` (its last line break dropped). Both set is
/// a contradiction, reported rather than guessed at.
pub(crate) fn with_secret_files(
    vars: &HashMap<String, String>,
) -> Result<HashMap<String, String>, ConfigError> {
    let mut out = vars.clone();
    for (name, file_var) in SECRET_FILES {
        let Some(path) = vars
            .get(file_var)
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
        else {
            continue;
        };
        if vars.get(name).is_some_and(|v| !v.trim().is_empty()) {
            return Err(invalid(
                file_var,
                format!("both {name} and {file_var} are set; keep one"),
            ));
        }
        let value = std::fs::read_to_string(path)
            .map_err(|e| invalid(file_var, format!("cannot read {path}: {e}")))?;
        let value = value.strip_suffix('\n').unwrap_or(&value);
        let value = value.strip_suffix('\r').unwrap_or(value);
        out.insert(name.to_string(), value.to_string());
    }
    Ok(out)
}

impl Settings {
    /// Reads the process environment, with `.env` (or `IMGSTREAM_ENV_FILE`) filling in what is unset.
    pub fn load() -> Result<Settings, ConfigError> {
        Settings::from_vars(&load_vars()?)
    }

    /// Builds settings from a variable map; the single place where names meet defaults.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Settings, ConfigError> {
        let vars = &with_secret_files(vars)?;
        let get = |name: &str, default: &str| -> String {
            vars.get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_string())
        };

        let bootstrap_servers = get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092");
        for server in bootstrap_servers.split(',') {
            let server = server.trim();
            let ok = server
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(invalid(
                    "KAFKA_BOOTSTRAP_SERVERS",
                    format!("{server:?} is not host:port (e.g. 127.0.0.1:9092)"),
                ));
            }
        }
        let auto_offset_reset = match get("KAFKA_AUTO_OFFSET_RESET", "earliest")
            .to_ascii_lowercase()
            .as_str()
        {
            "earliest" | "smallest" | "beginning" => OffsetReset::Earliest,
            "latest" | "largest" | "end" => OffsetReset::Latest,
            other => {
                return Err(invalid(
                    "KAFKA_AUTO_OFFSET_RESET",
                    format!("{other:?} is not earliest or latest"),
                ));
            }
        };
        let data_topic = get("KAFKA_DATA_TOPIC", "images");
        check_topic_name("KAFKA_DATA_TOPIC", &data_topic)?;
        let dlq_topic = get("KAFKA_DLQ_TOPIC", &format!("{data_topic}.dlq"));
        check_topic_name("KAFKA_DLQ_TOPIC", &dlq_topic)?;
        if dlq_topic == data_topic {
            return Err(invalid(
                "KAFKA_DLQ_TOPIC",
                "must differ from KAFKA_DATA_TOPIC",
            ));
        }
        let group_instance_id = vars
            .get("KAFKA_GROUP_INSTANCE_ID")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty());
        if let Some(id) = &group_instance_id {
            check_kafka_name("KAFKA_GROUP_INSTANCE_ID", id, "group instance id")?;
        }
        let group_protocol = match get("KAFKA_GROUP_PROTOCOL", "classic")
            .to_ascii_lowercase()
            .as_str()
        {
            "classic" => GroupProtocol::Classic,
            "consumer" => GroupProtocol::Consumer,
            other => {
                return Err(invalid(
                    "KAFKA_GROUP_PROTOCOL",
                    format!("{other:?} is not classic or consumer"),
                ));
            }
        };
        // librdkafka refuses a client-side session timeout under the consumer protocol; saying
        // so here names the variable instead of failing later inside the client.
        if group_protocol == GroupProtocol::Consumer
            && vars
                .get("KAFKA_SESSION_TIMEOUT_MS")
                .is_some_and(|v| !v.trim().is_empty())
        {
            return Err(invalid(
                "KAFKA_SESSION_TIMEOUT_MS",
                "is decided by the broker under KAFKA_GROUP_PROTOCOL=consumer (its group.consumer.session.timeout.ms); leave it unset",
            ));
        }
        let kafka = KafkaSettings {
            client: kafka_security::client_properties(vars)?,
            bootstrap_servers,
            group_id: get("KAFKA_GROUP_ID", "imgstream"),
            group_instance_id,
            // Kafka's own default since 3.0 (KIP-735), and librdkafka's; brokers accept
            // 6 s..=30 min unless configured otherwise.
            session_timeout: Duration::from_millis(parse_number(
                "KAFKA_SESSION_TIMEOUT_MS",
                &get("KAFKA_SESSION_TIMEOUT_MS", "45000"),
                6_000,
                1_800_000,
            )?),
            group_protocol,
            auto_offset_reset,
            data_topic,
            dlq_topic,
            partitions: parse_number(
                "KAFKA_TOPIC_PARTITIONS",
                &get("KAFKA_TOPIC_PARTITIONS", "6"),
                1,
                10_000,
            )?,
            replication_factor: parse_number(
                "KAFKA_REPLICATION_FACTOR",
                &get("KAFKA_REPLICATION_FACTOR", "1"),
                1,
                32,
            )?,
            // A week: a consumer that is down over a long weekend still finds its records.
            data_retention_ms: parse_retention(
                "KAFKA_DATA_RETENTION_MS",
                &get("KAFKA_DATA_RETENTION_MS", &(7 * DAY_MS).to_string()),
            )?,
            // 30 days, because someone has to look at a dead letter before it goes.
            dlq_retention_ms: parse_retention(
                "KAFKA_DLQ_RETENTION_MS",
                &get("KAFKA_DLQ_RETENTION_MS", &(30 * DAY_MS).to_string()),
            )?,
            compression: match get("KAFKA_COMPRESSION_TYPE", "none")
                .to_ascii_lowercase()
                .as_str()
            {
                c @ ("none" | "lz4" | "snappy" | "gzip") => c.to_string(),
                other => {
                    return Err(invalid(
                        "KAFKA_COMPRESSION_TYPE",
                        format!("{other:?} is not none, lz4, snappy or gzip"),
                    ));
                }
            },
            debug: vars
                .get("IMGSTREAM_KAFKA_DEBUG")
                .filter(|v| !v.trim().is_empty())
                .cloned(),
        };

        let database_url = parse_database_url(&get(
            "DATABASE_CONNECTION_STRING",
            "postgresql+psycopg://imgstream:imgstream@127.0.0.1:5432/imgstream",
        ))?;

        let bucket = get("MINIO_BUCKET_NAME", "images");
        check_bucket_name(&bucket)?;
        let store = StoreSettings {
            endpoint: parse_endpoint(
                "MINIO_CONNECTION_STRING",
                &get("MINIO_CONNECTION_STRING", "127.0.0.1:9000"),
            )?,
            public_endpoint: match vars.get("MINIO_PUBLIC_ENDPOINT").map(|v| v.trim()) {
                Some(raw) if !raw.is_empty() => Some(parse_endpoint("MINIO_PUBLIC_ENDPOINT", raw)?),
                _ => None,
            },
            bucket,
            access_key: get("MINIO_ACCESS_KEY", "minioadmin"),
            secret_key: get("MINIO_SECRET_KEY", "minioadmin"),
            aws_chain: aws_chain(vars)?,
            virtual_hosted: match get("MINIO_VIRTUAL_HOSTED_STYLE", "false").trim() {
                "true" | "1" => true,
                "false" | "0" | "" => false,
                other => {
                    return Err(invalid(
                        "MINIO_VIRTUAL_HOSTED_STYLE",
                        format!("{other:?} is neither true nor false"),
                    ));
                }
            },
            region: get("MINIO_REGION", "us-east-1"),
            ca_file: readable_file(vars, "MINIO_CA_FILE")?,
            write: write_options(vars)?,
        };

        let registry_url = get(
            "SCHEMA_REGISTRY_URL",
            "http://127.0.0.1:8081/apis/ccompat/v7",
        );
        Url::parse(&registry_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                invalid(
                    "SCHEMA_REGISTRY_URL",
                    format!("{:?} is not an http(s) URL", redact(&registry_url)),
                )
            })?;

        let limits = LimitSettings {
            max_image_bytes: parse_number(
                "IMGSTREAM_MAX_IMAGE_BYTES",
                &get("IMGSTREAM_MAX_IMAGE_BYTES", &(512 << 20).to_string()),
                1024,
                5 << 30,
            )?,
            inline_max_bytes: parse_number(
                "IMGSTREAM_INLINE_MAX_BYTES",
                &get(
                    "IMGSTREAM_INLINE_MAX_BYTES",
                    &DEFAULT_INLINE_MAX_BYTES.to_string(),
                ),
                1024,
                64 << 20,
            )?,
            // S3's smallest part is 5 MiB (but the last); its largest 5 GiB.
            upload_part_bytes: parse_number(
                "IMGSTREAM_UPLOAD_PART_BYTES",
                &get("IMGSTREAM_UPLOAD_PART_BYTES", &(16 << 20).to_string()),
                5 << 20,
                512 << 20,
            )?,
            max_pixels: parse_number(
                "IMGSTREAM_MAX_PIXELS",
                &get("IMGSTREAM_MAX_PIXELS", "50000000"),
                1,
                u64::MAX,
            )?,
            ids: IdRules {
                max_chars: parse_number(
                    "IMGSTREAM_MAX_ID_CHARS",
                    &get(
                        "IMGSTREAM_MAX_ID_CHARS",
                        &IdRules::default().max_chars.to_string(),
                    ),
                    1,
                    IdRules::MAX_CHARS,
                )?,
                characters: {
                    let name = get(
                        "IMGSTREAM_ID_CHARACTERS",
                        IdRules::default().characters.name(),
                    );
                    IdCharacters::from_name(&name).ok_or_else(|| {
                        invalid(
                            "IMGSTREAM_ID_CHARACTERS",
                            format!("{name:?} is neither \"printable\" nor \"ascii\""),
                        )
                    })?
                },
            },
        };

        Ok(Settings {
            kafka,
            customer_id: get("PRODUCER_CUSTOMER_ID", "customer-1"),
            database_url,
            store,
            registry_url: registry_url.trim_end_matches('/').to_string(),
            registry_auth: match vars
                .get("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO")
                .filter(|v| !v.is_empty())
            {
                None => None,
                Some(info) => match info.split_once(':') {
                    Some((user, password)) if !user.is_empty() => Some(BasicAuth {
                        user: user.to_string(),
                        password: password.to_string(),
                    }),
                    _ => {
                        return Err(invalid(
                            "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO",
                            "expected user:secret",
                        ));
                    }
                },
            },
            registry_ca_file: readable_file(vars, "SCHEMA_REGISTRY_SSL_CA_LOCATION")?,
            app_role: role_name(vars, "DATABASE_APP_ROLE")?,
            reader_role: role_name(vars, "DATABASE_READER_ROLE")?,
            serve_role: role_name(vars, "DATABASE_SERVE_ROLE")?,
            eraser_role: role_name(vars, "DATABASE_ERASER_ROLE")?,
            retention: retention(vars)?,
            limits,
            connect_timeout: Duration::from_secs(parse_number(
                "IMGSTREAM_CONNECT_TIMEOUT_SECS",
                &get("IMGSTREAM_CONNECT_TIMEOUT_SECS", "10"),
                1,
                600,
            )?),
        })
    }
}

/// `IMGSTREAM_RETENTION`, when set: a whole number of days or more (`400d`, `2y`), humantime's
/// forms; less than a day is refused as a likely slip (`400` read as seconds would erase all).
fn retention(vars: &HashMap<String, String>) -> Result<Option<Duration>, ConfigError> {
    let Some(value) = vars
        .get("IMGSTREAM_RETENTION")
        .filter(|v| !v.trim().is_empty())
    else {
        return Ok(None);
    };
    let period = humantime::parse_duration(value.trim()).map_err(|e| {
        invalid(
            "IMGSTREAM_RETENTION",
            format!("{e}; expected a period such as 400d or 2years"),
        )
    })?;
    if period < Duration::from_secs(24 * 3600) {
        return Err(invalid(
            "IMGSTREAM_RETENTION",
            "shorter than a day; write the period with its unit, e.g. 400d",
        ));
    }
    Ok(Some(period))
}

/// The S3 write options, each checked here so a typo is named before anything is written.
fn write_options(vars: &HashMap<String, String>) -> Result<WriteOptions, ConfigError> {
    let set = |name: &str| {
        vars.get(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let key_id = set("MINIO_SSE_KMS_KEY_ID");
    let encryption = match set("MINIO_SERVER_SIDE_ENCRYPTION").as_deref() {
        None | Some("none") => None,
        Some("AES256") => Some(Encryption::S3),
        Some("aws:kms") => Some(Encryption::Kms {
            key_id: key_id.clone(),
        }),
        Some(other) => {
            return Err(invalid(
                "MINIO_SERVER_SIDE_ENCRYPTION",
                format!("{other:?} is not AES256, aws:kms or none"),
            ));
        }
    };
    if key_id.is_some() && !matches!(encryption, Some(Encryption::Kms { .. })) {
        return Err(invalid(
            "MINIO_SSE_KMS_KEY_ID",
            "a key id needs MINIO_SERVER_SIDE_ENCRYPTION=aws:kms",
        ));
    }
    let header_safe = |name: &'static str, v: &str| {
        if v.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(())
        } else {
            Err(invalid(
                name,
                format!("{v:?} holds a character a header cannot carry"),
            ))
        }
    };
    if let Some(k) = &key_id {
        header_safe("MINIO_SSE_KMS_KEY_ID", k)?;
    }
    let storage_class = set("MINIO_STORAGE_CLASS");
    if let Some(c) = &storage_class {
        header_safe("MINIO_STORAGE_CLASS", c)?;
    }
    let (mut tag_customer, mut tag_source) = (false, false);
    for tag in set("MINIO_OBJECT_TAGS").unwrap_or_default().split(',') {
        match tag.trim() {
            "" => {}
            "customer" => tag_customer = true,
            "source" => tag_source = true,
            other => {
                return Err(invalid(
                    "MINIO_OBJECT_TAGS",
                    format!("{other:?} is neither customer nor source"),
                ));
            }
        }
    }
    Ok(WriteOptions {
        encryption: encryption.unwrap_or_default(),
        storage_class,
        tag_customer,
        tag_source,
    })
}

/// A PostgreSQL role name, when set: a plain identifier, so it can be quoted into SQL safely.
fn role_name(
    vars: &HashMap<String, String>,
    var: &'static str,
) -> Result<Option<String>, ConfigError> {
    match vars.get(var).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(name)
            if name.len() <= 63
                && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') =>
        {
            Ok(Some(name.to_string()))
        }
        Some(name) => Err(invalid(
            var,
            format!("{name:?} is not a role name (lowercase letters, digits and _, at most 63)"),
        )),
    }
}

/// A path variable that, when set, must name a readable file.
fn readable_file(
    vars: &HashMap<String, String>,
    var: &'static str,
) -> Result<Option<PathBuf>, ConfigError> {
    match vars.get(var).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(path) if Path::new(path).is_file() => Ok(Some(PathBuf::from(path))),
        Some(path) => Err(invalid(var, format!("{path} is not a readable file"))),
    }
}

fn read_env_file(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    if !path.exists() {
        return Ok(HashMap::new());
    }
    let iter = dotenvy::from_path_iter(path).map_err(|e| {
        invalid(
            "IMGSTREAM_ENV_FILE",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    iter.map(|item| {
        item.map_err(|e| {
            invalid(
                "IMGSTREAM_ENV_FILE",
                format!("{} is malformed: {e}", path.display()),
            )
        })
    })
    .collect()
}

fn parse_number<T: std::str::FromStr + PartialOrd + fmt::Display>(
    var: &'static str,
    value: &str,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    let n: T = value
        .replace('_', "")
        .parse()
        .map_err(|_| invalid(var, format!("{value:?} is not a number")))?;
    if n < min || n > max {
        return Err(invalid(var, format!("{n} is outside {min}..={max}")));
    }
    Ok(n)
}

const DAY_MS: i64 = 24 * 3600 * 1000;

/// A topic's `retention.ms`: -1 (kept forever, Kafka's own spelling) or at least an hour. Less
/// would let Kafka delete records a consumer that restarts or falls behind has not read yet.
fn parse_retention(var: &'static str, value: &str) -> Result<i64, ConfigError> {
    if value.trim() == "-1" {
        return Ok(-1);
    }
    parse_number(var, value, 3_600_000, i64::MAX)
        .map_err(|e| invalid(var, format!("{}; or -1 to keep records forever", e.message)))
}

fn check_topic_name(var: &'static str, name: &str) -> Result<(), ConfigError> {
    check_kafka_name(var, name, "topic name")
}

/// Kafka's rule for topic names, which group instance ids follow too.
fn check_kafka_name(var: &'static str, name: &str, what: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            var,
            format!("{name:?} is not a valid Kafka {what} (letters, digits, '.', '_', '-')"),
        ))
    }
}

fn check_bucket_name(name: &str) -> Result<(), ConfigError> {
    let ok = (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-'))
        && !name.starts_with(['.', '-'])
        && !name.ends_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "MINIO_BUCKET_NAME",
            format!(
                "{name:?} is not a valid bucket name (3-63 lowercase letters, digits, '.', '-')"
            ),
        ))
    }
}

/// Accepts `postgres://`, `postgresql://` and the original demo's `postgresql+psycopg://` (any
/// `postgresql+driver://`), since the driver suffix only meant something to SQLAlchemy.
/// Where the object store's credentials come from: `MINIO_CREDENTIALS=keys` (MINIO_ACCESS_KEY and
/// MINIO_SECRET_KEY, the default) or `aws` (the AWS chain, given its `AWS_*` settings). Without
/// the setting, the chain is chosen when no MINIO key is set and an AWS source is: what a pod
/// with IRSA or a shell with temporary credentials has.
fn aws_chain(vars: &HashMap<String, String>) -> Result<Option<Vec<(String, String)>>, ConfigError> {
    const VAR: &str = "MINIO_CREDENTIALS";
    let set = |k: &str| vars.get(k).is_some_and(|v| !v.trim().is_empty());
    let chain = match vars
        .get(VAR)
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        Some("keys") => false,
        Some("aws") => true,
        Some("") | None => {
            !set("MINIO_ACCESS_KEY")
                && !set("MINIO_SECRET_KEY")
                && [
                    "AWS_ACCESS_KEY_ID",
                    "AWS_WEB_IDENTITY_TOKEN_FILE",
                    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                ]
                .iter()
                .any(|k| set(k))
        }
        Some(other) => {
            return Err(invalid(
                VAR,
                format!("{other:?} is neither `keys` nor `aws`"),
            ));
        }
    };
    if !chain {
        return Ok(None);
    }
    let mut aws: Vec<(String, String)> = vars
        .iter()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    aws.sort();
    Ok(Some(aws))
}

pub fn parse_database_url(raw: &str) -> Result<DatabaseUrl, ConfigError> {
    const VAR: &str = "DATABASE_CONNECTION_STRING";
    let example = "expected postgres://user:password@host:port/database";
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or_else(|| invalid(VAR, format!("not a URL; {example}")))?;
    let base = scheme.split('+').next().unwrap_or_default();
    if base != "postgres" && base != "postgresql" {
        return Err(invalid(
            VAR,
            format!("scheme {scheme:?} is not PostgreSQL; {example}"),
        ));
    }
    let url = Url::parse(&format!("postgres://{rest}"))
        .map_err(|e| invalid(VAR, format!("{e}; {example}")))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(VAR, format!("no host; {example}")));
    }
    if url.path().trim_start_matches('/').is_empty() {
        return Err(invalid(VAR, format!("no database name; {example}")));
    }
    Ok(DatabaseUrl(url))
}

/// Accepts the MinIO client's `host:port` form as well as a full `http(s)://host:port` URL.
pub fn parse_endpoint(var: &'static str, raw: &str) -> Result<String, ConfigError> {
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let url = Url::parse(&with_scheme).map_err(|e| {
        invalid(
            var,
            format!("{:?} is not host:port or an http(s) URL: {e}", redact(raw)),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(
            var,
            format!("{:?} is not host:port or an http(s) URL", redact(raw)),
        ));
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A variable map, as the environment would give it.
    pub(crate) fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_point_at_the_local_stack() {
        let s = Settings::from_vars(&HashMap::new()).unwrap();
        assert_eq!(s.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(s.kafka.data_topic, "images");
        assert_eq!(s.kafka.dlq_topic, "images.dlq");
        assert_eq!(s.store.endpoint, "http://127.0.0.1:9000");
        assert_eq!(s.database_url.database_name(), "imgstream");
        assert_eq!(s.registry_url, "http://127.0.0.1:8081/apis/ccompat/v7");
        assert_eq!(s.kafka.session_timeout, Duration::from_secs(45));
    }

    #[test]
    fn the_group_protocol_is_classic_unless_consumer_is_asked_for() {
        let default = Settings::from_vars(&HashMap::new()).unwrap();
        assert_eq!(default.kafka.group_protocol, GroupProtocol::Classic);
        let asked = Settings::from_vars(&vars(&[("KAFKA_GROUP_PROTOCOL", "Consumer")])).unwrap();
        assert_eq!(asked.kafka.group_protocol, GroupProtocol::Consumer);
        // The broker owns the session timeout under KIP-848: a client one is a mistake to name.
        let err = Settings::from_vars(&vars(&[
            ("KAFKA_GROUP_PROTOCOL", "consumer"),
            ("KAFKA_SESSION_TIMEOUT_MS", "30000"),
        ]))
        .unwrap_err();
        assert_eq!(err.var, "KAFKA_SESSION_TIMEOUT_MS");
        assert!(
            err.to_string().contains("KAFKA_GROUP_PROTOCOL=consumer"),
            "{err}"
        );
    }

    #[test]
    fn the_original_sqlalchemy_url_form_is_accepted() {
        let url = parse_database_url("postgresql+psycopg://u:secret@db.local:6543/pics").unwrap();
        assert_eq!(url.expose(), "postgres://u:secret@db.local:6543/pics");
        assert_eq!(url.database_name(), "pics");
        assert!(parse_database_url("postgres://u:p@h/db").is_ok());
        assert!(parse_database_url("postgresql://u:p@h/db").is_ok());
    }

    #[test]
    fn a_bad_setting_is_reported_by_its_variable_name() {
        let cases = [
            ("DATABASE_CONNECTION_STRING", "mysql://u:p@h/db"),
            ("DATABASE_CONNECTION_STRING", "postgres://u:p@h"),
            ("KAFKA_BOOTSTRAP_SERVERS", "localhost"),
            ("KAFKA_AUTO_OFFSET_RESET", "sometimes"),
            ("KAFKA_DATA_TOPIC", "bad topic!"),
            ("MINIO_BUCKET_NAME", "Bad_Bucket"),
            ("MINIO_CONNECTION_STRING", "ftp://x:21"),
            ("KAFKA_TOPIC_PARTITIONS", "zero"),
            ("SCHEMA_REGISTRY_URL", "nope"),
            ("DATABASE_APP_ROLE", "app; DROP TABLE images"),
            ("DATABASE_READER_ROLE", "Reader"),
            ("DATABASE_SERVE_ROLE", "serve-role"),
            ("DATABASE_ERASER_ROLE", "eraser!"),
            ("IMGSTREAM_RETENTION", "400"),
            ("IMGSTREAM_RETENTION", "forever"),
            ("KAFKA_GROUP_INSTANCE_ID", "pod 0"),
            ("KAFKA_SESSION_TIMEOUT_MS", "3000"),
            ("KAFKA_GROUP_PROTOCOL", "eager"),
        ];
        for (var, value) in cases {
            let err = Settings::from_vars(&vars(&[(var, value)])).unwrap_err();
            assert_eq!(err.var, var, "{value}");
            assert!(err.to_string().starts_with(var));
        }
    }

    #[test]
    fn secrets_never_appear_in_debug_or_display() {
        let s = Settings::from_vars(&vars(&[
            (
                "DATABASE_CONNECTION_STRING",
                "postgres://u:hunter2@h:5432/db",
            ),
            ("MINIO_SECRET_KEY", "s3cr3t-key"),
            (
                "SCHEMA_REGISTRY_URL",
                "http://reader:in-the-url-1@registry:8081",
            ),
            (
                "MINIO_CONNECTION_STRING",
                "http://proxy:in-the-url-2@minio:9000",
            ),
            (
                "MINIO_PUBLIC_ENDPOINT",
                "https://in-the-url-3@cdn.example.com",
            ),
        ]))
        .unwrap();
        let shown = format!("{s:?} {}", s.database_url);
        for secret in ["hunter2", "s3cr3t-key", "in-the-url-"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        // The client still gets the URL as it was set.
        assert_eq!(s.registry_url, "http://reader:in-the-url-1@registry:8081");
    }

    #[test]
    fn a_url_setting_refused_is_quoted_without_its_credentials() {
        for (var, value) in [
            ("SCHEMA_REGISTRY_URL", "ftp://reader:in-the-url@registry"),
            (
                "MINIO_CONNECTION_STRING",
                "ftp://proxy:in-the-url@minio:9000",
            ),
            ("MINIO_PUBLIC_ENDPOINT", "gopher://in-the-url@cdn"),
        ] {
            let err = Settings::from_vars(&vars(&[(var, value)])).unwrap_err();
            assert_eq!(err.var, var);
            assert!(!err.to_string().contains("in-the-url"), "{err}");
        }
    }

    #[test]
    fn object_store_credentials_come_from_the_aws_chain_only_when_no_minio_key_is_set() {
        let chain =
            |pairs: &[(&str, &str)]| Settings::from_vars(&vars(pairs)).unwrap().store.aws_chain;
        assert_eq!(chain(&[]), None, "the local stack's keys by default");
        let temporary = [
            ("AWS_ACCESS_KEY_ID", "ASIA1"),
            ("AWS_SECRET_ACCESS_KEY", "s3cret"),
            ("AWS_SESSION_TOKEN", "t0ken"),
        ];
        let from_chain = chain(&temporary).expect("an AWS source and no MINIO key");
        assert_eq!(from_chain.len(), 3);
        let mut with_keys = temporary.to_vec();
        with_keys.push(("MINIO_ACCESS_KEY", "k"));
        assert_eq!(chain(&with_keys), None, "a MINIO key is an explicit choice");
        assert!(chain(&[("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token")]).is_some());
        // Instance metadata has no variable of its own: it is asked for by name.
        assert_eq!(chain(&[("MINIO_CREDENTIALS", "aws")]), Some(vec![]));
        let mut forced_keys = temporary.to_vec();
        forced_keys.push(("MINIO_CREDENTIALS", "keys"));
        assert_eq!(chain(&forced_keys), None);
        let err = Settings::from_vars(&vars(&[("MINIO_CREDENTIALS", "iam")])).unwrap_err();
        assert_eq!(err.var, "MINIO_CREDENTIALS");
        // Debug names the variables, never their values.
        let shown = format!("{:?}", Settings::from_vars(&vars(&temporary)).unwrap());
        assert!(shown.contains("AWS_SESSION_TOKEN"), "{shown}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("t0ken"),
            "{shown}"
        );
    }

    #[test]
    fn secrets_can_be_read_from_files_named_by_name_file() {
        let dir = std::env::temp_dir().join(format!("imgstream-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("minio-secret");
        std::fs::write(&secret, "from-a-file\n").unwrap();
        let url = dir.join("db");
        std::fs::write(&url, "postgres://app:p%40ss@db:5432/imgstream_test").unwrap();
        let s = Settings::from_vars(&vars(&[
            ("MINIO_SECRET_KEY_FILE", secret.to_str().unwrap()),
            ("DATABASE_CONNECTION_STRING_FILE", url.to_str().unwrap()),
        ]))
        .unwrap();
        assert_eq!(
            s.store.secret_key, "from-a-file",
            "the line break is dropped"
        );
        assert_eq!(s.database_url.database_name(), "imgstream_test");

        let both = Settings::from_vars(&vars(&[
            ("MINIO_SECRET_KEY", "inline"),
            ("MINIO_SECRET_KEY_FILE", secret.to_str().unwrap()),
        ]))
        .unwrap_err();
        assert_eq!(both.var, "MINIO_SECRET_KEY_FILE");
        let missing =
            Settings::from_vars(&vars(&[("KAFKA_SASL_PASSWORD_FILE", "/nonexistent/pw")]))
                .unwrap_err();
        assert_eq!(missing.var, "KAFKA_SASL_PASSWORD_FILE");
        assert!(
            missing.message.contains("/nonexistent/pw"),
            "{}",
            missing.message
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn minio_accepts_host_port_and_urls() {
        assert_eq!(
            parse_endpoint("MINIO_CONNECTION_STRING", "minio:9000").unwrap(),
            "http://minio:9000"
        );
        assert_eq!(
            parse_endpoint("MINIO_CONNECTION_STRING", "https://s3.example.com/").unwrap(),
            "https://s3.example.com"
        );
    }

    #[test]
    fn retention_defaults_to_a_week_and_30_days_and_takes_forever_or_at_least_an_hour() {
        let defaults = Settings::from_vars(&vars(&[])).unwrap();
        assert_eq!(defaults.kafka.data_retention_ms, 604_800_000);
        assert_eq!(defaults.kafka.dlq_retention_ms, 2_592_000_000);
        let set = Settings::from_vars(&vars(&[
            ("KAFKA_DATA_RETENTION_MS", "-1"),
            ("KAFKA_DLQ_RETENTION_MS", "3_600_000"),
        ]))
        .unwrap();
        assert_eq!(set.kafka.data_retention_ms, -1);
        assert_eq!(set.kafka.dlq_retention_ms, 3_600_000);
        for (var, value) in [
            ("KAFKA_DATA_RETENTION_MS", "0"),
            ("KAFKA_DATA_RETENTION_MS", "-2"),
            ("KAFKA_DLQ_RETENTION_MS", "60000"),
            ("KAFKA_DLQ_RETENTION_MS", "a week"),
        ] {
            let err = Settings::from_vars(&vars(&[(var, value)])).unwrap_err();
            assert_eq!(err.var, var, "{value}");
            assert!(err.message.contains("-1"), "{err}");
        }
    }

    #[test]
    fn topic_size_limit_leaves_room_for_the_envelope() {
        let s = Settings::from_vars(&vars(&[("IMGSTREAM_INLINE_MAX_BYTES", "1048576")])).unwrap();
        assert!(s.limits.max_message_bytes() > 1_048_576);
    }

    #[test]
    fn by_default_a_topic_at_kafkas_one_mib_carries_every_inline_record() {
        let s = Settings::from_vars(&vars(&[])).unwrap();
        assert_eq!(s.limits.max_message_bytes(), 1 << 20);
        assert_eq!(s.limits.max_image_bytes, 512 << 20);
    }

    #[test]
    fn write_options_are_read_and_a_wrong_one_is_named() {
        let s = Settings::from_vars(&vars(&[
            ("MINIO_SERVER_SIDE_ENCRYPTION", "aws:kms"),
            ("MINIO_SSE_KMS_KEY_ID", "key-1"),
            ("MINIO_STORAGE_CLASS", "STANDARD_IA"),
            ("MINIO_OBJECT_TAGS", "customer, source"),
        ]))
        .unwrap();
        assert_eq!(
            s.store.write,
            WriteOptions {
                encryption: Encryption::Kms {
                    key_id: Some("key-1".into())
                },
                storage_class: Some("STANDARD_IA".into()),
                tag_customer: true,
                tag_source: true,
            }
        );
        for (var, value) in [
            ("MINIO_SERVER_SIDE_ENCRYPTION", "aes"),
            ("MINIO_SSE_KMS_KEY_ID", "key-without-kms"),
            ("MINIO_OBJECT_TAGS", "customer,camera"),
        ] {
            let err = Settings::from_vars(&vars(&[(var, value)])).unwrap_err();
            assert!(err.to_string().contains(var), "{err}");
        }
    }
}

//! A client for the Confluent-compatible schema registry API (served here by Apicurio's ccompat).

use crate::config::{BasicAuth, redact, redact_url};
use futures::future::BoxFuture;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;
use thiserror::Error;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("schema registry at {url} is unreachable ({detail}); is it running? (make stack-up)")]
    Unreachable { url: String, detail: String },
    #[error("schema registry has no {what}")]
    NotFound { what: String },
    #[error("schema registry refused the schema for {subject} as incompatible: {reason}")]
    Incompatible { subject: String, reason: String },
    #[error("schema registry answered HTTP {status} to {request}: {body}")]
    Http {
        request: String,
        status: u16,
        body: String,
    },
}

impl RegistryError {
    /// Outages and server errors pass; a missing schema or a refusal does not.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Http { status, .. } => *status >= 500 || *status == 429,
            RegistryError::NotFound { .. } | RegistryError::Incompatible { .. } => false,
        }
    }
}

/// Where a decoder finds writer schemas by id: the registry, or a fixed set in tests.
pub trait SchemaLookup: Send + Sync {
    /// The schema text registered under a global id.
    fn schema_text(&self, id: u32) -> BoxFuture<'_, Result<String, RegistryError>>;

    /// Whether `schema` is registered under `subject` (as any version).
    fn registered_under<'a>(
        &'a self,
        subject: &'a str,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<bool, RegistryError>>;
}

impl SchemaLookup for RegistryClient {
    fn schema_text(&self, id: u32) -> BoxFuture<'_, Result<String, RegistryError>> {
        Box::pin(self.schema_by_id(id))
    }

    fn registered_under<'a>(
        &'a self,
        subject: &'a str,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<bool, RegistryError>> {
        // By content, not by id: a registry that keeps one id per content (Apicurio's default)
        // and one that keeps one per subject and version both find the schema this way.
        Box::pin(async move { Ok(self.lookup(subject, schema).await?.is_some()) })
    }
}

#[derive(Clone)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
    auth: Option<BasicAuth>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredSchema {
    pub id: u32,
    pub version: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compatibility {
    pub is_compatible: bool,
    pub messages: Vec<String>,
}

impl RegistryClient {
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, RegistryError> {
        Self::with_access(base_url, timeout, None, None)
    }

    /// A client that authenticates with `auth` (HTTP basic) and trusts the CAs in `ca_file`
    /// besides the system's roots.
    pub fn with_access(
        base_url: &str,
        timeout: Duration,
        auth: Option<BasicAuth>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, RegistryError> {
        let unusable = |detail: String| RegistryError::Unreachable {
            url: redact_url(base_url),
            detail,
        };
        // Each call on a connection of its own: the registry is asked a handful of times per
        // process, and twice in full test runs a request after a reused connection's answer
        // never reached the registry and waited out the whole timeout. Two attempts of one and a
        // half timeouts each keep the worst case at the three timeouts a single attempt had.
        let mut builder = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout * 3 / 2)
            .pool_max_idle_per_host(0);
        if let Some(path) = ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| unusable(format!("cannot read CA file {}: {e}", path.display())))?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| unusable(format!("CA file {} is not PEM: {e}", path.display())))?;
            builder = builder.tls_certs_merge(roots);
        }
        let http = builder.build().map_err(|e| unusable(e.to_string()))?;
        Ok(RegistryClient {
            base: base_url.trim_end_matches('/').to_string(),
            http,
            auth,
        })
    }

    /// Registers `schema` under `subject` (or finds it there) and returns its global id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        #[derive(Deserialize)]
        struct Id {
            id: u32,
        }
        let url = format!("{}/subjects/{}/versions", self.base, enc(subject));
        let resp = self
            .send(
                self.http.post(&url).json(&json!({ "schema": schema })),
                &url,
            )
            .await?;
        match resp.status().as_u16() {
            200 => Ok(parse::<Id>(resp, &url).await?.id),
            409 | 422 => Err(RegistryError::Incompatible {
                subject: subject.to_string(),
                reason: error_message(resp).await,
            }),
            _ => Err(http_error(resp, &url).await),
        }
    }

    /// The id and version of `schema` under `subject`, if it is registered there.
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Option<RegisteredSchema>, RegistryError> {
        #[derive(Deserialize)]
        struct Found {
            id: u32,
            version: Option<i32>,
        }
        let url = format!("{}/subjects/{}", self.base, enc(subject));
        let resp = self
            .send(
                self.http.post(&url).json(&json!({ "schema": schema })),
                &url,
            )
            .await?;
        match resp.status().as_u16() {
            200 => {
                let found: Found = parse(resp, &url).await?;
                Ok(Some(RegisteredSchema {
                    id: found.id,
                    version: found.version,
                }))
            }
            404 => Ok(None),
            _ => Err(http_error(resp, &url).await),
        }
    }

    /// The schema text registered under a global id.
    pub async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        #[derive(Deserialize)]
        struct Schema {
            schema: String,
        }
        let url = format!("{}/schemas/ids/{id}", self.base);
        let resp = self.send(self.http.get(&url), &url).await?;
        match resp.status().as_u16() {
            200 => Ok(parse::<Schema>(resp, &url).await?.schema),
            404 => Err(RegistryError::NotFound {
                what: format!("schema with id {id}"),
            }),
            _ => Err(http_error(resp, &url).await),
        }
    }

    /// The subject's own compatibility level, if one is set.
    pub async fn compatibility_level(
        &self,
        subject: &str,
    ) -> Result<Option<String>, RegistryError> {
        let url = format!("{}/config/{}", self.base, enc(subject));
        let resp = self.send(self.http.get(&url), &url).await?;
        match resp.status().as_u16() {
            200 => {
                let v: serde_json::Value = parse(resp, &url).await?;
                Ok(v.get("compatibilityLevel")
                    .or_else(|| v.get("compatibility"))
                    .and_then(|l| l.as_str())
                    .map(str::to_string))
            }
            404 => Ok(None),
            _ => Err(http_error(resp, &url).await),
        }
    }

    pub async fn set_compatibility_level(
        &self,
        subject: &str,
        level: &str,
    ) -> Result<(), RegistryError> {
        let url = format!("{}/config/{}", self.base, enc(subject));
        let resp = self
            .send(
                self.http.put(&url).json(&json!({ "compatibility": level })),
                &url,
            )
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(http_error(resp, &url).await)
        }
    }

    /// Deletes `subject` and every version of it for good (tests and benchmarks clean up with
    /// this). Soft first, then permanent: the registry refuses a permanent delete of a live
    /// subject. A subject already gone is not an error.
    pub async fn delete_subject(&self, subject: &str) -> Result<(), RegistryError> {
        let url = format!("{}/subjects/{}", self.base, enc(subject));
        for url in [url.clone(), format!("{url}?permanent=true")] {
            let resp = self.send(self.http.delete(&url), &url).await?;
            if !(resp.status().is_success() || resp.status().as_u16() == 404) {
                return Err(http_error(resp, &url).await);
            }
        }
        Ok(())
    }

    /// Asks whether `schema` may follow the latest version of `subject`.
    pub async fn check_compatibility(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Compatibility, RegistryError> {
        #[derive(Deserialize)]
        struct Answer {
            is_compatible: bool,
            #[serde(default)]
            messages: Vec<serde_json::Value>,
        }
        let url = format!(
            "{}/compatibility/subjects/{}/versions/latest?verbose=true",
            self.base,
            enc(subject)
        );
        let resp = self
            .send(
                self.http.post(&url).json(&json!({ "schema": schema })),
                &url,
            )
            .await?;
        match resp.status().as_u16() {
            200 => {
                let a: Answer = parse(resp, &url).await?;
                Ok(Compatibility {
                    is_compatible: a.is_compatible,
                    messages: a
                        .messages
                        .into_iter()
                        .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_string))
                        .collect(),
                })
            }
            404 => Err(RegistryError::NotFound {
                what: format!("subject {subject}"),
            }),
            _ => Err(http_error(resp, &url).await),
        }
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let req = match &self.auth {
            Some(auth) => req.basic_auth(&auth.user, Some(&auth.password)),
            None => req,
        };
        let req = req
            .header(reqwest::header::ACCEPT, CONTENT_TYPE)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE);
        // Every call is safe to repeat: lookups, a registration by content (the same schema
        // gets the same id), a level set to a value, a delete that accepts "already gone".
        let retry = req.try_clone();
        let failed = match req.send().await {
            Ok(resp) => return Ok(resp),
            Err(e) => e,
        };
        let Some(retry) = retry else {
            return Err(unreachable(url, &failed));
        };
        // Debug only: a registry that is down fails twice and is then named in one error line.
        tracing::debug!(
            url = %redact_url(url),
            error = %root_cause(&failed),
            "a schema registry request failed; trying once more on a new connection"
        );
        tokio::time::sleep(RETRY_PAUSE).await;
        retry.send().await.map_err(|e| unreachable(url, &e))
    }
}

/// The pause before a failed request's second attempt.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

fn unreachable(url: &str, e: &reqwest::Error) -> RegistryError {
    RegistryError::Unreachable {
        url: redact_url(url),
        detail: root_cause(e),
    }
}

/// A subject as one path segment: every byte but RFC 3986's unreserved ones percent-encoded, so
/// a space stays a space (form encoding made it `+`, another subject) and `/` stays in the segment.
fn enc(subject: &str) -> String {
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(subject, SEGMENT).to_string()
}

/// The innermost error's text, any URL in it without its credentials.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    redact(&cause.to_string()).into_owned()
}

async fn parse<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    url: &str,
) -> Result<T, RegistryError> {
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| RegistryError::Unreachable {
        url: redact_url(url),
        detail: root_cause(&e),
    })?;
    serde_json::from_str(&body).map_err(|e| RegistryError::Http {
        request: redact_url(url),
        status,
        body: format!("unexpected body ({e}): {}", truncate(&body)),
    })
}

async fn error_message(resp: reqwest::Response) -> String {
    let body = resp.text().await.unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| truncate(&body))
}

async fn http_error(resp: reqwest::Response, url: &str) -> RegistryError {
    let status = resp.status().as_u16();
    RegistryError::Http {
        request: redact_url(url),
        status,
        body: error_message(resp).await,
    }
}

fn truncate(s: &str) -> String {
    let s = s.trim();
    if s.len() > 300 {
        format!("{}…", &s[..s.floor_char_boundary(300)])
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A registry stand-in that answers one schema and hands back the request it received.
    async fn one_request_registry() -> (String, tokio::sync::oneshot::Receiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let n = socket.read(&mut buf).await.unwrap();
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
            let body = r#"{"schema":"\"string\""}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        });
        (url, rx)
    }

    #[tokio::test]
    async fn a_subject_with_a_space_and_a_slash_is_one_path_segment_naming_that_subject() {
        let (url, request) = one_request_registry().await;
        let client = RegistryClient::new(&url, Duration::from_secs(2)).unwrap();
        let _ = client.compatibility_level("cams a/b-value").await;
        let request = request.await.unwrap();
        let first = request.lines().next().unwrap_or_default();
        assert!(
            first.contains("/config/cams%20a%2Fb-value"),
            "request line: {first}"
        );
    }

    #[test]
    fn unreserved_characters_stay_and_others_are_percent_encoded() {
        assert_eq!(enc("images-value"), "images-value");
        assert_eq!(enc("a.b_c~d"), "a.b_c~d");
        assert_eq!(enc("a b+c/d?é"), "a%20b%2Bc%2Fd%3F%C3%A9");
    }

    #[tokio::test]
    async fn every_request_carries_the_basic_auth_credentials() {
        let (url, request) = one_request_registry().await;
        let auth = BasicAuth {
            user: "reader".into(),
            password: "s3cret".into(),
        };
        let client =
            RegistryClient::with_access(&url, Duration::from_secs(2), Some(auth), None).unwrap();
        assert_eq!(client.schema_by_id(1).await.unwrap(), "\"string\"");
        let request = request.await.unwrap();
        // base64("reader:s3cret")
        assert!(
            request
                .lines()
                .any(|l| l.eq_ignore_ascii_case("authorization: Basic cmVhZGVyOnMzY3JldA==")),
            "{request}"
        );
    }

    /// A registry stand-in whose first `silent` connections read their request and never
    /// answer; the next one answers a schema. Hands back how many connections it accepted.
    async fn registry_silent_at_first(silent: usize) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let n = counted.fetch_add(1, Ordering::SeqCst);
                let mut buf = vec![0u8; 8192];
                let _ = socket.read(&mut buf).await.unwrap();
                if n < silent {
                    held.push(socket);
                    continue;
                }
                let body = r#"{"schema":"\"string\""}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                held.push(socket);
            }
        });
        (url, accepted)
    }

    #[tokio::test]
    async fn a_request_left_unanswered_is_sent_once_more_on_a_new_connection() {
        let (url, accepted) = registry_silent_at_first(1).await;
        let client = RegistryClient::new(&url, Duration::from_millis(400)).unwrap();
        let started = std::time::Instant::now();
        assert_eq!(client.schema_by_id(1).await.unwrap(), "\"string\"");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // The first attempt waited its one and a half timeouts.
        assert!(started.elapsed() >= Duration::from_millis(600));
    }

    #[tokio::test]
    async fn a_registry_that_never_answers_is_unreachable_after_two_attempts() {
        let (url, accepted) = registry_silent_at_first(usize::MAX).await;
        let client = RegistryClient::new(&url, Duration::from_millis(400)).unwrap();
        let started = std::time::Instant::now();
        let err = client.register("s-value", "\"string\"").await.unwrap_err();
        assert!(
            matches!(err, RegistryError::Unreachable { .. }) && err.is_transient(),
            "{err}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // Three timeouts in all, as one attempt used to take, and the pause between.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1200) && took < Duration::from_millis(3000),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_registry_refusing_the_credentials_is_not_transient() {
        let err = RegistryError::Http {
            request: "x".into(),
            status: 401,
            body: String::new(),
        };
        assert!(!err.is_transient());
    }
}

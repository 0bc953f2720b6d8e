//! The signed S3 requests `object_store` does not offer: a write carrying a checksum the caller
//! already knows (object_store can only compute one itself, which would hash every image again),
//! a HEAD that reads the checksum an object was stored with, the store's clock, and the bucket
//! calls. Plain `reqwest`, signed with object_store's own SigV4 signer and credentials.

use super::builder::bucket_url;
use super::error::{S3ErrorBody, one_line};
use super::{Backend, ObjectHead, StoreError, UPLOAD_MARK_HEADER, UPLOAD_MARK_VALUE, UploadedPart};
use crate::config::{StoreSettings, redact};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use std::time::Duration;

pub(super) struct S3Direct {
    pub settings: StoreSettings,
    /// `settings.endpoint` as messages name it, without credentials.
    pub endpoint: String,
    pub credentials: AwsCredentialProvider,
    pub http: reqwest::Client,
    /// For requests without a body (HEAD, bucket calls): the upload timeout is for images.
    pub admin_timeout: Duration,
}

/// An S3 answer: status, the checksum and date headers when there are any, and the error body.
struct S3Answer {
    status: u16,
    checksum: Option<http::HeaderValue>,
    date: Option<http::HeaderValue>,
    error: S3ErrorBody,
    headers: http::HeaderMap,
    /// The body of a POST's answer (multipart uploads answer in XML) or of a GET of tags, else
    /// empty.
    text: String,
}

const CHECKSUM_SHA256: &str = "x-amz-checksum-sha256";

/// How often a failed send is repeated at once before the store counts as unavailable.
const QUICK_RESENDS: u32 = 3;

impl Backend for S3Direct {
    fn put_object<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
        content_type: &'a str,
        sha256: &'a [u8; 32],
        extra: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let checksum = BASE64.encode(sha256);
            let mut headers = vec![
                (
                    http::header::CONTENT_TYPE.as_str(),
                    content_type.to_string(),
                ),
                (http::header::IF_NONE_MATCH.as_str(), "*".to_string()),
                (CHECKSUM_SHA256, checksum.clone()),
            ];
            headers.extend(extra.iter().map(|(k, v)| (k.as_str(), v.clone())));
            let answer = self
                .send(http::Method::PUT, Some(key), &headers, Some(data))
                .await?;
            let echoed = answer.checksum.as_ref().map(|v| v.as_bytes());
            match answer.status {
                // S3 and MinIO echo the checksum they verified. A store that answers without it
                // ignored the header and checked nothing: stop rather than store unverified images.
                200 if echoed == Some(checksum.as_bytes()) => Ok(true),
                200 => Err(StoreError::ChecksumUnsupported {
                    endpoint: self.endpoint.clone(),
                }),
                412 => Ok(false),
                400 if matches!(
                    answer.error.code.as_deref(),
                    Some("XAmzContentChecksumMismatch" | "BadDigest")
                ) =>
                {
                    Err(StoreError::ChecksumMismatch {
                        key: key.to_string(),
                        declared: hex::encode(sha256),
                        detail: "the store computed another".into(),
                    })
                }
                // A concurrent conditional write to the same key is still in progress: try again.
                409 => Err(self.unavailable(format!("PUT {key} answered HTTP 409, retrying"))),
                _ => Err(self.refused(&answer, &format!("PUT {key}"))),
            }
        })
    }

    fn stored_checksum<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<[u8; 32]>, StoreError>> {
        Box::pin(async move {
            let headers = [("x-amz-checksum-mode", "ENABLED".to_string())];
            let answer = self
                .send(http::Method::HEAD, Some(key), &headers, None)
                .await?;
            match answer.status {
                200 => Ok(answer
                    .checksum
                    .and_then(|v| BASE64.decode(v.as_bytes()).ok())
                    .and_then(|d| d.try_into().ok())),
                404 => Err(StoreError::NotFound {
                    key: key.to_string(),
                }),
                _ => Err(self.refused(&answer, &format!("HEAD {key}"))),
            }
        })
    }

    fn head_object<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectHead, StoreError>> {
        Box::pin(async move {
            let headers = [("x-amz-checksum-mode", "ENABLED".to_string())];
            let answer = self
                .send(http::Method::HEAD, Some(key), &headers, None)
                .await?;
            match answer.status {
                200 => {
                    let header = |name: &str| {
                        answer
                            .headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let size = header("content-length")
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| self.refused(&answer, &format!("HEAD {key} (no size)")))?;
                    Ok(ObjectHead {
                        size,
                        // A composite checksum (`…-N`, multipart) is no SHA-256 of the object.
                        sha256: header(CHECKSUM_SHA256)
                            .and_then(|v| BASE64.decode(v.as_bytes()).ok())
                            .and_then(|d| d.try_into().ok()),
                        producer_upload: header(UPLOAD_MARK_HEADER).as_deref()
                            == Some(UPLOAD_MARK_VALUE),
                        encryption: header("x-amz-server-side-encryption"),
                        storage_class: header("x-amz-storage-class"),
                    })
                }
                404 => Err(StoreError::NotFound {
                    key: key.to_string(),
                }),
                _ => Err(self.refused(&answer, &format!("HEAD {key}"))),
            }
        })
    }

    fn create_multipart<'a>(
        &'a self,
        key: &'a str,
        content_type: &'a str,
        extra: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<String, StoreError>> {
        Box::pin(async move {
            let mut headers = vec![
                (
                    http::header::CONTENT_TYPE.as_str(),
                    content_type.to_string(),
                ),
                ("x-amz-checksum-algorithm", "SHA256".to_string()),
            ];
            headers.extend(extra.iter().map(|(k, v)| (k.as_str(), v.clone())));
            let answer = self
                .send(
                    http::Method::POST,
                    Some(&format!("{key}?uploads")),
                    &headers,
                    Some(Bytes::new()),
                )
                .await?;
            match answer.status {
                200 => xml_field(&answer.text, "UploadId").ok_or_else(|| {
                    self.refused(&answer, &format!("start an upload of {key} (no UploadId)"))
                }),
                _ => Err(self.refused(&answer, &format!("start an upload of {key}"))),
            }
        })
    }

    fn upload_part<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        number: u32,
        data: Bytes,
        sha256: [u8; 32],
    ) -> BoxFuture<'a, Result<UploadedPart, StoreError>> {
        Box::pin(async move {
            let checksum = BASE64.encode(sha256);
            let headers = [(CHECKSUM_SHA256, checksum.clone())];
            let target = format!(
                "{key}?partNumber={number}&uploadId={}",
                query_value(upload_id)
            );
            let answer = self
                .send(http::Method::PUT, Some(&target), &headers, Some(data))
                .await?;
            let etag = answer
                .headers
                .get(http::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let echoed = answer.checksum.as_ref().map(|v| v.as_bytes());
            match (answer.status, etag) {
                (200, Some(etag)) if echoed == Some(checksum.as_bytes()) => Ok(UploadedPart {
                    number,
                    etag,
                    checksum,
                }),
                (200, _) => Err(StoreError::ChecksumUnsupported {
                    endpoint: self.endpoint.clone(),
                }),
                (400, _)
                    if matches!(
                        answer.error.code.as_deref(),
                        Some("XAmzContentChecksumMismatch" | "BadDigest")
                    ) =>
                {
                    Err(StoreError::ChecksumMismatch {
                        key: key.to_string(),
                        declared: hex::encode(sha256),
                        detail: format!("part {number}: the store computed another"),
                    })
                }
                _ => Err(self.refused(&answer, &format!("upload part {number} of {key}"))),
            }
        })
    }

    fn complete_multipart<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        parts: &'a [UploadedPart],
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut body = String::from("<CompleteMultipartUpload>");
            for p in parts {
                body.push_str(&format!(
                    "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag><ChecksumSHA256>{}</ChecksumSHA256></Part>",
                    p.number,
                    xml_escape(&p.etag),
                    p.checksum
                ));
            }
            body.push_str("</CompleteMultipartUpload>");
            // Create-only, like every write: the object appears whole or not at all.
            let headers = [(http::header::IF_NONE_MATCH.as_str(), "*".to_string())];
            let target = format!("{key}?uploadId={}", query_value(upload_id));
            let answer = self
                .send(
                    http::Method::POST,
                    Some(&target),
                    &headers,
                    Some(Bytes::from(body)),
                )
                .await?;
            match answer.status {
                // S3 may answer 200 and put its error in the body.
                200 if !answer.text.contains("<Error>") => Ok(true),
                412 => Ok(false),
                409 => {
                    Err(self.unavailable(format!("completing {key} answered HTTP 409, retrying")))
                }
                _ => Err(self.refused(&answer, &format!("complete the upload of {key}"))),
            }
        })
    }

    fn abort_multipart<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let target = format!("{key}?uploadId={}", query_value(upload_id));
            let answer = self
                .send(http::Method::DELETE, Some(&target), &[], None)
                .await?;
            match answer.status {
                200 | 204 | 404 => Ok(()),
                _ => Err(self.refused(&answer, &format!("abort the upload of {key}"))),
            }
        })
    }

    fn object_tags<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>> {
        Box::pin(async move {
            let target = format!("{key}?tagging");
            let answer = self
                .send(http::Method::GET, Some(&target), &[], None)
                .await?;
            match answer.status {
                200 => Ok(answer
                    .text
                    .split("<Tag>")
                    .skip(1)
                    .filter_map(|tag| Some((xml_field(tag, "Key")?, xml_field(tag, "Value")?)))
                    .collect()),
                404 => Err(StoreError::NotFound {
                    key: key.to_string(),
                }),
                _ => Err(self.refused(&answer, &format!("GET {key} tags"))),
            }
        })
    }

    fn delete_object<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let answer = self
                .send(http::Method::DELETE, Some(key), &[], None)
                .await?;
            match answer.status {
                200 | 204 | 404 => Ok(()),
                _ => Err(self.refused(&answer, "delete object")),
            }
        })
    }

    fn clock(&self) -> BoxFuture<'_, Result<DateTime<Utc>, StoreError>> {
        Box::pin(async move {
            let answer = self.send(http::Method::HEAD, None, &[], None).await?;
            if answer.status != 200 {
                return Err(self.refused(&answer, "HEAD bucket"));
            }
            let date = answer.date.as_ref().and_then(|v| v.to_str().ok());
            date.and_then(parse_http_date)
                .ok_or_else(|| StoreError::Refused {
                    endpoint: self.endpoint.clone(),
                    what: "HEAD bucket".into(),
                    detail: format!(
                        "its answer carries no readable Date header ({date:?}), so object ages \
                         cannot be judged by the store's clock"
                    ),
                })
        })
    }

    fn bucket_exists(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let answer = self.send(http::Method::HEAD, None, &[], None).await?;
            match answer.status {
                200 => Ok(true),
                404 => Ok(false),
                _ => Err(self.refused(&answer, "HEAD bucket")),
            }
        })
    }

    fn create_bucket(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            if self.bucket_exists().await? {
                return Ok(false);
            }
            let answer = self.send(http::Method::PUT, None, &[], None).await?;
            match answer.status {
                200 => Ok(true),
                409 => Ok(false), // created concurrently: BucketAlreadyOwnedByYou
                _ => Err(self.refused(&answer, "create bucket")),
            }
        })
    }

    fn delete_bucket(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let answer = self.send(http::Method::DELETE, None, &[], None).await?;
            match answer.status {
                200 | 204 | 404 => Ok(()),
                _ => Err(self.refused(&answer, "delete bucket")),
            }
        })
    }
}

impl S3Direct {
    /// Signs and sends one request to the bucket (`key` None) or an object in it. Transport
    /// failures and answers the store may give differently next time are `Unavailable`; refused
    /// credentials are `Denied`; a missing bucket is `NoBucket`; every other answer goes back to
    /// the caller.
    async fn send(
        &self,
        method: http::Method,
        key: Option<&str>,
        headers: &[(&str, String)],
        body: Option<Bytes>,
    ) -> Result<S3Answer, StoreError> {
        let s = &self.settings;
        let url = match key {
            Some(key) => format!("{}/{key}", bucket_url(s, &s.endpoint)),
            None => bucket_url(s, &s.endpoint),
        };
        let mut signed = http::Request::builder().method(method.clone()).uri(&url);
        for (name, value) in headers {
            signed = signed.header(*name, value);
        }
        if let Some(body) = &body {
            signed = signed.header(http::header::CONTENT_LENGTH, body.len());
        }
        let mut signed = signed
            .body(object_store::client::HttpRequestBody::empty())
            .map_err(|e| StoreError::UnbuildableRequest {
                key: key.unwrap_or("the bucket").to_string(),
                detail: e.to_string(),
            })?;
        // The payload is not part of the signature: its checksum header is, and the store checks
        // the bytes against it.
        let credential =
            self.credentials
                .get_credential()
                .await
                .map_err(|e| StoreError::Denied {
                    bucket: s.bucket.clone(),
                    detail: format!("no credentials from the AWS chain: {}", one_line(&e)),
                })?;
        AwsAuthorizer::new(&credential, "s3", &s.region)
            .with_sign_payload(false)
            .try_authorize(&mut signed, None)
            .map_err(|e| self.unavailable(format!("signing request: {e}")))?;
        // A request sent on a pooled connection the store has just closed fails without saying
        // anything about the store's health. MinIO closes a connection after answering a
        // create-only write early (412, body unread), which replays after a rebalance do by the
        // hundred. So a failed send is resent at once, on another connection, before the store
        // is called unavailable; every request here is idempotent.
        let mut resends = 0;
        let response = loop {
            let mut request = self.http.request(method.clone(), &url);
            for (name, value) in signed.headers() {
                request = request.header(name, value);
            }
            request = match &body {
                Some(body) => request.body(body.clone()),
                None => request.timeout(self.admin_timeout),
            };
            match request.send().await {
                Ok(response) => break response,
                Err(e) => {
                    let detail = one_line(&e);
                    // A refused certificate is refused again on any connection.
                    let failure = StoreError::unanswered(&s.endpoint, detail.clone());
                    if resends < QUICK_RESENDS && !e.is_timeout() && failure.is_transient() {
                        resends += 1;
                        tracing::debug!(
                            error = %redact(&detail),
                            url = %redact(&url),
                            "resending on a fresh connection"
                        );
                        continue;
                    }
                    return Err(failure);
                }
            }
        };
        let status = response.status().as_u16();
        let checksum = response.headers().get(CHECKSUM_SHA256).cloned();
        let date = response.headers().get(http::header::DATE).cloned();
        let headers = response.headers().clone();
        let (error, text) = if status >= 300 {
            let text = response.text().await.unwrap_or_default();
            (S3ErrorBody::parse(&text), String::new())
        } else if method == http::Method::POST || url.ends_with("?tagging") {
            // Small XML answers (multipart uploads, tags); a stalled body is an outage like a
            // stalled request.
            let text = response
                .text()
                .await
                .map_err(|e| self.unavailable(one_line(&e)))?;
            let error = if text.contains("<Error>") {
                S3ErrorBody::parse(&text)
            } else {
                S3ErrorBody::default()
            };
            (error, text)
        } else {
            (S3ErrorBody::default(), String::new())
        };
        let answer = S3Answer {
            status,
            checksum,
            date,
            error,
            headers,
            text,
        };
        match status {
            401 | 403 => Err(StoreError::Denied {
                bucket: s.bucket.clone(),
                detail: answer.describe(),
            }),
            404 if answer.error.code.as_deref() == Some("NoSuchBucket") => {
                Err(StoreError::NoBucket {
                    bucket: s.bucket.clone(),
                    endpoint: self.endpoint.clone(),
                })
            }
            _ if answer.error.is_transient(status) => Err(self.unavailable(answer.describe())),
            _ => Ok(answer),
        }
    }

    fn unavailable(&self, detail: String) -> StoreError {
        StoreError::Unavailable {
            endpoint: self.endpoint.clone(),
            detail: redact(&detail).into_owned(),
        }
    }

    fn refused(&self, answer: &S3Answer, what: &str) -> StoreError {
        StoreError::Refused {
            endpoint: self.endpoint.clone(),
            what: what.to_string(),
            detail: answer.describe(),
        }
    }
}

impl S3Answer {
    fn describe(&self) -> String {
        self.error.describe(self.status)
    }
}

/// The text of the first `<name>` element of a small S3 XML answer.
fn xml_field(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(
        xml[start..end]
            .replace("&quot;", "\"")
            .replace("&amp;", "&"),
    )
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
}

/// An upload id in a query string: S3's ids are URL-safe base64-ish, but percent-encode anyway.
fn query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An HTTP `Date` (`Tue, 15 Nov 1994 08:12:31 GMT`, RFC 9110's IMF-fixdate).
fn parse_http_date(date: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc2822(date)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::sha256_hex;
    use crate::store::ImageStore;

    #[test]
    fn the_stores_date_header_is_read_as_utc() {
        let date = parse_http_date("Tue, 15 Nov 1994 08:12:31 GMT").unwrap();
        assert_eq!(date.to_rfc3339(), "1994-11-15T08:12:31+00:00");
        assert_eq!(parse_http_date("yesterday"), None);
    }

    /// A store that gives every request the same `answer`, whole HTTP response included.
    async fn store_answering(answer: &'static [u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    // One request per connection; its body is small enough for one read or two.
                    let _ = socket.read(&mut buf).await;
                    let _ = socket.write_all(answer).await;
                });
            }
        });
        endpoint
    }

    /// Settings for a store at `endpoint`.
    fn settings_at(endpoint: String) -> StoreSettings {
        StoreSettings {
            endpoint,
            bucket: "b".into(),
            access_key: "k".into(),
            secret_key: "s".into(),
            region: "us-east-1".into(),
            ca_file: None,
            aws_chain: None,
            virtual_hosted: false,
            public_endpoint: None,
            write: Default::default(),
        }
    }

    /// What a PUT of a small image to a store giving every request `answer` comes to.
    async fn put_answered_with(answer: &'static [u8]) -> StoreError {
        let settings = settings_at(store_answering(answer).await);
        let store = ImageStore::s3(&settings, Duration::from_secs(2)).unwrap();
        let data = Bytes::from_static(b"image bytes");
        store
            .put_image("k", data.clone(), "image/png", &sha256_hex(&data))
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn a_content_type_that_is_no_header_value_refuses_the_record_instead_of_waiting() {
        // Nothing listens there: a request that were sent would be an outage to wait out.
        let store = ImageStore::s3(
            &settings_at("http://127.0.0.1:1".into()),
            Duration::from_secs(2),
        )
        .unwrap();
        let data = Bytes::from_static(b"image bytes");
        let err = store
            .put_image("k", data.clone(), "image/png\n", &sha256_hex(&data))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::UnbuildableRequest { .. }),
            "{err}"
        );
        assert!(!err.is_transient());
    }

    #[tokio::test]
    async fn a_store_that_does_not_verify_the_checksum_is_a_permanent_error_naming_the_header() {
        // 200 with no checksum echoed: what an S3-compatible server without additional-checksum
        // support does. MinIO cannot be made to behave so.
        let err =
            put_answered_with(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        assert!(
            matches!(err, StoreError::ChecksumUnsupported { .. }),
            "{err}"
        );
        assert!(!err.is_transient());
        assert!(err.to_string().contains("x-amz-checksum-sha256"), "{err}");
    }

    #[tokio::test]
    async fn a_request_the_store_gave_up_on_is_retried_not_refused() {
        // MinIO answered this to a PUT in CI, mid-rebalance on a loaded machine; the consumer
        // took it for a refusal and stopped.
        let err = put_answered_with(
            b"HTTP/1.1 499 Client Closed Request\r\ncontent-length: 110\r\nconnection: close\r\n\r\n\
              <Error><Code>ClientDisconnected</Code><Message>Client disconnected before response was ready</Message></Error>",
        )
        .await;
        assert!(err.is_transient(), "{err}");
        assert!(
            err.to_string().contains("HTTP 499 ClientDisconnected"),
            "{err}"
        );
        let slow = put_answered_with(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 42\r\nconnection: close\r\n\r\n\
              <Error><Code>RequestTimeout</Code></Error>",
        )
        .await;
        assert!(slow.is_transient(), "{slow}");
    }

    #[tokio::test]
    async fn a_request_the_store_refuses_stays_refused() {
        let err = put_answered_with(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 43\r\nconnection: close\r\n\r\n\
              <Error><Code>InvalidArgument</Code></Error>",
        )
        .await;
        assert!(matches!(err, StoreError::Refused { .. }), "{err}");
        assert!(!err.is_transient());
    }
}

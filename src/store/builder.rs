//! Settings to a connected store, in one place: the endpoint (path-style or virtual-hosted), the
//! credentials (static keys or the AWS chain), TLS roots (the system's, plus MINIO_CA_FILE), the
//! timeouts, and the presigner for a public endpoint.

use super::direct::S3Direct;
use super::{ImageStore, StoreError};
use crate::config::{StoreSettings, redact, redact_url};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{ClientOptions, RetryConfig};
use std::sync::Arc;
use std::time::Duration;

impl ImageStore {
    /// A store backed by S3/MinIO.
    pub fn s3(settings: &StoreSettings, timeout: Duration) -> Result<Self, StoreError> {
        // The endpoint as messages name it: credentials in the URL never reach a message.
        let shown = redact_url(&settings.endpoint);
        let unavailable = |detail: String| StoreError::Unavailable {
            endpoint: shown.clone(),
            detail: redact(&detail).into_owned(),
        };
        // HTTPS trusts the system's roots, plus a private CA when MINIO_CA_FILE names one.
        let ca_pem = match &settings.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| StoreError::Refused {
                endpoint: shown.clone(),
                what: format!("the CA file {}", path.display()),
                detail: e.to_string(),
            })?),
            None => None,
        };
        let bad_ca = |e: String| StoreError::Refused {
            endpoint: shown.clone(),
            what: "MINIO_CA_FILE".into(),
            detail: format!("not a PEM certificate bundle: {e}"),
        };
        let mut client_options = ClientOptions::new()
            .with_allow_http(true)
            .with_connect_timeout(timeout)
            .with_timeout(Duration::from_secs(60));
        let mut extra_roots = Vec::new();
        if let Some(pem) = &ca_pem {
            for cert in object_store::Certificate::from_pem_bundle(pem)
                .map_err(|e| bad_ca(e.to_string()))?
            {
                client_options = client_options.with_root_certificate(cert);
            }
            extra_roots =
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| bad_ca(e.to_string()))?;
        }
        let store = s3_builder(settings, &settings.endpoint)
            // Reads and lists only: writes and deletes go through `S3Direct` (direct.rs).
            .with_unsigned_payload(true)
            // Short internal retries: outages are ours to notice, log and ride out (pipeline::retry).
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(5),
                ..RetryConfig::default()
            })
            .with_client_options(client_options)
            .build()
            .map_err(|e| unavailable(e.to_string()))?;
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(Duration::from_secs(60))
            // One idle connection per upload in flight, so bursts reuse connections.
            .pool_max_idle_per_host(64)
            .tls_certs_merge(extra_roots)
            .build()
            .map_err(|e| unavailable(e.to_string()))?;
        let store = Arc::new(store);
        let credentials = store.credentials().clone();
        // Presigned URLs carry the host they were signed for: a public endpoint gets a signer of
        // its own (signing only, it sends nothing).
        let signer = match &settings.public_endpoint {
            None => store.clone(),
            Some(public) => Arc::new(
                s3_builder(settings, public)
                    .with_allow_http(true)
                    .build()
                    .map_err(|e| unavailable(e.to_string()))?,
            ),
        };
        Ok(ImageStore {
            write: settings.write.clone(),
            signer: Some(signer),
            objects: store,
            bucket: settings.bucket.clone(),
            endpoint: shown.clone(),
            backend: Arc::new(S3Direct {
                settings: settings.clone(),
                endpoint: shown,
                // The provider object_store chose (static keys or the AWS chain, which caches and
                // refreshes): every request, the checksummed PUT too, signs with the same.
                credentials,
                http,
                admin_timeout: timeout * 3,
            }),
        })
    }
}

/// The bucket and credentials of `settings`, at `endpoint`, path-style.
fn s3_builder(settings: &StoreSettings, endpoint: &str) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::new();
    match &settings.aws_chain {
        // object_store's own reading of the AWS variables (as its `from_env` does, from ours).
        Some(aws) => {
            for (key, value) in aws {
                if let Ok(config_key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                    builder = builder.with_config(config_key, value);
                }
            }
        }
        None => {
            builder = builder
                .with_access_key_id(&settings.access_key)
                .with_secret_access_key(&settings.secret_key);
        }
    }
    // Virtual-hosted: object_store takes the endpoint with the bucket already in its host.
    let endpoint = if settings.virtual_hosted {
        bucket_url(settings, endpoint)
    } else {
        endpoint.to_string()
    };
    builder
        .with_endpoint(endpoint)
        .with_bucket_name(&settings.bucket)
        .with_region(&settings.region)
        .with_virtual_hosted_style_request(settings.virtual_hosted)
}

/// The bucket's URL at `endpoint`: `https://host/bucket`, or `https://bucket.host` virtual-hosted.
/// The direct client addresses the same bucket the same way.
pub(super) fn bucket_url(settings: &StoreSettings, endpoint: &str) -> String {
    match endpoint.split_once("://") {
        Some((scheme, host)) if settings.virtual_hosted => {
            format!("{scheme}://{}.{host}", settings.bucket)
        }
        _ => format!("{endpoint}/{}", settings.bucket),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_bucket_is_in_the_path_or_in_the_host_name() {
        let mut settings = crate::config::Settings::from_vars(&crate::config::tests::vars(&[
            (
                "MINIO_CONNECTION_STRING",
                "https://s3.eu-west-1.amazonaws.com",
            ),
            ("MINIO_BUCKET_NAME", "photos"),
        ]))
        .unwrap()
        .store;
        let endpoint = settings.endpoint.clone();
        assert_eq!(
            bucket_url(&settings, &endpoint),
            "https://s3.eu-west-1.amazonaws.com/photos"
        );
        settings.virtual_hosted = true;
        assert_eq!(
            bucket_url(&settings, &endpoint),
            "https://photos.s3.eu-west-1.amazonaws.com"
        );
        // object_store, given the same, addresses objects there too.
        use object_store::signer::Signer;
        let store = s3_builder(&settings, &endpoint).build().unwrap();
        let path = object_store::path::Path::from("images/a.png");
        let url = store
            .signed_url(http::Method::GET, &path, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(url.host_str(), Some("photos.s3.eu-west-1.amazonaws.com"));
        assert_eq!(url.path(), "/images/a.png");
    }
}

//! The JSON API:
//!
//! - `GET /api/images?customer=&source=&format=&from=&to=&limit=&cursor=`: a page of images,
//!   newest first, with `next_cursor` (and a ready `next` link) while more remain;
//! - `GET /api/images/{id}`: one image's metadata and lineage;
//! - `GET /api/images/{id}/url?ttl=SECONDS[&download=true]`: a presigned GET URL of the bytes;
//! - `GET /api/pipeline`: what the pipeline page shows.
//!
//! Errors are `{"error": "..."}` with 400 (a bad parameter, saying which and what it accepts),
//! 404 (no such image), or 503 (a service is down, saying which).

use super::auth::Caller;
use super::overview::Overview;
use super::{App, ServeError, query_pairs};
use crate::domain::{ImageFormat, StoredImage};
use crate::search::ImageQuery;
use axum::Json;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// A presigned URL lives this long unless the caller asks otherwise.
pub const DEFAULT_URL_TTL: Duration = Duration::from_secs(300);

/// An error as the API returns it.
pub struct ApiError(ServeError);

impl<E: Into<ServeError>> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.log();
        (
            self.0.status(),
            Json(serde_json::json!({ "error": self.0.message() })),
        )
            .into_response()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Lineage {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Links {
    pub page: String,
    pub thumbnail: String,
    pub download: String,
    pub presigned_url: String,
}

/// One image as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageJson {
    pub image_id: String,
    pub customer_id: String,
    pub source_id: String,
    pub created_at: DateTime<Utc>,
    pub stored_at: DateTime<Utc>,
    pub content_type: String,
    pub format: Option<String>,
    pub width: i32,
    pub height: i32,
    pub size_bytes: i64,
    pub sha256: String,
    pub bucket: String,
    pub object_key: String,
    pub kafka: Lineage,
    pub links: Links,
}

impl From<&StoredImage> for ImageJson {
    fn from(image: &StoredImage) -> Self {
        let e = &image.entry;
        let id = e.image_id.to_string();
        ImageJson {
            links: Links {
                page: format!("/images/{id}"),
                thumbnail: format!("/thumbnails/{id}"),
                download: format!("/images/{id}/download"),
                presigned_url: format!("/api/images/{id}/url"),
            },
            image_id: id,
            customer_id: e.customer_id.clone(),
            source_id: e.source_id.clone(),
            created_at: e.created_at,
            stored_at: image.stored_at,
            content_type: e.content_type.clone(),
            format: ImageFormat::from_content_type(&e.content_type).map(|f| f.name().to_string()),
            width: e.width,
            height: e.height,
            size_bytes: e.size_bytes,
            sha256: e.sha256.clone(),
            bucket: e.bucket.clone(),
            object_key: e.object_key.clone(),
            kafka: Lineage {
                topic: e.kafka_topic.clone(),
                partition: e.kafka_partition,
                offset: e.kafka_offset,
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchPage {
    pub images: Vec<ImageJson>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
    /// The next page's URL, filters kept.
    pub next: Option<String>,
}

/// A search's URL with these filters and this cursor.
pub fn search_url(path: &str, query: &ImageQuery, cursor: Option<&str>) -> String {
    let mut url = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in query.filter_params() {
        url.append_pair(name, &value);
    }
    if let Some(cursor) = cursor {
        url.append_pair("cursor", cursor);
    }
    let encoded = url.finish();
    if encoded.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{encoded}")
    }
}

pub async fn search(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<SearchPage>, ApiError> {
    let pairs = query_pairs(raw.as_deref());
    let query = ImageQuery::from_params(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| ServeError::BadRequest(e.to_string()))?;
    let (images, next) = app.search(&caller, &query).await?;
    let next_cursor = next.map(|c| c.encode());
    Ok(Json(SearchPage {
        images: images.iter().map(ImageJson::from).collect(),
        next: next_cursor
            .as_deref()
            .map(|c| search_url("/api/images", &query, Some(c))),
        next_cursor,
    }))
}

pub async fn image(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<ImageJson>, ApiError> {
    Ok(Json(ImageJson::from(
        &app.stored_image(&caller, &id).await?,
    )))
}

#[derive(Debug, Clone, Serialize)]
pub struct PresignedUrl {
    pub url: String,
    pub expires_at: DateTime<Utc>,
    pub ttl_secs: u64,
}

/// What `?ttl=&download=` ask for; `max_ttl` is IMGSTREAM_SERVE_MAX_URL_TTL_SECS.
fn url_params(raw: Option<&str>, max_ttl: Duration) -> Result<(Duration, bool), ServeError> {
    let mut ttl = DEFAULT_URL_TTL.min(max_ttl);
    let mut download = false;
    for (name, value) in query_pairs(raw) {
        match name.as_str() {
            "ttl" => {
                ttl = value
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .map(Duration::from_secs)
                    .filter(|t| !t.is_zero() && *t <= max_ttl)
                    .ok_or_else(|| {
                        ServeError::BadRequest(format!(
                            "ttl={value:?} is not a number of seconds from 1 to {}",
                            max_ttl.as_secs()
                        ))
                    })?
            }
            "download" => {
                download = match value.trim() {
                    "" | "true" | "1" => true,
                    "false" | "0" => false,
                    other => {
                        return Err(ServeError::BadRequest(format!(
                            "download={other:?} is not true or false"
                        )));
                    }
                }
            }
            other => {
                return Err(ServeError::BadRequest(format!(
                    "unknown parameter {other:?}; a URL request takes ttl (seconds) and download (true or false)"
                )));
            }
        }
    }
    Ok((ttl, download))
}

/// The file name a download is saved under: the image id and its format's extension.
pub fn download_name(image: &StoredImage) -> String {
    let extension =
        ImageFormat::from_content_type(&image.entry.content_type).map_or("bin", |f| match f {
            ImageFormat::Jpeg => "jpg",
            other => other.name(),
        });
    format!("{}.{extension}", image.entry.image_id)
}

pub async fn presigned_url(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<PresignedUrl>, ApiError> {
    let (ttl, download) = url_params(raw.as_deref(), app.security.max_url_ttl)?;
    // The scope check comes first: nothing is signed for an image the caller may not see.
    let image = app.stored_image(&caller, &id).await?;
    let name = download.then(|| download_name(&image));
    let (url, ttl) = app.presign(&caller, &image, ttl, name.as_deref()).await?;
    Ok(Json(PresignedUrl {
        url: url.to_string(),
        expires_at: Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default(),
        ttl_secs: ttl.as_secs(),
    }))
}

pub async fn pipeline(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Arc<Overview>>, ApiError> {
    app.require_admin(&caller)?;
    Ok(Json(app.overview.get(&app).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parameters_are_checked() {
        let max = Duration::from_secs(3600);
        assert_eq!(url_params(None, max).unwrap(), (DEFAULT_URL_TTL, false));
        assert_eq!(
            url_params(None, Duration::from_secs(60)).unwrap(),
            (Duration::from_secs(60), false),
            "the default never outlives the maximum"
        );
        assert_eq!(
            url_params(Some("ttl=60&download=true"), max).unwrap(),
            (Duration::from_secs(60), true)
        );
        assert_eq!(url_params(Some("ttl=3600"), max).unwrap(), (max, false));
        for bad in [
            "ttl=0",
            "ttl=3601",
            "ttl=soon",
            "download=maybe",
            "expires=5",
        ] {
            let err = url_params(Some(bad), max).unwrap_err();
            assert!(matches!(err, ServeError::BadRequest(_)), "{bad}: {err:?}");
        }
    }

    #[test]
    fn next_links_keep_the_filters() {
        let query = ImageQuery {
            customer_id: Some("a b&c".into()),
            ..ImageQuery::default()
        };
        assert_eq!(
            search_url("/api/images", &query, Some("1_ff")),
            "/api/images?customer=a+b%26c&cursor=1_ff"
        );
        assert_eq!(search_url("/", &ImageQuery::default(), None), "/");
    }
}

//! The HTML pages: the gallery (`/`), an image's page (`/images/{id}`), its download
//! (`/images/{id}/download`, a redirect to a fresh presigned URL), thumbnails
//! (`/thumbnails/{id}`) and the pipeline page (`/pipeline`). Templates live in `templates/`.

use super::api::{download_name, search_url};
use super::auth::Caller;
use super::browser::SignedIn;
use super::overview::Overview;
use super::thumbnails::{THUMBNAIL_SIDE, fit};
use super::{App, ServeError, query_pairs};
use crate::domain::{ImageFormat, StoredImage};
use crate::search::ImageQuery;
use askama::Template;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;

/// How long the image page's own `<img>` URL stays valid.
const VIEW_URL_TTL: Duration = Duration::from_secs(3600);
/// A download link is presigned when clicked, so it only needs to outlive the redirect.
const DOWNLOAD_URL_TTL: Duration = Duration::from_secs(300);

/// An error as a page shows it.
pub struct PageError(pub(super) ServeError);

impl<E: Into<ServeError>> From<E> for PageError {
    fn from(e: E) -> Self {
        PageError(e.into())
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    signed_in: Option<SignedIn>,
    status: u16,
    message: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        self.0.log();
        let status = self.0.status();
        let page = ErrorPage {
            title: status.canonical_reason().unwrap_or("Error"),
            signed_in: None,
            status: status.as_u16(),
            message: self.0.message(),
        };
        (status, render(&page)).into_response()
    }
}

fn render(page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        // Templates are checked at compile time; rendering can fail only on a Display error.
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render the page: {e}"),
        )
            .into_response(),
    }
}

fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A `datetime-local` input's value for a time (UTC).
fn form_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(String::new, |t| t.format("%Y-%m-%dT%H:%M").to_string())
}

fn format_name(content_type: &str) -> String {
    ImageFormat::from_content_type(content_type)
        .map_or_else(|| content_type.to_string(), |f| f.name().to_string())
}

/// One cell of the gallery.
struct Card {
    id: String,
    customer: String,
    source: String,
    created: String,
    format: String,
    size: String,
    thumb_width: u32,
    thumb_height: u32,
}

impl From<&StoredImage> for Card {
    fn from(image: &StoredImage) -> Self {
        let e = &image.entry;
        let (tw, th) = fit(
            e.width.max(1) as u32,
            e.height.max(1) as u32,
            THUMBNAIL_SIDE,
        );
        Card {
            id: e.image_id.to_string(),
            customer: e.customer_id.clone(),
            source: e.source_id.clone(),
            created: when(&e.created_at),
            format: format_name(&e.content_type),
            size: format!("{}×{}", e.width, e.height),
            // Shown at half size: a 256 px thumbnail is sharp on a dense screen.
            thumb_width: tw.div_ceil(2),
            thumb_height: th.div_ceil(2),
        }
    }
}

/// The filter form's current values.
struct Filters {
    customer: String,
    source: String,
    from: String,
    to: String,
}

#[derive(Template)]
#[template(path = "gallery.html")]
struct GalleryPage {
    title: &'static str,
    signed_in: Option<SignedIn>,
    filters: Filters,
    /// (format name, selected in the form)
    formats: Vec<(&'static str, bool)>,
    cards: Vec<Card>,
    error: Option<String>,
    next_url: Option<String>,
    first_url: Option<String>,
}

pub async fn gallery(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    signed_in: Option<Extension<SignedIn>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    let pairs = query_pairs(raw.as_deref());
    let parsed = ImageQuery::from_params(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let formats = |selected: &str| {
        ImageFormat::ALL
            .iter()
            .map(|f| (f.name(), f.name() == selected))
            .collect()
    };
    let query = match parsed {
        Ok(query) => query,
        // The form stays usable: the page says what was wrong, with the values as typed.
        Err(e) => {
            let typed = |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let page = GalleryPage {
                title: "Gallery",
                signed_in: signed_in.map(|s| s.0),
                filters: Filters {
                    customer: typed("customer"),
                    source: typed("source"),
                    from: typed("from"),
                    to: typed("to"),
                },
                formats: formats(&typed("format")),
                cards: Vec::new(),
                error: Some(e.to_string()),
                next_url: None,
                first_url: Some("/".into()),
            };
            return Ok((axum::http::StatusCode::BAD_REQUEST, render(&page)).into_response());
        }
    };
    let (images, next) = app.search(&caller, &query).await?;
    let page = GalleryPage {
        title: "Gallery",
        signed_in: signed_in.map(|s| s.0),
        filters: Filters {
            customer: query.customer_id.clone().unwrap_or_default(),
            source: query.source_id.clone().unwrap_or_default(),
            from: form_time(query.created_from),
            to: form_time(query.created_before),
        },
        formats: formats(query.format.map_or("", |f| f.name())),
        cards: images.iter().map(Card::from).collect(),
        error: None,
        next_url: next.map(|c| search_url("/", &query, Some(&c.encode()))),
        first_url: query.after.map(|_| search_url("/", &query, None)),
    };
    Ok(render(&page))
}

#[derive(Template)]
#[template(path = "image.html")]
struct ImagePage {
    title: String,
    signed_in: Option<SignedIn>,
    id: String,
    view_url: String,
    rows: Vec<(&'static str, &'static str, String)>,
}

pub async fn image(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    signed_in: Option<Extension<SignedIn>>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let image = app.stored_image(&caller, &id).await?;
    let (view_url, _) = app.presign(&caller, &image, VIEW_URL_TTL, None).await?;
    let e = &image.entry;
    // (element id, label, value): the ids let tests and scripts read the page reliably.
    let rows = vec![
        ("image-id", "Image id", e.image_id.to_string()),
        ("customer", "Customer", e.customer_id.clone()),
        ("source", "Source", e.source_id.clone()),
        ("created-at", "Created", when(&e.created_at)),
        ("stored-at", "Stored", when(&image.stored_at)),
        ("content-type", "Content type", e.content_type.clone()),
        ("dimensions", "Size", format!("{}×{} px", e.width, e.height)),
        ("bytes", "Bytes", e.size_bytes.to_string()),
        ("sha256", "SHA-256", e.sha256.clone()),
        (
            "object",
            "Object",
            format!("s3://{}/{}", e.bucket, e.object_key),
        ),
        ("topic", "Kafka topic", e.kafka_topic.clone()),
        ("partition", "Partition", e.kafka_partition.to_string()),
        ("offset", "Offset", e.kafka_offset.to_string()),
    ];
    Ok(render(&ImagePage {
        title: format!("Image {}", e.image_id),
        signed_in: signed_in.map(|s| s.0),
        id: e.image_id.to_string(),
        view_url: view_url.to_string(),
        rows,
    }))
}

/// Redirects to a fresh presigned URL that makes the browser save the file.
pub async fn download(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let image = app.stored_image(&caller, &id).await?;
    let (url, _) = app
        .presign(
            &caller,
            &image,
            DOWNLOAD_URL_TTL,
            Some(&download_name(&image)),
        )
        .await?;
    Ok(Redirect::to(url.as_str()).into_response())
}

pub async fn thumbnail(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let image = app.stored_image(&caller, &id).await?;
    let jpeg = app.thumbnails.get(&image).await?;
    // An image never changes under its id, so neither does its thumbnail; behind sign-in only
    // the caller's own browser may keep it, never a shared cache.
    let cache = if app.security.oidc.is_some() {
        "private, max-age=31536000, immutable"
    } else {
        "public, max-age=31536000, immutable"
    };
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, cache),
        ],
        jpeg,
    )
        .into_response())
}

struct PartitionRow {
    partition: i32,
    end: i64,
    committed: String,
    lag: i64,
    rows: i64,
}

struct MinuteBar {
    minute: String,
    rows: i64,
    /// Bar height in percent of the busiest minute.
    percent: u32,
}

#[derive(Template)]
#[template(path = "pipeline.html")]
struct PipelinePage {
    title: &'static str,
    signed_in: Option<SignedIn>,
    taken_at: String,
    overview: Arc<Overview>,
    partitions: Vec<PartitionRow>,
    minutes: Vec<MinuteBar>,
    letters: Vec<LetterRow>,
}

struct LetterRow {
    at: String,
    code: String,
    reason: String,
    original: String,
    key: String,
    replays: u32,
}

pub async fn pipeline(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    signed_in: Option<Extension<SignedIn>>,
) -> Result<Response, PageError> {
    app.require_admin(&caller)?;
    let overview = app.overview.get(&app).await?;
    let busiest = overview
        .stored_per_minute
        .iter()
        .map(|m| m.rows)
        .max()
        .unwrap_or(0)
        .max(1);
    let page = PipelinePage {
        title: "Pipeline",
        signed_in: signed_in.map(|s| s.0),
        taken_at: when(&overview.taken_at),
        partitions: overview
            .status
            .partitions
            .iter()
            .map(|p| PartitionRow {
                partition: p.partition,
                end: p.high_watermark,
                committed: p.committed.map_or_else(|| "–".into(), |c| c.to_string()),
                lag: p.lag,
                rows: p.indexed_rows,
            })
            .collect(),
        minutes: overview
            .stored_per_minute
            .iter()
            .map(|m| MinuteBar {
                minute: m.minute.format("%H:%M").to_string(),
                rows: m.rows,
                percent: (m.rows * 100 / busiest) as u32,
            })
            .collect(),
        letters: overview
            .recent_dead_letters
            .iter()
            .map(|l| LetterRow {
                at: l.dead_lettered_at.as_ref().map_or_else(|| "–".into(), when),
                code: l.code.clone(),
                reason: match &l.omitted {
                    Some(omitted) => format!("{} [{omitted} omitted from the letter]", l.reason),
                    None => l.reason.clone(),
                },
                original: l.original.clone(),
                key: l.key.clone().unwrap_or_default(),
                replays: l.replays,
            })
            .collect(),
        overview,
    };
    Ok(render(&page))
}

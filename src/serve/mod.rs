//! `imgstream serve`: find, view and fetch stored images, and watch the pipeline, over HTTP.
//!
//! - [`pages`]: the gallery, an image's page and the pipeline page, rendered on the server
//!   (askama templates in `templates/`), no JavaScript and nothing from a CDN;
//! - [`api`]: the same search as JSON with keyset pagination, one image's metadata, and
//!   short-lived presigned URLs so image bytes go from the store to the reader, never through us;
//! - [`thumbnails`]: made on first request, kept in the bucket;
//! - [`overview`]: the pipeline's lag, counts, throughput and recent dead letters;
//! - `/metrics`, `/healthz` and `/readyz` for the server itself.
//!
//! The server only reads the index and the images; its one write is a thumbnail, under its own
//! prefix.

pub mod api;
pub mod overview;
pub mod pages;
pub mod thumbnails;

use crate::config::Settings;
use crate::index::{ImageIndex, IndexError};
use crate::store::{ImageStore, StoreError};
use crate::wiring;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use overview::OverviewCache;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thumbnails::{ThumbnailMetrics, Thumbnails};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// Thumbnails made at once (each takes a core while it decodes and resizes).
    pub thumbnail_makers: usize,
}

/// What every handler shares.
pub struct App {
    pub settings: Settings,
    pub store: ImageStore,
    pub index: ImageIndex,
    pub thumbnails: Thumbnails,
    pub overview: OverviewCache,
    metrics: ServeMetrics,
}

/// A running server: its address, and the task that serves.
pub struct Serving {
    pub addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Serving {
    /// Serves until the task ends (it ends only on an I/O error of the listener).
    pub async fn wait(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Serving {
    // A server belongs to whoever started it: tests stop theirs by dropping it.
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Connects to the index and the store, binds `opts.addr` and starts serving in the background.
pub async fn start(settings: &Settings, opts: ServeOptions) -> Result<Serving, String> {
    let store = wiring::store(settings).map_err(|e| e.to_string())?;
    let index = wiring::index(settings).await.map_err(|e| e.to_string())?;
    let pending = index
        .pending_migrations()
        .await
        .map_err(|e| e.to_string())?;
    if !pending.is_empty() {
        return Err(format!(
            "the index lacks migrations {} that browsing needs; run `imgstream setup`",
            pending.join(", ")
        ));
    }
    let metrics = ServeMetrics::new();
    let app = Arc::new(App {
        settings: settings.clone(),
        thumbnails: Thumbnails::new(
            store.clone(),
            opts.thumbnail_makers,
            metrics.thumbnails.clone(),
        ),
        store,
        index,
        overview: OverviewCache::default(),
        metrics,
    });
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {}: {e}; choose another address with --addr",
                opts.addr
            )
        })?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let router = router(app);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "the server stopped");
        }
    });
    tracing::info!(
        "serving the gallery at http://{addr}/ (API /api/images, pipeline /pipeline, metrics /metrics)"
    );
    Ok(Serving {
        addr,
        task: Some(task),
    })
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(pages::gallery))
        .route("/images/{id}", get(pages::image))
        .route("/images/{id}/download", get(pages::download))
        .route("/thumbnails/{id}", get(pages::thumbnail))
        .route("/pipeline", get(pages::pipeline))
        .route("/api/images", get(api::search))
        .route("/api/images/{id}", get(api::image))
        .route("/api/images/{id}/url", get(api::presigned_url))
        .route("/api/pipeline", get(api::pipeline))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route_layer(middleware::from_fn_with_state(app.clone(), track))
        .with_state(app)
}

/// Why a request failed, judged once for the API and the pages alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeError {
    BadRequest(String),
    NotFound(String),
    Unavailable(String),
    Internal(String),
}

impl ServeError {
    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServeError::NotFound(_) => StatusCode::NOT_FOUND,
            ServeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ServeError::BadRequest(m)
            | ServeError::NotFound(m)
            | ServeError::Unavailable(m)
            | ServeError::Internal(m) => m,
        }
    }
}

impl From<IndexError> for ServeError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::Other(_) => ServeError::Internal(e.to_string()),
            _ => ServeError::Unavailable(e.to_string()),
        }
    }
}

impl From<StoreError> for ServeError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ServeError::NotFound(e.to_string()),
            StoreError::Unavailable { .. }
            | StoreError::Denied { .. }
            | StoreError::NoBucket { .. } => ServeError::Unavailable(e.to_string()),
            _ => ServeError::Internal(e.to_string()),
        }
    }
}

impl From<thumbnails::ThumbnailError> for ServeError {
    fn from(e: thumbnails::ThumbnailError) -> Self {
        match e {
            thumbnails::ThumbnailError::Store(e) => e.into(),
            e @ thumbnails::ThumbnailError::Undecodable { .. } => {
                ServeError::Internal(e.to_string())
            }
        }
    }
}

/// An image id from a URL path.
pub fn parse_image_id(text: &str) -> Result<Uuid, ServeError> {
    Uuid::try_parse(text).map_err(|_| {
        ServeError::BadRequest(format!(
            "{:?} is not an image id; ids are UUIDs like 3f2a0c1e-8b7d-4c6e-9a51-0d2e4f6a8b9c",
            text.chars().take(80).collect::<String>()
        ))
    })
}

/// URL query pairs, decoded.
pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

impl App {
    /// One indexed image of our bucket, or 404.
    pub async fn stored_image(&self, id: &str) -> Result<crate::domain::StoredImage, ServeError> {
        let id = parse_image_id(id)?;
        self.index
            .stored_image(self.store.bucket(), id)
            .await?
            .ok_or_else(|| ServeError::NotFound(format!("no image {id} in the index")))
    }

    /// One page of a search and the cursor of the next page, if there is one.
    pub async fn search(
        &self,
        query: &crate::search::ImageQuery,
    ) -> Result<
        (
            Vec<crate::domain::StoredImage>,
            Option<crate::search::Cursor>,
        ),
        ServeError,
    > {
        // One row more than asked says whether another page exists without a second query.
        let probe = crate::search::ImageQuery {
            limit: query.limit + 1,
            ..query.clone()
        };
        let mut images = self.index.search(self.store.bucket(), &probe).await?;
        let next = if images.len() > query.limit as usize {
            images.truncate(query.limit as usize);
            images.last().map(|i| crate::search::Cursor {
                created_at: i.entry.created_at,
                image_id: i.entry.image_id,
            })
        } else {
            None
        };
        Ok((images, next))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The server's own metrics: requests by route and status, latency by route, thumbnails.
struct ServeMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    thumbnails: ThumbnailMetrics,
}

impl ServeMetrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("imgstream");
        let requests = Family::<RequestLabels, Counter>::default();
        let seconds = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let thumbnails = ThumbnailMetrics {
            made: Counter::default(),
            served_from_store: Counter::default(),
            make_seconds: latency_histogram(),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time to answer an HTTP request, by route",
            Unit::Seconds,
            seconds.clone(),
        );
        registry.register(
            "thumbnails_made",
            "Thumbnails made from their image (first requests)",
            thumbnails.made.clone(),
        );
        registry.register(
            "thumbnails_served_from_store",
            "Thumbnails served as kept in the bucket",
            thumbnails.served_from_store.clone(),
        );
        registry.register_with_unit(
            "thumbnail_make_duration",
            "Time to make one thumbnail: read the image, decode, resize, encode",
            Unit::Seconds,
            thumbnails.make_seconds.clone(),
        );
        ServeMetrics {
            registry,
            requests,
            seconds,
            thumbnails,
        }
    }
}

async fn track(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    app.metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            status: response.status().as_u16(),
        })
        .inc();
    app.metrics
        .seconds
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &app.metrics.registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

/// Ready when the index answers and the bucket is there.
async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    let limit = Duration::from_secs(3);
    let index = match tokio::time::timeout(limit, app.index.ping()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "PostgreSQL did not answer within {}s",
            limit.as_secs()
        )),
    };
    let store = match tokio::time::timeout(limit, app.store.bucket_exists()).await {
        Ok(Ok(true)) => None,
        Ok(Ok(false)) => Some(format!("bucket {} does not exist", app.store.bucket())),
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "the object store did not answer within {}s",
            limit.as_secs()
        )),
    };
    let problems: Vec<String> = index.into_iter().chain(store).collect();
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join("; ")),
        )
    }
}

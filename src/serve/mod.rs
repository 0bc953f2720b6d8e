//! `imgstream serve`: find, view and fetch stored images, and watch the pipeline, over HTTP.
//!
//! - [`pages`]: the gallery, an image's page and the pipeline page, rendered on the server
//!   (askama templates in `templates/`), no JavaScript and nothing from a CDN;
//! - [`api`]: the same search as JSON with keyset pagination, one image's metadata, and
//!   short-lived presigned URLs so image bytes go from the store to the reader, never through us;
//! - [`thumbnails`]: made on first request, kept in the bucket;
//! - [`overview`]: the pipeline's lag, counts, throughput and recent dead letters;
//! - [`auth`]: bearer tokens checked against the OpenID Connect issuer's keys; [`browser`]:
//!   people signing in at the provider, their sessions kept in sealed cookies ([`session`]);
//! - `/metrics`, `/healthz` and `/readyz` for the server itself.
//!
//! The server only reads the index and the images; its one write is a thumbnail, under its own
//! prefix. It runs as an identity of its own (README, "Least privilege"): `DATABASE_SERVE_ROLE`
//! in PostgreSQL, `IMGSTREAM_SERVE_S3_ACCESS_KEY` in the store, a Kafka user that may only read.

pub mod api;
pub mod auth;
pub mod browser;
pub mod overview;
pub mod pages;
pub mod session;
mod shrink;
pub mod thumbnails;

use crate::config::{ServeSettings, Settings};
use crate::index::{ImageIndex, IndexError};
use crate::store::{ImageStore, StoreError};
use crate::wiring;
use auth::{AuthError, Caller, Verifier};
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use browser::{BrowserSignIn, SignedIn};
use overview::OverviewCache;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thumbnails::{ThumbnailMetrics, Thumbnails};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// Thumbnails made at once (each takes a core while it decodes and resizes).
    pub thumbnail_makers: usize,
    /// Sign-in and the limits that keep the server standing.
    pub security: ServeSettings,
}

impl Default for ServeOptions {
    /// Loopback, an ephemeral port, two thumbnail makers, no sign-in: what tests start from.
    fn default() -> Self {
        ServeOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            thumbnail_makers: 2,
            security: ServeSettings::default(),
        }
    }
}

/// What every handler shares.
pub struct App {
    pub settings: Settings,
    pub store: ImageStore,
    pub index: ImageIndex,
    pub thumbnails: Thumbnails,
    pub overview: OverviewCache,
    pub security: ServeSettings,
    verifier: Option<Verifier>,
    /// People signing in with their browser, when the provider's client is set.
    browser: Option<BrowserSignIn>,
    /// Requests worked on at once.
    requests: Semaphore,
    /// The Content-Security-Policy of every answer.
    csp: HeaderValue,
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
    let security = opts.security.clone();
    if security.oidc.is_none() && !security.open_access && !opts.addr.ip().is_loopback() {
        return Err(format!(
            "refusing to serve every customer's images to anyone on {}: set IMGSTREAM_OIDC_ISSUER and IMGSTREAM_OIDC_AUDIENCE to require sign-in, or listen on 127.0.0.1 (--addr)",
            opts.addr
        ));
    }
    // Reads, thumbnails and presigned URLs use serve's own key when it has one: a URL is then
    // signed by an identity that can read images and nothing more (deploy/policies/s3-serve.json).
    let settings = &security.own_identity(settings);
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
    let (verifier, browser) = match &security.oidc {
        None => (None, None),
        Some(oidc) => {
            let http = auth::provider_http(oidc, settings.connect_timeout)
                .map_err(|e| format!("sign-in: {e}"))?;
            let verifier = Verifier::discover(oidc, http.clone(), metrics.key_refreshes.clone())
                .await
                .map_err(|e| format!("sign-in: {e}"))?;
            let browser = match &oidc.browser {
                None => None,
                Some(b) => Some(
                    BrowserSignIn::discover(oidc, b, http)
                        .await
                        .map_err(|e| format!("browser sign-in: {e}"))?,
                ),
            };
            (Some(verifier), browser)
        }
    };
    // Signing out leads to the provider's logout page: a form's redirect the CSP must allow.
    let form_origins: String = browser
        .iter()
        .flat_map(|b| b.form_origins())
        .map(|o| format!(" {o}"))
        .collect();
    // Images on the image page come from the store by presigned URL: its origin is the one
    // other place the pages may load from.
    let store_origin = store
        .presigned_get("csp-probe", Duration::from_secs(60), None)
        .await
        .ok()
        .map(|u| u.origin().ascii_serialization())
        .filter(|o| o != "null")
        .unwrap_or_default();
    let csp = HeaderValue::from_str(&format!(
        "default-src 'none'; img-src 'self' {store_origin}; style-src 'self' 'unsafe-inline'; \
         form-action 'self'{form_origins}; base-uri 'none'; frame-ancestors 'none'"
    ))
    .map_err(|e| format!("the store's address does not fit a header: {e}"))?;
    let app = Arc::new(App {
        settings: settings.clone(),
        thumbnails: Thumbnails::new(
            store.clone(),
            opts.thumbnail_makers,
            opts.security.thumbnail_memory_bytes,
            metrics.thumbnails.clone(),
        ),
        store,
        index,
        overview: OverviewCache::default(),
        requests: Semaphore::new(security.max_requests),
        verifier,
        browser,
        csp,
        security,
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
    let max_connections = app.security.max_connections;
    let header_timeout = app.security.header_timeout;
    let router = router(app);
    let task = tokio::spawn(accept(listener, router, max_connections, header_timeout));
    tracing::info!(
        "serving the gallery at http://{addr}/ (API /api/images, pipeline /pipeline, metrics /metrics)"
    );
    Ok(Serving {
        addr,
        task: Some(task),
    })
}

/// Accepts connections until aborted, at most `max_connections` open at once. Each is HTTP/1.1
/// with a header-read timeout, which hyper also applies while a keep-alive connection waits for
/// its next request: a slow or idle client holds a connection for that long at most. The
/// connections live in this task's set, so aborting the task closes them all.
async fn accept(
    listener: tokio::net::TcpListener,
    router: Router,
    max_connections: usize,
    header_timeout: Duration,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, mostly: wait a little rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        connections.spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(64 * 1024);
            if let Err(e) = http
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "a connection ended with an error");
            }
        });
    }
}

pub fn router(app: Arc<App>) -> Router {
    // Everything a person or a machine reads: signed in when sign-in is on.
    let people = Router::new()
        .route("/", get(pages::gallery))
        .route("/images/{id}", get(pages::image))
        .route("/images/{id}/download", get(pages::download))
        .route("/thumbnails/{id}", get(pages::thumbnail))
        .route("/pipeline", get(pages::pipeline))
        .route("/api/images", get(api::search))
        .route("/api/images/{id}", get(api::image))
        .route("/api/images/{id}/url", get(api::presigned_url))
        .route("/api/pipeline", get(api::pipeline))
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate));
    // Browser sign-in: open, each route checks what it needs itself.
    let people = if app.browser.is_some() {
        people
            .route("/auth/sign-in", get(browser::sign_in))
            .route("/auth/callback", get(browser::callback))
            .route("/auth/sign-out", post(browser::sign_out))
            .route("/auth/signed-out", get(browser::signed_out))
    } else {
        people
    };
    // Probes and metrics: open, and they say nothing about images or services.
    let probes = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    people
        .merge(probes)
        .route_layer(middleware::from_fn_with_state(app.clone(), track))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// Paths a probe or a scraper reaches by the pod's address, whatever Host it sends.
fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// The host name of a Host header, lowercase, without its port.
fn host_name(value: &str) -> String {
    let value = value.trim().to_ascii_lowercase();
    if value.starts_with('[') {
        value
            .split_once(']')
            .map_or(value.clone(), |(h, _)| format!("{h}]"))
    } else {
        value
            .split_once(':')
            .map_or(value.clone(), |(h, _)| h.to_string())
    }
}

/// Every request: the Host allowlist (a page a user visits cannot reach us by a name it
/// controls, DNS rebinding), the bound on requests at once, the request timeout, and the
/// headers that keep browsers strict.
async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let probe = is_probe(request.uri().path());
    if !probe {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(host_name);
        if !host
            .as_ref()
            .is_some_and(|h| app.security.allowed_hosts.contains(h))
        {
            tracing::warn!(
                host = host
                    .as_deref()
                    .unwrap_or("-")
                    .chars()
                    .take(100)
                    .collect::<String>(),
                "refused a request for a host this server does not answer for (IMGSTREAM_SERVE_ALLOWED_HOSTS)"
            );
            return with_headers(
                &app,
                (
                    StatusCode::MISDIRECTED_REQUEST,
                    "this server does not answer for that host\n",
                )
                    .into_response(),
            );
        }
    }
    // Probes are cheap and outside the bound: a liveness probe refused while the server is busy
    // would have a busy, healthy server restarted.
    let _working = if probe {
        None
    } else {
        match app.requests.try_acquire() {
            Ok(place) => Some(InProgress::new(place, &app.metrics.in_progress)),
            Err(_) => {
                app.metrics.refused_busy.inc();
                return busy(&app);
            }
        }
    };
    let limit = app.security.request_timeout;
    let response = match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the request took longer than {}s and was stopped\n",
                limit.as_secs()
            ),
        )
            .into_response(),
    };
    with_headers(&app, response)
}

/// The answer when every place is taken: at once, and with when to try again.
fn busy(app: &App) -> Response {
    with_headers(
        app,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "busy: too many requests at once; try again\n",
        )
            .into_response(),
    )
}

/// A place in the bound, counted in the gauge while held; a request whose client goes away is
/// dropped mid-work, and gives its place and its count back all the same.
struct InProgress<'a> {
    _place: tokio::sync::SemaphorePermit<'a>,
    gauge: Gauge,
}

impl<'a> InProgress<'a> {
    fn new(place: tokio::sync::SemaphorePermit<'a>, gauge: &Gauge) -> Self {
        gauge.inc();
        InProgress {
            _place: place,
            gauge: gauge.clone(),
        }
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

fn with_headers(app: &App, mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, app.csp.clone());
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The bearer token of a request, if it has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Says who is calling ([`Caller`], a request extension) or answers 401: a bearer token, or a
/// browser's session cookie. A signed-out browser asking for a page is sent to sign in instead.
/// The log gets the reason in one line, never the token or the cookie.
async fn authenticate(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let caller = match &app.verifier {
        None => Ok(Caller::Open),
        Some(verifier) => match bearer(request.headers()) {
            Some(token) => verifier.verify(token).await,
            None => match app
                .browser
                .as_ref()
                .and_then(|b| b.session(request.headers()))
            {
                None => Err(AuthError::Missing),
                Some(Err(e)) => Err(AuthError::Session(e)),
                Some(Ok(session)) => {
                    request.extensions_mut().insert(SignedIn::from(&session));
                    Ok(session.caller())
                }
            },
        },
    };
    match caller {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(reason) => {
            app.metrics.refused_tokens.inc();
            tracing::warn!(%reason, path = request.uri().path(), "refused a request: not signed in");
            let path = request.uri().path();
            if let Some(browser) = &app.browser
                && !path.starts_with("/api/")
                && matches!(
                    *request.method(),
                    axum::http::Method::GET | axum::http::Method::HEAD
                )
            {
                let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
                return browser.to_sign_in(target, matches!(reason, AuthError::Session(_)));
            }
            let error = ServeError::Unauthorized(format!("sign in: {reason}"));
            let mut response = if path.starts_with("/api/") {
                api::ApiError::from(error).into_response()
            } else {
                pages::PageError::from(error).into_response()
            };
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            response
        }
    }
}

/// Why a request failed, judged once for the API and the pages alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeError {
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    /// A stored image no thumbnail can be made of (the reason is about the image, not us).
    Unprocessable(String),
    NotFound(String),
    Unavailable(String),
    Internal(String),
}

impl ServeError {
    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServeError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ServeError::Forbidden(_) => StatusCode::FORBIDDEN,
            ServeError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ServeError::NotFound(_) => StatusCode::NOT_FOUND,
            ServeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the caller is told. A service's failure names addresses and buckets: that goes to
    /// the log ([`ServeError::log`]), the caller gets a line without them.
    pub fn message(&self) -> &str {
        match self {
            ServeError::BadRequest(m)
            | ServeError::Unauthorized(m)
            | ServeError::Forbidden(m)
            | ServeError::Unprocessable(m)
            | ServeError::NotFound(m) => m,
            ServeError::Unavailable(_) => {
                "a service this server needs is unavailable; the server's log says which"
            }
            ServeError::Internal(_) => "an internal error; the server's log has the details",
        }
    }

    /// Logs what the caller is not told.
    pub fn log(&self) {
        match self {
            ServeError::Unavailable(m) => tracing::warn!(error = %m, "answered 503"),
            ServeError::Internal(m) => tracing::error!(error = %m, "answered 500"),
            _ => {}
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
                ServeError::Unprocessable(e.to_string())
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
    /// One indexed image of our bucket that `caller` may see, or 404: another customer's image
    /// answers exactly as an id nobody has.
    pub async fn stored_image(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<crate::domain::StoredImage, ServeError> {
        let id = parse_image_id(id)?;
        self.index
            .stored_image(self.store.bucket(), id, caller.scope())
            .await?
            .ok_or_else(|| ServeError::NotFound(format!("no image {id} in the index")))
    }

    /// The pipeline's figures and dead letters are for admins.
    pub fn require_admin(&self, caller: &Caller) -> Result<(), ServeError> {
        if caller.is_admin() {
            return Ok(());
        }
        let role = self
            .security
            .oidc
            .as_ref()
            .map_or("imgstream-admin", |o| o.admin_role.as_str());
        Err(ServeError::Forbidden(format!(
            "the pipeline is shown to admins only (role {role})"
        )))
    }

    /// A presigned GET URL of an image `caller` has been allowed to see, its life capped by
    /// IMGSTREAM_SERVE_MAX_URL_TTL_SECS; each one is an audit event and a metric.
    pub async fn presign(
        &self,
        caller: &Caller,
        image: &crate::domain::StoredImage,
        ttl: Duration,
        download_name: Option<&str>,
    ) -> Result<(url::Url, Duration), ServeError> {
        let ttl = ttl.min(self.security.max_url_ttl);
        let url = self
            .store
            .presigned_get(&image.entry.object_key, ttl, download_name)
            .await?;
        self.metrics.presigned_urls.inc();
        tracing::info!(
            target: "imgstream::audit",
            event = "presigned-url",
            subject = caller.subject(),
            customer = %image.entry.customer_id,
            image_id = %image.entry.image_id,
            ttl_secs = ttl.as_secs(),
            "issued a presigned URL"
        );
        Ok((url, ttl))
    }

    /// One page of a search and the cursor of the next page, if there is one.
    pub async fn search(
        &self,
        caller: &Caller,
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
        let mut images = self
            .index
            .search(self.store.bucket(), &probe, caller.scope())
            .await?;
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
    presigned_urls: Counter,
    refused_tokens: Counter,
    key_refreshes: Counter,
    /// Requests holding a place in the bound (IMGSTREAM_SERVE_MAX_REQUESTS).
    in_progress: Gauge,
    refused_busy: Counter,
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
        let presigned_urls = Counter::default();
        registry.register(
            "presigned_urls_issued",
            "Presigned image URLs issued (each also an audit line in the log)",
            presigned_urls.clone(),
        );
        let refused_tokens = Counter::default();
        registry.register(
            "requests_refused_unauthenticated",
            "Requests answered 401: no bearer token, or one that did not verify",
            refused_tokens.clone(),
        );
        let key_refreshes = Counter::default();
        registry.register(
            "oidc_key_fetches",
            "Fetches of the OpenID Connect issuer's signing keys (JWKS)",
            key_refreshes.clone(),
        );
        let in_progress = Gauge::default();
        registry.register(
            "http_requests_in_progress",
            "HTTP requests being worked on, at most IMGSTREAM_SERVE_MAX_REQUESTS (probes not counted)",
            in_progress.clone(),
        );
        let refused_busy = Counter::default();
        registry.register(
            "http_requests_refused_busy",
            "Requests answered 503 at once because IMGSTREAM_SERVE_MAX_REQUESTS were being worked on",
            refused_busy.clone(),
        );
        ServeMetrics {
            registry,
            requests,
            seconds,
            thumbnails,
            presigned_urls,
            refused_tokens,
            key_refreshes,
            in_progress,
            refused_busy,
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
    // Anyone may ask: the answer names the kind of service, the log has the details.
    let mut down = Vec::new();
    if let Some(problem) = index {
        tracing::warn!(%problem, "not ready: the index");
        down.push("the index");
    }
    if let Some(problem) = store {
        tracing::warn!(%problem, "not ready: the object store");
        down.push("the object store");
    }
    if down.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {} unavailable\n", down.join(" and ")),
        )
    }
}

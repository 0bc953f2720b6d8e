//! `imgstream serve`'s JSON API, thumbnails, presigned URLs and metrics, against the real stack.
//! The browser drives the HTML pages in `tests/browser.rs`.

mod common;

use chrono::{DateTime, Duration as Age, Utc};
use common::{TestEnv, raw_producer, send_raw};
use imgstream::domain::{ImageFormat, IndexEntry, object_key, sha256_hex, thumbnail_key};
use imgstream::serve::{ServeOptions, Serving};
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

async fn serve(env: &TestEnv) -> (Serving, String) {
    let opts = ServeOptions {
        addr: "127.0.0.1:0".parse().unwrap(),
        thumbnail_makers: 2,
        ..ServeOptions::default()
    };
    let serving = imgstream::serve::start(&env.settings, opts)
        .await
        .expect("serve starts");
    let base = format!("http://{}", serving.addr);
    (serving, base)
}

async fn get_json(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.expect("request");
    let status = response.status().as_u16();
    let body = response.json().await.expect("a JSON body");
    (status, body)
}

/// Index rows without objects: enough for searches, which read only the index.
fn entry(
    env: &TestEnv,
    customer: &str,
    format: ImageFormat,
    created_at: DateTime<Utc>,
) -> IndexEntry {
    let image_id = Uuid::new_v4();
    IndexEntry {
        image_id,
        object_key: object_key(&image_id),
        bucket: env.settings.store.bucket.clone(),
        sha256: sha256_hex(image_id.as_bytes()),
        size_bytes: 100,
        width: 40,
        height: 30,
        content_type: format.content_type().into(),
        customer_id: customer.into(),
        source_id: format!("cam-{}", created_at.timestamp() % 3),
        created_at,
        kafka_topic: env.name.clone(),
        kafka_partition: 0,
        kafka_offset: 0,
    }
}

/// Follows `next` links from `first` to the end, calling `between` after each page.
async fn walk(base: &str, first: &str, mut between: impl AsyncFnMut(usize)) -> Vec<Value> {
    let mut seen = Vec::new();
    let mut url = format!("{base}{first}");
    for page in 0.. {
        let (status, body) = get_json(&url).await;
        assert_eq!(status, 200, "{url}: {body}");
        seen.extend(body["images"].as_array().unwrap().iter().cloned());
        match body["next"].as_str() {
            Some(next) => url = format!("{base}{next}"),
            None => {
                assert!(body["next_cursor"].is_null());
                break;
            }
        }
        between(page).await;
        assert!(page < 1000, "pagination does not end");
    }
    seen
}

fn ids(images: &[Value]) -> Vec<String> {
    images
        .iter()
        .map(|i| i["image_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn paging_returns_every_image_once_newest_first_while_new_ones_arrive() {
    let env = TestEnv::new("serve-pages").await;
    let index = env.index().await;
    let start = Utc::now() - Age::hours(2);
    // 60 images a minute apart, plus 6 that share a creation time with a neighbour: page
    // boundaries must fall between equal times without losing or repeating an image.
    let mut before: Vec<IndexEntry> = (0..60)
        .map(|i| {
            let format = ImageFormat::ALL[i % 3];
            let customer = if i % 2 == 0 { "acme" } else { "globex" };
            entry(&env, customer, format, start + Age::minutes(i as i64))
        })
        .collect();
    for i in 0..6 {
        let twin = before[i * 10].created_at;
        before.push(entry(&env, "acme", ImageFormat::Png, twin));
    }
    index.insert_batch(&before).await.unwrap();
    let (_server, base) = serve(&env).await;

    // While the reader pages, images keep arriving: newer than everything (the reader has passed
    // them) and older than everything (still ahead of the reader).
    let mut arrived = Vec::new();
    let seen = walk(&base, "/api/images?limit=7", async |page| {
        let newest = entry(&env, "acme", ImageFormat::Jpeg, Utc::now());
        let older = entry(
            &env,
            "globex",
            ImageFormat::Webp,
            start - Age::hours(1) - Age::seconds(page as i64),
        );
        index
            .insert_batch(&[newest.clone(), older.clone()])
            .await
            .unwrap();
        arrived.push((newest, older));
    })
    .await;

    let seen_ids = ids(&seen);
    let unique: HashSet<&String> = seen_ids.iter().collect();
    assert_eq!(
        unique.len(),
        seen_ids.len(),
        "an image was repeated across pages"
    );
    for e in &before {
        assert!(
            unique.contains(&e.image_id.to_string()),
            "image {} created {} was skipped",
            e.image_id,
            e.created_at
        );
    }
    // Images that arrive ahead of the reader's position are found; those behind it wait for the
    // next walk from the first page.
    for (newest, older) in &arrived {
        assert!(unique.contains(&older.image_id.to_string()));
        assert!(!unique.contains(&newest.image_id.to_string()));
    }
    let keys: Vec<(String, String)> = seen
        .iter()
        .map(|i| {
            (
                i["created_at"].as_str().unwrap().to_string(),
                i["image_id"].as_str().unwrap().to_string(),
            )
        })
        .map(|(t, id)| (DateTime::parse_from_rfc3339(&t).unwrap().to_rfc3339(), id))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_by(|a, b| {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap();
        (at(&b.0), &b.1).cmp(&(at(&a.0), &a.1))
    });
    assert_eq!(keys, sorted, "not newest first");
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_narrow_a_search_to_exactly_the_matching_images() {
    let env = TestEnv::new("serve-filters").await;
    let index = env.index().await;
    let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let all: Vec<IndexEntry> = (0..45)
        .map(|i| {
            let customer = ["acme", "globex", "initech"][i % 3];
            entry(
                &env,
                customer,
                ImageFormat::ALL[(i / 3) % 3],
                start + Age::hours(i as i64),
            )
        })
        .collect();
    index.insert_batch(&all).await.unwrap();
    let (_server, base) = serve(&env).await;

    let from = start + Age::hours(10);
    let to = start + Age::hours(30);
    type Expected = Box<dyn Fn(&IndexEntry) -> bool>;
    let cases: Vec<(String, Expected)> = vec![
        (
            "customer=globex".into(),
            Box::new(|e| e.customer_id == "globex"),
        ),
        (
            "format=webp".into(),
            Box::new(|e| e.content_type == "image/webp"),
        ),
        (
            "format=image%2Fpng&customer=acme".into(),
            Box::new(|e| e.content_type == "image/png" && e.customer_id == "acme"),
        ),
        ("source=cam-1".into(), Box::new(|e| e.source_id == "cam-1")),
        (
            format!(
                "from={}&to={}",
                from.format("%Y-%m-%dT%H:%M"),
                to.format("%Y-%m-%dT%H:%M")
            ),
            Box::new(move |e| e.created_at >= from && e.created_at < to),
        ),
        ("customer=nobody".into(), Box::new(|_| false)),
    ];
    for (filter, matches) in cases {
        let seen = walk(
            &base,
            &format!("/api/images?limit=4&{filter}"),
            async |_| {},
        )
        .await;
        let mut got = ids(&seen);
        let mut expected: Vec<String> = all
            .iter()
            .filter(|e| matches(e))
            .map(|e| e.image_id.to_string())
            .collect();
        got.sort();
        expected.sort();
        assert_eq!(got, expected, "filter {filter}");
    }

    // One image by id, with its lineage.
    let one = &all[7];
    let (status, body) = get_json(&format!("{base}/api/images/{}", one.image_id)).await;
    assert_eq!(status, 200);
    assert_eq!(body["customer_id"], one.customer_id);
    assert_eq!(body["sha256"], one.sha256);
    assert_eq!(body["kafka"]["topic"], env.name);
    assert_eq!(
        body["links"]["thumbnail"],
        format!("/thumbnails/{}", one.image_id)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_a_clear_400_and_unknown_images_a_404() {
    let env = TestEnv::new("serve-errors").await;
    let (_server, base) = serve(&env).await;
    let cases = [
        (
            "/api/images?colour=red",
            400,
            "unknown parameter \"colour\"",
        ),
        ("/api/images?format=gif", 400, "not one of png, jpeg, webp"),
        ("/api/images?from=yesterday", 400, "is not a time"),
        (
            "/api/images?from=2026-02-01&to=2026-01-01",
            400,
            "must be before",
        ),
        ("/api/images?limit=5000", 400, "from 1 to 200"),
        (
            "/api/images?cursor=forged",
            400,
            "start again from the first page",
        ),
        ("/api/images/not-a-uuid", 400, "is not an image id"),
        (
            "/api/images/3f2a0c1e-8b7d-4c6e-9a51-0d2e4f6a8b9c",
            404,
            "no image 3f2a0c1e",
        ),
        (
            "/api/images/3f2a0c1e-8b7d-4c6e-9a51-0d2e4f6a8b9c/url",
            404,
            "no image",
        ),
        (
            "/api/images/3f2a0c1e-8b7d-4c6e-9a51-0d2e4f6a8b9c/url?ttl=0",
            400,
            "ttl=\"0\"",
        ),
    ];
    for (path, status, message) in cases {
        let (got, body) = get_json(&format!("{base}{path}")).await;
        assert_eq!(got, status, "{path}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(message), "{path}: {error}");
    }
    // The pages answer bad input the same way, in HTML.
    let page = reqwest::get(format!("{base}/?format=gif")).await.unwrap();
    assert_eq!(page.status().as_u16(), 400);
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("not one of png, jpeg, webp")
    );
    let page = reqwest::get(format!(
        "{base}/images/3f2a0c1e-8b7d-4c6e-9a51-0d2e4f6a8b9c"
    ))
    .await
    .unwrap();
    assert_eq!(page.status().as_u16(), 404);
}

fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_images_are_fetched_by_presigned_url_and_thumbnailed_once() {
    let env = TestEnv::new("serve-bytes").await;
    env.produce(6, &["--width", "300-900", "--height", "200-700"]);
    let out = env.run(&["consume", "--until-idle", "3"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let (_server, base) = serve(&env).await;
    let (_, page) = get_json(&format!("{base}/api/images")).await;
    let images = page["images"].as_array().unwrap().clone();
    assert_eq!(images.len(), 6);
    let image = &images[0];
    let id = image["image_id"].as_str().unwrap();
    let sha256 = image["sha256"].as_str().unwrap();

    // A presigned URL fetches the exact stored bytes straight from MinIO...
    let (status, signed) = get_json(&format!("{base}/api/images/{id}/url?ttl=2")).await;
    assert_eq!(status, 200, "{signed}");
    let url = signed["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&env.settings.store.endpoint), "{url}");
    let fetched = reqwest::get(&url).await.unwrap();
    assert_eq!(fetched.status().as_u16(), 200);
    assert_eq!(sha256_hex(&fetched.bytes().await.unwrap()), sha256);
    // ... until it expires.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let expired = reqwest::get(&url).await.unwrap();
    assert_eq!(expired.status().as_u16(), 403, "an expired URL still works");

    // The page's download link redirects to a URL that saves the file under the image's id.
    let download = reqwest::get(format!("{base}/images/{id}/download"))
        .await
        .unwrap();
    assert_eq!(download.status().as_u16(), 200);
    let disposition = download.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        disposition.starts_with("attachment") && disposition.contains(id),
        "{disposition}"
    );
    assert_eq!(sha256_hex(&download.bytes().await.unwrap()), sha256);

    // A thumbnail is made on the first request, kept in the bucket, and served from there after.
    let first = reqwest::get(format!("{base}/thumbnails/{id}"))
        .await
        .unwrap();
    assert_eq!(first.status().as_u16(), 200);
    assert_eq!(first.headers()["content-type"], "image/jpeg");
    let first = first.bytes().await.unwrap();
    let thumb = image::load_from_memory(&first).unwrap();
    let (w, h) = (
        image["width"].as_f64().unwrap(),
        image["height"].as_f64().unwrap(),
    );
    assert_eq!(thumb.width().max(thumb.height()), 256.min(w.max(h) as u32));
    let aspect = f64::from(thumb.width()) / f64::from(thumb.height());
    assert!(
        (aspect - w / h).abs() < 0.05 * (w / h),
        "aspect {aspect} vs {}",
        w / h
    );
    let kept = env
        .store()
        .get(&thumbnail_key(&id.parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(kept, first);
    let second = reqwest::get(format!("{base}/thumbnails/{id}"))
        .await
        .unwrap();
    assert_eq!(second.bytes().await.unwrap(), first);

    // Thumbnails live beside the images, not among them: verify still finds a clean bucket.
    let verify = env.run(&["verify"]);
    assert!(verify.status.success(), "{}", common::stdout(&verify));

    let metrics = metrics_of(&base).await;
    assert_eq!(
        sample(&metrics, "imgstream_thumbnails_made_total"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "imgstream_thumbnails_served_from_store_total"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "imgstream_http_requests_total{route=\"/thumbnails/{id}\",status=\"200\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    // Where browsers reach the store under another name (a container network, a cluster), the
    // URLs are signed for that name, and work there.
    let mut public = env.settings.clone();
    let port = env
        .settings
        .store
        .endpoint
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    public.store.public_endpoint = Some(format!("http://localhost:{port}"));
    let opts = ServeOptions {
        addr: "127.0.0.1:0".parse().unwrap(),
        thumbnail_makers: 1,
        ..ServeOptions::default()
    };
    let other = imgstream::serve::start(&public, opts).await.unwrap();
    let (_, signed) = get_json(&format!("http://{}/api/images/{id}/url", other.addr)).await;
    let url = signed["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("http://localhost:{port}/")),
        "{url}"
    );
    let fetched = reqwest::get(url).await.unwrap();
    assert_eq!(fetched.status().as_u16(), 200);
    assert_eq!(sha256_hex(&fetched.bytes().await.unwrap()), sha256);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_overview_shows_lag_counts_and_the_latest_dead_letter() {
    let env = TestEnv::new("serve-pipeline").await;
    env.produce(5, &[]);
    send_raw(&raw_producer(&env), &env.name, "poison", Some(b"xx")).await;
    let out = env.run(&["consume", "--until-idle", "3"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    // Records nobody consumed yet: the lag the page must show.
    env.produce(4, &[]);
    let (_server, base) = serve(&env).await;
    let (status, overview) = get_json(&format!("{base}/api/pipeline")).await;
    assert_eq!(status, 200, "{overview}");
    assert_eq!(overview["total_lag"], 4);
    assert_eq!(overview["index_rows"], 5);
    // The page never lists the bucket (minutes of work at millions of images).
    assert!(overview.get("bucket_objects").is_none(), "{overview}");
    assert_eq!(overview["dlq_depth"], 1);
    let lags: i64 = overview["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["lag"].as_i64().unwrap())
        .sum();
    assert_eq!(lags, 4);
    let letter = &overview["recent_dead_letters"][0];
    assert_eq!(letter["code"], "not-wire-format");
    assert_eq!(letter["key"], "poison");
    assert!(
        letter["original"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/", env.name))
    );
    let stored: i64 = overview["stored_per_minute"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["rows"].as_i64().unwrap())
        .sum();
    assert_eq!(stored, 5);
}

/// `serve` in this process with `vars`' limits, reaching the store through `proxy` (which a test
/// slows down).
async fn serve_through(
    env: &TestEnv,
    proxy: &common::toxiproxy::Proxy<'_>,
    vars: &[(&str, &str)],
) -> (Serving, String) {
    let mut settings = env.settings.clone();
    settings.store.endpoint = settings
        .store
        .endpoint
        .replace(&store_upstream(env), &proxy.listen);
    let vars: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let opts = ServeOptions {
        addr: "127.0.0.1:0".parse().unwrap(),
        thumbnail_makers: 2,
        security: imgstream::config::ServeSettings::from_vars(&vars).unwrap(),
    };
    let serving = imgstream::serve::start(&settings, opts)
        .await
        .expect("serve starts");
    let base = format!("http://{}", serving.addr);
    (serving, base)
}

/// The store's address, for a proxy in front of it.
fn store_upstream(env: &TestEnv) -> String {
    let endpoint = url::Url::parse(&env.settings.store.endpoint).unwrap();
    format!(
        "{}:{}",
        endpoint.host_str().unwrap(),
        endpoint.port_or_known_default().unwrap()
    )
}

/// The server's metrics, as Prometheus reads them.
async fn metrics_of(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The requests the server is working on, by its gauge.
async fn in_progress(base: &str) -> Option<f64> {
    sample(
        &metrics_of(base).await,
        "imgstream_http_requests_in_progress",
    )
}

/// Each request to the store this slow (each way): a thumbnail's first request makes three.
const STORE_LATENCY_MS: u64 = 1500;

#[tokio::test(flavor = "multi_thread")]
async fn a_request_beyond_the_bound_is_answered_503_at_once_while_the_others_finish() {
    let env = TestEnv::new("serve-busy").await;
    let images = [
        common::stored_image(&env, "a", 1).await,
        common::stored_image(&env, "a", 2).await,
    ];
    env.index().await.insert_batch(&images).await.unwrap();
    let toxiproxy = common::toxiproxy::Toxiproxy::start().await;
    let proxy = toxiproxy
        .proxy("serve-busy-store", "127.0.0.1:0", &store_upstream(&env))
        .await;
    let (_server, base) =
        serve_through(&env, &proxy, &[("IMGSTREAM_SERVE_MAX_REQUESTS", "2")]).await;
    assert_eq!(get_json(&format!("{base}/api/images")).await.0, 200);

    // Two thumbnails made through a slow store hold both places.
    proxy
        .add("latency", serde_json::json!({"latency": STORE_LATENCY_MS}))
        .await;
    let started = std::time::Instant::now();
    let slow: Vec<_> = images
        .iter()
        .map(|stored| {
            let url = format!("{base}/thumbnails/{}", stored.image_id);
            tokio::spawn(async move {
                let response = reqwest::get(url).await.unwrap();
                let status = response.status().as_u16();
                (status, response.bytes().await.unwrap(), started.elapsed())
            })
        })
        .collect();
    // Both hold their places before a third asks (the server's gauge says so; probes stand
    // outside the bound, or the gauge could not be read now).
    while in_progress(&base).await != Some(2.0) {
        assert!(
            started.elapsed() < Duration::from_millis(STORE_LATENCY_MS),
            "the two slow requests did not both start within {STORE_LATENCY_MS} ms"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A third request meanwhile is answered at once, 503 with Retry-After, while the probes
    // still answer.
    let asked = std::time::Instant::now();
    let response = reqwest::get(format!("{base}/api/images")).await.unwrap();
    let took = asked.elapsed();
    assert_eq!(response.status().as_u16(), 503);
    let retry_after = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .to_string();
    let body = response.text().await.unwrap();
    assert!(
        took < Duration::from_millis(500),
        "the refusal took {took:?}"
    );
    let healthz = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(
        healthz.status().as_u16(),
        200,
        "a busy server is not unhealthy"
    );
    assert_eq!(retry_after, "1");
    assert!(body.contains("too many requests at once"), "{body}");
    assert!(
        slow.iter().all(|s| !s.is_finished()),
        "the slow requests had ended before the refusal: it proves nothing"
    );
    // The two finish as if nothing happened.
    for s in slow {
        let (status, body, took) = s.await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert!(image::load_from_memory(&body).is_ok(), "a thumbnail");
        assert!(
            took >= Duration::from_millis(2 * STORE_LATENCY_MS),
            "the store was not slow ({took:?})"
        );
    }
    assert_eq!(get_json(&format!("{base}/api/images")).await.0, 200);
    assert_eq!(in_progress(&base).await, Some(0.0));
    let metrics = metrics_of(&base).await;
    assert_eq!(
        sample(&metrics, "imgstream_http_requests_refused_busy_total"),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_longer_than_the_request_timeout_is_cut_and_the_server_goes_on() {
    let env = TestEnv::new("serve-timeout").await;
    let stored = common::stored_image(&env, "a", 1).await;
    env.index()
        .await
        .insert_batch(std::slice::from_ref(&stored))
        .await
        .unwrap();
    let toxiproxy = common::toxiproxy::Toxiproxy::start().await;
    let proxy = toxiproxy
        .proxy("serve-timeout-store", "127.0.0.1:0", &store_upstream(&env))
        .await;
    let (_server, base) = serve_through(
        &env,
        &proxy,
        &[("IMGSTREAM_SERVE_REQUEST_TIMEOUT_SECS", "1")],
    )
    .await;
    proxy
        .add("latency", serde_json::json!({"latency": STORE_LATENCY_MS}))
        .await;
    let thumbnail = format!("{base}/thumbnails/{}", stored.image_id);
    let started = std::time::Instant::now();
    let response = reqwest::get(&thumbnail).await.unwrap();
    let took = started.elapsed();
    assert_eq!(response.status().as_u16(), 503);
    let body = response.text().await.unwrap();
    assert!(body.contains("took longer than 1s"), "{body}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(2 * STORE_LATENCY_MS),
        "cut after {took:?}, not at the 1 s timeout"
    );
    // Cut, not broken: with the store quick again the same thumbnail is made.
    proxy.remove("latency").await;
    let response = reqwest::get(&thumbnail).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(image::load_from_memory(&response.bytes().await.unwrap()).is_ok());
}

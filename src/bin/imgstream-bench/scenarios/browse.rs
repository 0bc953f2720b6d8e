//! `imgstream-bench --browse`: `imgstream serve` on an index of a million rows.
//!
//! The rows are generated inside PostgreSQL (no objects behind them); 48 real images are stored
//! and indexed as the newest, so the first gallery page has thumbnails to make. Measured against
//! the real `imgstream serve` process:
//! - API and gallery latency (p50/p99) on the first page and on deep pages (cursors taken at
//!   random depths), unfiltered and within one customer, each against its floor: the same keyset
//!   query sent straight to PostgreSQL;
//! - a cold 48-thumbnail gallery (the page, then its thumbnails over six connections, as a browser
//!   fetches them), against its floor: reading the 48 originals from MinIO the same way; then the
//!   same page warm;
//! - sign-in's cost: the first gallery page and `/api/images` of customer `a` (one customer in
//!   fifty, and the 48 newest images) from a second `serve` with sign-in on, asked with a bearer
//!   token of Keycloak's client-credentials client (whose token names customer `a`), side by side
//!   with the first `serve` (sign-in off) asked for `customer=a`: the same rows, one request of
//!   each in turn;
//! - the pipeline page and `/api/pipeline` on the million rows: each request after the overview
//!   went stale (`FRESH_FOR`), so every one takes it anew (lag from Kafka, counts and minutes from
//!   the index, the latest dead letters), and the same pages served from the overview just taken.

use crate::control::{binary, case_settings, cleanup, drop_database, fresh_database, setup};
use crate::report::percentile;
use imgstream::domain::{ImageFormat, IndexEntry, object_key, sha256_hex};
use imgstream::generate::{ImageSpec, render};
use imgstream::search::Cursor;
use imgstream::wiring;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::Row;
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CUSTOMERS: i64 = 50;
/// The customer Keycloak's client-credentials client (`imgstream-machine`) may see
/// (stack/keycloak/imgstream-realm.json); one of the fifty.
const SIGNED_IN_CUSTOMER: &str = "a";
const PAGE: usize = 48;
const SAMPLES: usize = 200;
/// Sign-in on against off compares sub-millisecond answers: a p99 of 200 samples is their
/// second-slowest, so these take more (about 4 s in all).
const SIGN_IN_SAMPLES: usize = 1000;

fn stats(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    json!({ "p50_ms": percentile(&ms, 0.5), "p99_ms": percentile(&ms, 0.99), "samples": ms.len() })
}

/// Milliseconds per call of `f`, `n` times in a row.
async fn timed<F, Fut>(n: usize, mut f: F) -> Vec<f64>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        f(i).await;
        out.push(started.elapsed().as_secs_f64() * 1e3);
    }
    out
}

async fn get_ok(http: &reqwest::Client, url: &str) -> bytes::Bytes {
    let response = http.get(url).send().await.expect("request");
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    response.bytes().await.expect("body")
}

pub async fn bench_browse(base: &HashMap<String, String>, run: &str, rows: i64) -> Value {
    let name = format!("bench-browse-{run}");
    let (settings, vars) = case_settings(base, &name, "imgstream_bench_browse", 1);
    fresh_database(&settings).await;
    setup(&settings).await;
    let index = wiring::index(&settings).await.unwrap();
    let store = wiring::store(&settings).unwrap();
    let pool = sqlx::PgPool::connect(settings.database_url.expose())
        .await
        .unwrap();

    // A million rows, half a second apart, 50 customers, 500 sources, three formats.
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO images (image_id, object_key, bucket, sha256, size_bytes, width, height,
                             content_type, customer_id, source_id, created_at, stored_at,
                             kafka_topic, kafka_partition, kafka_offset)
         SELECT id, 'images/' || left(id::text, 2) || '/' || id::text, $1,
                encode(sha256(convert_to(id::text, 'UTF8')), 'hex'), 50000, 640, 480,
                (ARRAY['image/png', 'image/jpeg', 'image/webp'])[1 + g % 3],
                CASE WHEN g % $3 = 0 THEN $5 ELSE 'customer-' || (g % $3) END, 'cam-' || (g % 500),
                now() - interval '1 hour' - make_interval(secs => g * 0.5), now(),
                $4, (g % 12)::int, g / 12
         FROM (SELECT g, gen_random_uuid() AS id FROM generate_series(1, $2::bigint) g) AS s",
    )
    .bind(store.bucket())
    .bind(rows)
    .bind(CUSTOMERS)
    .bind(&name)
    .bind(SIGNED_IN_CUSTOMER)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE images").execute(&pool).await.unwrap();
    let generate_secs = started.elapsed().as_secs_f64();

    // The newest page: real 1024x768 images (JPEG, PNG, WebP), stored and indexed.
    let mut newest = Vec::new();
    for i in 0..PAGE {
        let format = ImageFormat::ALL[i % 3];
        let spec = ImageSpec {
            width: 1024,
            height: 768,
            format,
        };
        let data = bytes::Bytes::from(render(&spec, i as u64).unwrap());
        let image_id = uuid::Uuid::new_v4();
        let sha256 = sha256_hex(&data);
        store
            .put_image(
                &object_key(&image_id),
                data.clone(),
                format.content_type(),
                &sha256,
            )
            .await
            .unwrap();
        newest.push(IndexEntry {
            image_id,
            object_key: object_key(&image_id),
            bucket: store.bucket().to_string(),
            sha256,
            size_bytes: data.len() as i64,
            width: 1024,
            height: 768,
            content_type: format.content_type().into(),
            customer_id: SIGNED_IN_CUSTOMER.into(),
            source_id: "cam-0".into(),
            created_at: chrono::Utc::now() - chrono::Duration::seconds(i as i64),
            kafka_topic: name.clone(),
            kafka_partition: 0,
            kafka_offset: rows + i as i64,
        });
    }
    index.insert_batch(&newest).await.unwrap();

    let (mut server, root) = start_serve(&vars, &[]).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(8)
        .build()
        .unwrap();

    // Cursors at random depths, all customers and within customer-7 (20,000 rows each).
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut deep_cursors = Vec::new();
    let mut customer_cursors = Vec::new();
    for _ in 0..SAMPLES {
        let depth = rng.gen_range(rows / 10..rows - PAGE as i64);
        let row = sqlx::query(
            "SELECT created_at, image_id FROM images ORDER BY created_at DESC, image_id DESC
             OFFSET $1 LIMIT 1",
        )
        .bind(depth)
        .fetch_one(&pool)
        .await
        .unwrap();
        deep_cursors.push(Cursor {
            created_at: row.get(0),
            image_id: row.get(1),
        });
        let per_customer = rows / CUSTOMERS;
        let depth = rng.gen_range(per_customer / 10..per_customer - PAGE as i64);
        let row = sqlx::query(
            "SELECT created_at, image_id FROM images WHERE customer_id = 'customer-7'
             ORDER BY created_at DESC, image_id DESC OFFSET $1 LIMIT 1",
        )
        .bind(depth)
        .fetch_one(&pool)
        .await
        .unwrap();
        customer_cursors.push(Cursor {
            created_at: row.get(0),
            image_id: row.get(1),
        });
    }

    // The cold gallery first: thumbnails are made on these requests.
    let cold = gallery_with_thumbnails(&http, &root).await;
    let warm = gallery_with_thumbnails(&http, &root).await;
    // Floor: the 48 originals read from MinIO over six connections.
    let floor_started = Instant::now();
    let originals: Vec<String> = newest.iter().map(|e| e.object_key.clone()).collect();
    let gets = futures::stream::iter(originals.iter().map(|key| store.get(key)));
    use futures::StreamExt;
    let fetched: Vec<_> = gets.buffer_unordered(6).collect().await;
    assert!(fetched.iter().all(Result::is_ok));
    let originals_secs = floor_started.elapsed().as_secs_f64();

    let api = |query: String| {
        let (http, url) = (
            http.clone(),
            format!("{root}/api/images?limit={PAGE}{query}"),
        );
        async move {
            get_ok(&http, &url).await;
        }
    };
    let page = |query: String| {
        let (http, url) = (http.clone(), format!("{root}/?limit={PAGE}{query}"));
        async move {
            get_ok(&http, &url).await;
        }
    };
    let sql = |customer: Option<&'static str>, cursor: Option<Cursor>| {
        let (index, bucket) = (index.clone(), store.bucket().to_string());
        async move {
            let query = imgstream::search::ImageQuery {
                customer_id: customer.map(str::to_string),
                after: cursor,
                limit: PAGE as u32 + 1,
                ..Default::default()
            };
            index.search(&bucket, &query, None).await.unwrap();
        }
    };
    let cursor_param = |c: &Cursor| format!("&cursor={}", c.encode());
    let api_first = timed(SAMPLES, |_| api(String::new())).await;
    let api_deep = timed(SAMPLES, |i| api(cursor_param(&deep_cursors[i]))).await;
    let api_customer_deep = timed(SAMPLES, |i| {
        api(format!(
            "&customer=customer-7{}",
            cursor_param(&customer_cursors[i])
        ))
    })
    .await;
    let page_first = timed(SAMPLES, |_| page(String::new())).await;
    let page_deep = timed(SAMPLES, |i| page(cursor_param(&deep_cursors[i]))).await;
    let sql_first = timed(SAMPLES, |_| sql(None, None)).await;
    let sql_deep = timed(SAMPLES, |i| sql(None, Some(deep_cursors[i]))).await;
    let sql_customer_deep = timed(SAMPLES, |i| {
        sql(Some("customer-7"), Some(customer_cursors[i]))
    })
    .await;

    let pipeline = pipeline_page(&http, &root).await;
    let sign_in = sign_in_cost(&vars, &http, &root).await;

    let _ = server.kill();
    let _ = server.wait();
    pool.close().await;
    index.close().await;
    cleanup(&settings).await;
    // A million rows take half a gigabyte: unlike the other cases' databases, this one goes.
    drop_database(&settings).await;

    let p99 = |v: &Vec<f64>| {
        let mut s = v.clone();
        s.sort_by(f64::total_cmp);
        percentile(&s, 0.99)
    };
    json!({
        "rows": rows + PAGE as i64,
        "generate_rows_secs": generate_secs,
        "api_first_page": stats(api_first.clone()),
        "api_deep_page": stats(api_deep.clone()),
        "api_customer_deep_page": stats(api_customer_deep.clone()),
        "gallery_first_page": stats(page_first),
        "gallery_deep_page": stats(page_deep),
        "sql_first_page": stats(sql_first.clone()),
        "sql_deep_page": stats(sql_deep.clone()),
        "sql_customer_deep_page": stats(sql_customer_deep.clone()),
        "cold_gallery_48_thumbnails_secs": cold,
        "warm_gallery_48_thumbnails_secs": warm,
        "thumbnails_made_per_sec": PAGE as f64 / cold,
        "read_48_originals_secs": originals_secs,
        "pipeline": pipeline,
        "sign_in": sign_in,
        "ratios": {
            "api_deep_p99_over_sql_deep_p99": p99(&api_deep) / p99(&sql_deep),
            "api_customer_deep_p99_over_sql_p99": p99(&api_customer_deep) / p99(&sql_customer_deep),
            "cold_gallery_over_reading_originals": cold / originals_secs,
        },
        "targets": {
            "api_deep_p99_under_50ms": p99(&api_deep) < 50.0 && p99(&api_customer_deep) < 50.0,
            "cold_gallery_under_1s": cold < 1.0,
        }
    })
}

/// Samples of the pipeline page taken anew: each waits out the overview's freshness first.
const PIPELINE_FRESH_SAMPLES: usize = 25;

/// The pipeline page and its API on the million-row index, taken anew and served fresh.
async fn pipeline_page(http: &reqwest::Client, root: &str) -> Value {
    let stale_after = imgstream::serve::overview::FRESH_FOR + Duration::from_millis(100);
    let mut taken = Vec::new();
    let mut api_taken = Vec::new();
    let mut served = Vec::new();
    for i in 0..PIPELINE_FRESH_SAMPLES {
        tokio::time::sleep(stale_after).await;
        let (into, path) = if i % 2 == 0 {
            (&mut taken, "/pipeline")
        } else {
            (&mut api_taken, "/api/pipeline")
        };
        let started = Instant::now();
        get_ok(http, &format!("{root}{path}")).await;
        into.push(started.elapsed().as_secs_f64() * 1e3);
        // Served from the overview just taken: what everyone else reloading meanwhile gets.
        for _ in 0..SAMPLES / PIPELINE_FRESH_SAMPLES {
            let started = Instant::now();
            get_ok(http, &format!("{root}/pipeline")).await;
            served.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    json!({
        "page_taken_anew": stats(taken),
        "api_taken_anew": stats(api_taken),
        "page_from_fresh_overview": stats(served),
    })
}

/// Seconds to load the gallery's first page and all its thumbnails, six at a time.
async fn gallery_with_thumbnails(http: &reqwest::Client, root: &str) -> f64 {
    use futures::StreamExt;
    let started = Instant::now();
    let html = get_ok(http, &format!("{root}/")).await;
    let html = String::from_utf8_lossy(&html);
    let thumbnails: Vec<String> = html
        .match_indices("src=\"/thumbnails/")
        .map(|(at, _)| {
            let rest = &html[at + 5..];
            format!("{root}{}", &rest[..rest.find('"').unwrap()])
        })
        .collect();
    assert_eq!(
        thumbnails.len(),
        PAGE,
        "the first page shows {PAGE} thumbnails"
    );
    let fetched: Vec<_> = futures::stream::iter(thumbnails.iter().map(|u| get_ok(http, u)))
        .buffer_unordered(6)
        .collect()
        .await;
    assert!(
        fetched.iter().all(|b| b.starts_with(&[0xff, 0xd8])),
        "JPEG thumbnails"
    );
    started.elapsed().as_secs_f64()
}

/// Starts `imgstream serve` on a free loopback port with `vars` and `extra` (sign-in only if
/// `extra` turns it on), and waits until it is ready.
async fn start_serve(
    vars: &HashMap<String, String>,
    extra: &[(&str, &str)],
) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Command::new(binary())
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .env_clear()
        .envs(vars)
        .env_remove("IMGSTREAM_OIDC_ISSUER")
        .env_remove("IMGSTREAM_OIDC_AUDIENCE")
        .envs(extra.iter().copied())
        .env("IMGSTREAM_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start imgstream serve");
    let root = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{root}/readyz"))
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "imgstream serve did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (server, root)
}

/// An access token of the client-credentials client, or why there is none.
async fn machine_token(
    http: &reqwest::Client,
    issuer: &str,
    vars: &HashMap<String, String>,
) -> Result<String, String> {
    let var = |name: &str, default: &str| vars.get(name).cloned().unwrap_or(default.into());
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair(
            "client_id",
            &var("BENCH_OIDC_CLIENT_ID", "imgstream-machine"),
        )
        .append_pair(
            "client_secret",
            &var("BENCH_OIDC_CLIENT_SECRET", "imgstream-machine-local-secret"),
        )
        .finish();
    let url = format!("{issuer}/protocol/openid-connect/token");
    let response = http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            format!("no token from {url} ({e}); start Keycloak with make stack-up-secured")
        })?;
    let status = response.status();
    let answer: Value = response.json().await.map_err(|e| e.to_string())?;
    answer["access_token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{url} answered {status}: {answer}"))
}

/// The first gallery page and `/api/images` with sign-in on (a bearer token naming customer `a`)
/// against sign-in off (`customer=a`), one request of each in turn so both see the same machine.
async fn sign_in_cost(vars: &HashMap<String, String>, http: &reqwest::Client, off: &str) -> Value {
    let issuer = vars
        .get("IMGSTREAM_OIDC_ISSUER")
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:8180/realms/imgstream".into());
    let audience = vars
        .get("IMGSTREAM_OIDC_AUDIENCE")
        .cloned()
        .unwrap_or_else(|| "imgstream-api".into());
    let token = match machine_token(http, &issuer, vars).await {
        Ok(token) => token,
        Err(why) => return json!({ "skipped": why }),
    };
    let (mut server, on) = start_serve(
        vars,
        &[
            ("IMGSTREAM_OIDC_ISSUER", &issuer),
            ("IMGSTREAM_OIDC_AUDIENCE", &audience),
        ],
    )
    .await;
    let get = |url: String, token: Option<&str>| {
        let mut request = http.get(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.expect("request");
            assert!(
                response.status().is_success(),
                "{url}: {}",
                response.status()
            );
            response.bytes().await.expect("body")
        }
    };
    // Both answer the same page: the scoping is in the query, so this is the cost of the check.
    let ids = |body: bytes::Bytes| -> Vec<String> {
        let page: Value = serde_json::from_slice(&body).unwrap();
        page["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["image_id"].as_str().unwrap().to_string())
            .collect()
    };
    let off_api = format!("{off}/api/images?limit={PAGE}&customer={SIGNED_IN_CUSTOMER}");
    let on_api = format!("{on}/api/images?limit={PAGE}");
    let off_page = format!("{off}/?limit={PAGE}&customer={SIGNED_IN_CUSTOMER}");
    let on_page = format!("{on}/?limit={PAGE}");
    let same = ids(get(off_api.clone(), None).await);
    assert_eq!(same.len(), PAGE);
    assert_eq!(same, ids(get(on_api.clone(), Some(&token)).await));
    let mut samples: [Vec<f64>; 4] = Default::default();
    for _ in 0..SIGN_IN_SAMPLES {
        for (i, (url, token)) in [
            (&off_api, None),
            (&on_api, Some(token.as_str())),
            (&off_page, None),
            (&on_page, Some(token.as_str())),
        ]
        .into_iter()
        .enumerate()
        {
            let started = Instant::now();
            get(url.clone(), token).await;
            samples[i].push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let [off_api, on_api, off_page, on_page] = samples;
    let ratio = |on: &Vec<f64>, off: &Vec<f64>, q: f64| {
        let (mut on, mut off) = (on.clone(), off.clone());
        on.sort_by(f64::total_cmp);
        off.sort_by(f64::total_cmp);
        percentile(&on, q) / percentile(&off, q)
    };
    let ratios = json!({
        "api_p50_on_over_off": ratio(&on_api, &off_api, 0.5),
        "api_p99_on_over_off": ratio(&on_api, &off_api, 0.99),
        "gallery_p50_on_over_off": ratio(&on_page, &off_page, 0.5),
        "gallery_p99_on_over_off": ratio(&on_page, &off_page, 0.99),
    });
    let within_10_percent = ratios
        .as_object()
        .unwrap()
        .values()
        .all(|r| r.as_f64().is_some_and(|r| r <= 1.10));
    json!({
        "customer": SIGNED_IN_CUSTOMER,
        "issuer": issuer,
        "api_first_page_off": stats(off_api),
        "api_first_page_on": stats(on_api),
        "gallery_first_page_off": stats(off_page),
        "gallery_first_page_on": stats(on_page),
        "ratios": ratios,
        "target_on_within_10_percent_of_off": within_10_percent,
    })
}

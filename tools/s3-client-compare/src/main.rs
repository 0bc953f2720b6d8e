//! Create-only PUTs against the local MinIO through two S3 clients, measured side by side:
//! `object_store` configured as imgstream's `ImageStore::s3` (src/store/builder.rs), and `aws-sdk-s3`
//! configured as close to it as the SDK allows. See README.md.
//!
//! Usage: s3-client-compare [--json PATH] [--rounds N] [--quick] [--minio-pid PID]
//!        s3-client-compare --show-requests
// A build with one client (for timing its build, see README) uses only part of this file.
#![cfg_attr(
    not(all(feature = "object-store", feature = "aws-sdk")),
    allow(dead_code, unused_imports)
)]

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ENDPOINT: &str = "http://127.0.0.1:9000";
const REGION: &str = "us-east-1";
const ACCESS_KEY: &str = "minioadmin";
const SECRET_KEY: &str = "minioadmin";
const CONTENT_TYPE: &str = "image/jpeg";
const IN_FLIGHT: usize = 32;
const POOL: usize = 16;
const WARMUP: usize = 100;
/// (label, bytes, PUTs per round)
const SIZES: [(&str, usize, usize); 3] = [
    ("16KiB", 16 << 10, 6000),
    ("256KiB", 256 << 10, 1500),
    ("2MiB", 2 << 20, 200),
];

// ------------------------------------------------------------------------------------------------
// The two clients

#[derive(Clone)]
enum Client {
    #[cfg(feature = "object-store")]
    ObjectStore(std::sync::Arc<dyn object_store::ObjectStore>),
    #[cfg(feature = "aws-sdk")]
    AwsSdk {
        client: aws_sdk_s3::Client,
        bucket: String,
    },
}

impl Client {
    fn name(&self) -> &'static str {
        match self {
            #[cfg(feature = "object-store")]
            Client::ObjectStore(_) => "object_store",
            #[cfg(feature = "aws-sdk")]
            Client::AwsSdk { .. } => "aws-sdk-s3",
        }
    }

    /// One create-only PUT with the headers imgstream's `put_image` sends: Content-Type and the
    /// user metadata `sha256`, `If-None-Match: *`, SigV4 with UNSIGNED-PAYLOAD.
    async fn put(&self, key: &str, data: Bytes, sha256: &str) -> Result<(), String> {
        match self {
            #[cfg(feature = "object-store")]
            Client::ObjectStore(store) => {
                use object_store::{Attribute, Attributes, PutMode, PutOptions, PutPayload};
                let mut attributes = Attributes::new();
                attributes.insert(Attribute::ContentType, CONTENT_TYPE.to_string().into());
                attributes.insert(
                    Attribute::Metadata("sha256".into()),
                    sha256.to_string().into(),
                );
                let opts = PutOptions {
                    mode: PutMode::Create,
                    attributes,
                    ..PutOptions::default()
                };
                store
                    .put_opts(&key.into(), PutPayload::from_bytes(data), opts)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            #[cfg(feature = "aws-sdk")]
            Client::AwsSdk { client, bucket } => client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(aws_sdk_s3::primitives::ByteStream::from(data))
                .content_type(CONTENT_TYPE)
                .metadata("sha256", sha256)
                .if_none_match("*")
                .customize()
                // Without this the SigV4 signer hashes the in-memory body (x-amz-content-sha256).
                .disable_payload_signing()
                .send()
                .await
                .map(|_| ())
                .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(&e).to_string()),
        }
    }
}

/// Exactly the builder calls of imgstream's `ImageStore::s3` (src/store/builder.rs), connect timeout 10 s
/// (IMGSTREAM_CONNECT_TIMEOUT_SECS default).
#[cfg(feature = "object-store")]
fn object_store_client(endpoint: &str, bucket: &str) -> Client {
    use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
    use object_store::{ClientOptions, RetryConfig};
    let store = AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_bucket_name(bucket)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .with_region(REGION)
        .with_virtual_hosted_style_request(false)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_unsigned_payload(true)
        .with_retry(RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(5),
            ..RetryConfig::default()
        })
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(true)
                .with_connect_timeout(Duration::from_secs(10))
                .with_timeout(Duration::from_secs(60))
                .with_pool_max_idle_per_host(64),
        )
        .build()
        .expect("object_store client");
    Client::ObjectStore(std::sync::Arc::new(store))
}

/// The closest aws-sdk-s3 equivalent: plain-HTTP hyper 1 client (no TLS stack compiled in), pool
/// of 64 idle connections per host, path-style, static credentials, no request checksum unless the
/// operation requires one, 3 attempts (= 1 + object_store's 2 retries), same timeouts.
#[cfg(feature = "aws-sdk")]
fn aws_sdk_client(endpoint: &str) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{
        BehaviorVersion, Credentials, Region, RequestChecksumCalculation,
        ResponseChecksumValidation, retry::RetryConfig, timeout::TimeoutConfig,
    };
    let http = aws_smithy_http_client::Builder::new()
        .pool_max_idle_per_host(64)
        .build_http();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http)
        .endpoint_url(endpoint)
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "static"))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .operation_attempt_timeout(Duration::from_secs(60))
                .build(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

// ------------------------------------------------------------------------------------------------
// Bucket administration (aws-sdk-s3: object_store has no bucket calls)

#[cfg(feature = "aws-sdk")]
async fn create_bucket(client: &aws_sdk_s3::Client, bucket: &str) -> Result<(), String> {
    client
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(&e).to_string())
}

/// Deletes every object in the bucket; returns how many.
#[cfg(feature = "aws-sdk")]
async fn empty_bucket(client: &aws_sdk_s3::Client, bucket: &str) -> Result<usize, String> {
    use aws_sdk_s3::error::DisplayErrorContext;
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    let mut deleted = 0;
    loop {
        // Always list from the start: every listed object is deleted before the next page.
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .max_keys(1000)
            .send()
            .await
            .map_err(|e| DisplayErrorContext(&e).to_string())?;
        let keys: Vec<ObjectIdentifier> = page
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .map(|k| ObjectIdentifier::builder().key(k).build().unwrap())
            .collect();
        if keys.is_empty() {
            return Ok(deleted);
        }
        deleted += keys.len();
        let out = client
            .delete_objects()
            .bucket(bucket)
            .delete(
                Delete::builder()
                    .set_objects(Some(keys))
                    .quiet(true)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .map_err(|e| DisplayErrorContext(&e).to_string())?;
        if let Some(err) = out.errors().first() {
            return Err(format!("delete_objects: {err:?}"));
        }
    }
}

#[cfg(feature = "aws-sdk")]
async fn delete_bucket(client: &aws_sdk_s3::Client, bucket: &str) -> Result<usize, String> {
    let n = empty_bucket(client, bucket).await?;
    client
        .delete_bucket()
        .bucket(bucket)
        .send()
        .await
        .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(&e).to_string())?;
    Ok(n)
}

// ------------------------------------------------------------------------------------------------
// Measurement helpers

/// SplitMix64: payload bytes, keys and the bucket name; no rand dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
}
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A key shaped like imgstream's `object_key`: images/<2 hex>/<uuid-like>, unique per (seed, i).
fn object_key(seed: u64, i: usize) -> String {
    let a = mix(seed.wrapping_add(i as u64));
    let b = mix(a ^ 0x5555_5555_5555_5555);
    let id = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    );
    format!("images/{}/{}", &id[..2], id)
}

/// (payload, 64-hex metadata value). The value has the length of a sha256 hex digest but is random:
/// imgstream computes the digest before `put_image`, so it is not part of the PUT's cost.
fn payload_pool(rng: &mut Rng, size: usize) -> Vec<(Bytes, String)> {
    (0..POOL)
        .map(|_| {
            let mut data = Vec::with_capacity(size + 8);
            while data.len() < size {
                data.extend_from_slice(&rng.next().to_le_bytes());
            }
            data.truncate(size);
            let tag = format!(
                "{:016x}{:016x}{:016x}{:016x}",
                rng.next(),
                rng.next(),
                rng.next(),
                rng.next()
            );
            (Bytes::from(data), tag)
        })
        .collect()
}

/// User + system CPU seconds of this process (all threads).
fn self_cpu() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// utime + stime of a process (all its threads) from /proc/<pid>/stat, in seconds.
fn proc_cpu(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the ")" that closes the command name start at field 3 (state).
    let rest = &stat[stat.rfind(')').ok_or("malformed stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields[11].parse().map_err(|_| "utime")?;
    let stime: u64 = fields[12].parse().map_err(|_| "stime")?;
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((utime + stime) as f64 / ticks)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// n PUTs, IN_FLIGHT at a time, to fresh keys; returns (errors, first error).
async fn put_many(
    client: &Client,
    n: usize,
    pool: &[(Bytes, String)],
    seed: u64,
) -> (usize, Option<String>) {
    futures::stream::iter(0..n)
        .map(|i| {
            let (data, sha) = &pool[i % POOL];
            let data = data.clone();
            async move { client.put(&object_key(seed, i), data, sha).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .fold((0, None), |(errors, first), r| async move {
            match r {
                Ok(()) => (errors, first),
                Err(e) => (errors + 1, first.or(Some(e))),
            }
        })
        .await
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn versions_from_lock() -> Value {
    let lock = include_str!("../Cargo.lock");
    let mut out = serde_json::Map::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_string());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            if [
                "object_store",
                "reqwest",
                "aws-sdk-s3",
                "aws-smithy-http-client",
                "aws-smithy-runtime",
                "aws-sigv4",
                "hyper",
                "tokio",
            ]
            .contains(&n.as_str())
            {
                out.insert(n, Value::String(v.trim_matches('"').to_string()));
            }
        }
    }
    Value::Object(out)
}

// ------------------------------------------------------------------------------------------------
// --show-requests: one PUT from each client to a local listener that prints the request head.

async fn show_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let head_end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let lower = head.to_ascii_lowercase();
                    let len: usize = lower
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if lower.contains("expect: 100-continue") {
                        let _ = sock.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
                    }
                    while buf.len() < head_end + len {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + len);
                    let _ = tx.send(format!("{head}[body: {len} bytes]"));
                    let _ = sock
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nETag: \"d41d8cd98f00b204e9800998ecf8427e\"\r\n\
                              x-amz-request-id: mock\r\nContent-Length: 0\r\n\r\n",
                        )
                        .await;
                }
            });
        }
    });
    let data = Bytes::from_static(b"0123456789abcdef");
    let sha = "0".repeat(64);
    let mut clients = Vec::new();
    #[cfg(feature = "object-store")]
    clients.push(object_store_client(&endpoint, "s3cmp-show"));
    #[cfg(feature = "aws-sdk")]
    clients.push(Client::AwsSdk {
        client: aws_sdk_client(&endpoint),
        bucket: "s3cmp-show".into(),
    });
    for client in clients {
        let result = client.put("images/ab/example", data.clone(), &sha).await;
        println!("=== {} (put result: {:?})", client.name(), result);
        while let Ok(head) = rx.try_recv() {
            println!("{head}\n");
        }
    }
    // For comparison, what the SDK sends when neither of the two settings above is made: the
    // default request checksum calculation (WhenSupported) and a signed payload.
    #[cfg(feature = "aws-sdk")]
    {
        let config = aws_sdk_client(&endpoint)
            .config()
            .to_builder()
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenSupported,
            )
            .build();
        let result = aws_sdk_s3::Client::from_conf(config)
            .put_object()
            .bucket("s3cmp-show")
            .key("images/ab/example")
            .body(aws_sdk_s3::primitives::ByteStream::from(data.clone()))
            .content_type(CONTENT_TYPE)
            .metadata("sha256", &sha)
            .if_none_match("*")
            .send()
            .await
            .map(|_| ());
        println!(
            "=== aws-sdk-s3 with RequestChecksumCalculation::WhenSupported (the default) and \
             payload signing left on (not measured) (put result: {result:?})"
        );
        while let Ok(head) = rx.try_recv() {
            println!("{head}\n");
        }
    }
}

// ------------------------------------------------------------------------------------------------

#[cfg(all(feature = "object-store", feature = "aws-sdk"))]
fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--show-requests") {
        show_requests().await;
        return;
    }
    #[cfg(not(all(feature = "object-store", feature = "aws-sdk")))]
    {
        eprintln!("this build has one client only: it can run --show-requests, not the measurement");
        std::process::exit(2);
    }
    #[cfg(all(feature = "object-store", feature = "aws-sdk"))]
    measure(&args).await;
}

#[cfg(all(feature = "object-store", feature = "aws-sdk"))]
async fn measure(args: &[String]) {
    let endpoint = arg_value(args, "--endpoint").unwrap_or_else(|| ENDPOINT.into());
    let rounds: usize = arg_value(args, "--rounds").map_or(2, |v| v.parse().expect("--rounds"));
    let quick = args.iter().any(|a| a == "--quick"); // a tenth of the PUTs: smoke test only
    let minio_pid: Option<u32> = arg_value(args, "--minio-pid").map(|v| v.parse().expect("pid"));
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let json_path = arg_value(args, "--json")
        .unwrap_or_else(|| format!("results/s3-client-compare-{}.json", started.as_secs()));
    if let Some(pid) = minio_pid {
        proc_cpu(pid).expect("cannot read the MinIO process's CPU time");
    } else {
        eprintln!("warning: no --minio-pid: MinIO CPU is not measured");
    }

    let mut rng = Rng(started.as_nanos() as u64 ^ ((std::process::id() as u64) << 32));
    let bucket = format!("s3cmp-{:012x}", rng.next() & 0xffff_ffff_ffff);
    let sdk = aws_sdk_client(&endpoint);
    create_bucket(&sdk, &bucket)
        .await
        .unwrap_or_else(|e| panic!("creating bucket {bucket}: {e}"));
    eprintln!("bucket {bucket} created at {endpoint}");
    let clients = [
        object_store_client(&endpoint, &bucket),
        Client::AwsSdk {
            client: sdk.clone(),
            bucket: bucket.clone(),
        },
    ];

    let mut rows = Vec::new(); // JSON per round
    let mut table = Vec::new(); // printed lines
    let mut failed = None;
    'sizes: for (label, size, count) in SIZES {
        let count = if quick { count / 10 } else { count };
        let pool = payload_pool(&mut rng, size);
        for client in &clients {
            let (errors, first) = put_many(client, WARMUP, &pool, rng.next()).await;
            if errors > 0 {
                failed = Some(format!("warm-up {} {label}: {errors} errors, first: {first:?}", client.name()));
                break 'sizes;
            }
        }
        let mut per_client: Vec<Vec<Value>> = vec![Vec::new(); clients.len()];
        for round in 1..=rounds {
            for (c, client) in clients.iter().enumerate() {
                let load_before = loadavg();
                let minio0 = minio_pid.map(|p| proc_cpu(p).unwrap());
                let cpu0 = self_cpu();
                let t0 = Instant::now();
                let (errors, first) = put_many(client, count, &pool, rng.next()).await;
                let wall = t0.elapsed().as_secs_f64();
                let cpu = self_cpu() - cpu0;
                let minio = minio_pid.map(|p| proc_cpu(p).unwrap() - minio0.unwrap());
                let ok = (count - errors) as f64;
                let row = json!({
                    "size": label, "size_bytes": size, "client": client.name(), "round": round,
                    "puts": count, "errors": errors, "first_error": first,
                    "wall_s": wall,
                    "objects_per_s": ok / wall,
                    "mib_per_s": ok * size as f64 / wall / (1 << 20) as f64,
                    "client_cpu_s": cpu,
                    "client_cpu_s_per_1000": cpu / count as f64 * 1000.0,
                    "minio_cpu_s": minio,
                    "minio_cpu_s_per_1000": minio.map(|m| m / count as f64 * 1000.0),
                    "loadavg_before": load_before,
                });
                eprintln!("{row}");
                per_client[c].push(row.clone());
                rows.push(row);
                if errors > 0 {
                    failed = Some(format!("{} {label} round {round}: {errors} errors, first: {first:?}", client.name()));
                }
            }
        }
        for (c, client) in clients.iter().enumerate() {
            let field = |f: &str| -> Vec<f64> {
                per_client[c].iter().filter_map(|r| r[f].as_f64()).collect()
            };
            let fmt_row = |round: String, r: [Option<f64>; 4]| {
                let cell = |v: Option<f64>, p: usize| {
                    v.map_or("-".to_string(), |v| format!("{v:.p$}"))
                };
                format!(
                    "{label:>7} {:>13} {round:>7} {:>9} {:>8} {:>11} {:>11}",
                    client.name(),
                    cell(r[0], 0),
                    cell(r[1], 1),
                    cell(r[2], 3),
                    cell(r[3], 3),
                )
            };
            for r in &per_client[c] {
                table.push(fmt_row(
                    r["round"].to_string(),
                    [
                        r["objects_per_s"].as_f64(),
                        r["mib_per_s"].as_f64(),
                        r["client_cpu_s_per_1000"].as_f64(),
                        r["minio_cpu_s_per_1000"].as_f64(),
                    ],
                ));
            }
            let med = |f: &str| {
                let v = field(f);
                (!v.is_empty()).then(|| median(v))
            };
            table.push(fmt_row(
                "median".into(),
                [
                    med("objects_per_s"),
                    med("mib_per_s"),
                    med("client_cpu_s_per_1000"),
                    med("minio_cpu_s_per_1000"),
                ],
            ));
        }
        // Keep MinIO's disk use bounded: remove this size's objects before the next (not timed).
        match empty_bucket(&sdk, &bucket).await {
            Ok(n) => eprintln!("removed {n} objects after {label}"),
            Err(e) => {
                failed = Some(format!("emptying bucket: {e}"));
                break;
            }
        }
        if failed.is_some() {
            break;
        }
    }
    let cleanup = delete_bucket(&sdk, &bucket).await;
    match &cleanup {
        Ok(n) => eprintln!("bucket {bucket} deleted ({n} objects left in it)"),
        Err(e) => eprintln!("could not delete bucket {bucket}: {e}"),
    }

    println!(
        "{:>7} {:>13} {:>7} {:>9} {:>8} {:>11} {:>11}",
        "size", "client", "round", "objects/s", "MiB/s", "cli CPU s/k", "minio s/k"
    );
    for line in &table {
        println!("{line}");
    }
    println!("(CPU s/k: CPU seconds per 1000 PUTs; {IN_FLIGHT} PUTs in flight; {rounds} rounds per client, interleaved)");

    let report = json!({
        "tool": "tools/s3-client-compare",
        "started_unix": started.as_secs(),
        "endpoint": endpoint,
        "bucket": bucket,
        "in_flight": IN_FLIGHT,
        "payload_pool": POOL,
        "warmup_puts_per_client_per_size": WARMUP,
        "rounds": rounds,
        "quick": quick,
        "minio_pid": minio_pid,
        "nproc": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "versions": versions_from_lock(),
        "rounds_detail": rows,
        "failed": failed,
        "bucket_deleted": cleanup.is_ok(),
    });
    if let Some(dir) = std::path::Path::new(&json_path).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    eprintln!("wrote {json_path}");
    if let Some(f) = failed {
        eprintln!("FAILED: {f}");
        std::process::exit(1);
    }
}

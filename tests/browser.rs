//! `imgstream serve`'s pages in a real browser: headless Chromium driven through chromedriver
//! (WebDriver). Screenshots of each page land in `target/screenshots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver`; `scripts/test-deps.sh` installs them.

mod common;

use common::{TestEnv, raw_producer, send_raw};
use fantoccini::{Client, ClientBuilder, Locator};
use imgstream::domain::sha256_hex;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A chromedriver process for this test, killed when the test ends.
struct Chromedriver {
    process: Child,
    port: u16,
    profile: PathBuf,
}

impl Chromedriver {
    fn start() -> Chromedriver {
        let binary = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("chromedriver is not installed; run scripts/test-deps.sh (Debian's chromium and chromium-driver)");
        let port = common::free_port();
        let process = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "chromium-profile-{}",
            uuid::Uuid::new_v4().simple()
        ));
        Chromedriver {
            process,
            port,
            profile,
        }
    }

    async fn session(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", self.profile.display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{}", self.port);
        let mut last_error = String::new();
        // chromedriver takes a moment to listen.
        for _ in 0..40 {
            match ClientBuilder::rustls()
                .expect("TLS roots")
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => return client,
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("cannot open a browser session through chromedriver: {last_error}");
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

async fn screenshot(client: &Client, name: &str) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = client.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// Waits until the page's script `condition` returns true.
async fn until(client: &Client, what: &str, condition: &str) {
    let script = format!("return Boolean({condition});");
    let ok = common::eventually(Duration::from_secs(20), || async {
        client
            .execute(&script, vec![])
            .await
            .is_ok_and(|v| v == serde_json::Value::Bool(true))
    })
    .await;
    let url = client
        .current_url()
        .await
        .map(|u| u.to_string())
        .unwrap_or_default();
    assert!(ok, "{what} never happened on {url}");
}

async fn text(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
        .text()
        .await
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_finds_views_and_downloads_images_and_watches_the_pipeline() {
    let driver = Chromedriver::start();
    let env = TestEnv::new("browser").await;
    let size = ["--width", "200-640", "--height", "150-480"];
    env.produce(8, &[&["--customer-id", "acme"][..], &size[..]].concat());
    env.produce(4, &[&["--customer-id", "globex"][..], &size[..]].concat());
    send_raw(&raw_producer(&env), &env.name, "poison", Some(b"xx")).await;
    let out = env.run(&["consume", "--until-idle", "3"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    // Three records left unconsumed: the lag the pipeline page must show.
    env.produce(3, &["--customer-id", "acme"]);

    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _server = env.spawn(&["serve", "--addr", &format!("127.0.0.1:{port}")], "serve");
    let ready = common::eventually(Duration::from_secs(30), || async {
        reqwest::get(format!("{base}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(
        ready,
        "serve never became ready:\n{}",
        env.read_log("serve")
    );
    let client = driver.session().await;

    // The gallery shows a thumbnail of every stored image.
    client.goto(&format!("{base}/")).await.unwrap();
    until(
        &client,
        "12 thumbnails loaded",
        "document.querySelectorAll('.card img').length === 12 && \
         Array.from(document.querySelectorAll('.card img')).every(i => i.complete && i.naturalWidth > 0)",
    )
    .await;
    screenshot(&client, "gallery").await;

    // A filter narrows the grid to one customer's images.
    let customer = client.find(Locator::Css("#filter-customer")).await.unwrap();
    customer.send_keys("globex").await.unwrap();
    client
        .find(Locator::Css("#apply-filters"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &client,
        "the filtered page",
        "location.search.includes('customer=globex')",
    )
    .await;
    until(
        &client,
        "4 thumbnails of globex loaded",
        "document.querySelectorAll('.card').length === 4 && \
         Array.from(document.querySelectorAll('.card')).every(c => c.dataset.customer === 'globex') && \
         Array.from(document.querySelectorAll('.card img')).every(i => i.complete && i.naturalWidth > 0)",
    )
    .await;
    screenshot(&client, "gallery-filtered").await;

    // The image page shows the metadata the index holds for that image, and the image itself.
    let first = client.find(Locator::Css(".card a")).await.unwrap();
    first.click().await.unwrap();
    until(
        &client,
        "the image page",
        "document.querySelector('#sha256') !== null",
    )
    .await;
    let id: uuid::Uuid = text(&client, "#image-id").await.parse().unwrap();
    let index = env.index().await;
    let row = index
        .entries_by_id(&[id])
        .await
        .unwrap()
        .remove(&id)
        .expect("a row");
    assert_eq!(text(&client, "#sha256").await, row.sha256);
    assert_eq!(text(&client, "#customer").await, "globex");
    assert_eq!(text(&client, "#source").await, row.source_id);
    assert_eq!(text(&client, "#topic").await, row.kafka_topic);
    assert_eq!(
        text(&client, "#partition").await,
        row.kafka_partition.to_string()
    );
    assert_eq!(text(&client, "#offset").await, row.kafka_offset.to_string());
    until(
        &client,
        "the full image loaded",
        &format!(
            "document.querySelector('#full-image').naturalWidth === {}",
            row.width
        ),
    )
    .await;
    screenshot(&client, "image").await;

    // The download link returns the exact stored bytes.
    let href = client
        .find(Locator::Css("#download"))
        .await
        .unwrap()
        .prop("href")
        .await
        .unwrap()
        .expect("a download link");
    let bytes = reqwest::get(&href).await.unwrap().bytes().await.unwrap();
    assert_eq!(sha256_hex(&bytes), row.sha256);

    // The pipeline page shows the lag and the dead letter this test caused.
    client.goto(&format!("{base}/pipeline")).await.unwrap();
    assert_eq!(text(&client, "#total-lag").await, "3");
    assert_eq!(text(&client, "#index-rows").await, "12");
    assert_eq!(text(&client, "#dlq-depth").await, "1");
    let letters = text(&client, "#dead-letters").await;
    assert!(letters.contains("not-wire-format"), "{letters}");
    assert!(letters.contains("poison"), "{letters}");
    screenshot(&client, "pipeline").await;
    client.close().await.unwrap();
}

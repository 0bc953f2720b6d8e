//! `imgstream serve`'s pages in a real browser: headless Chromium driven through chromedriver
//! (WebDriver). Screenshots of each page land in `target/screenshots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver`; `scripts/test-deps.sh` installs them.

mod common;

use common::chromium::{Chromedriver, screenshot, text, until};
use common::{TestEnv, raw_producer, send_raw};
use fantoccini::Locator;
use imgstream::domain::sha256_hex;
use std::time::Duration;

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

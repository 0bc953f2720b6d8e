//! Headless Chromium driven through chromedriver (WebDriver), for the tests of `imgstream
//! serve`'s pages. Needs Debian's `chromium` and `chromium-driver`; `scripts/test-deps.sh`
//! installs them.

use fantoccini::{Client, ClientBuilder, Locator};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A chromedriver process for this test, killed when the test ends.
pub struct Chromedriver {
    process: Child,
    port: u16,
    profile: PathBuf,
}

impl Chromedriver {
    pub fn start() -> Chromedriver {
        let binary = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("chromedriver is not installed; run scripts/test-deps.sh (Debian's chromium and chromium-driver)");
        let port = super::free_port();
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

    pub async fn session(&self) -> Client {
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

pub async fn screenshot(client: &Client, name: &str) {
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
pub async fn until(client: &Client, what: &str, condition: &str) {
    let script = format!("return Boolean({condition});");
    let ok = super::eventually(Duration::from_secs(20), || async {
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

pub async fn text(client: &Client, css: &str) -> String {
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

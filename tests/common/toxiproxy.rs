//! Toxiproxy (built by `scripts/test-deps.sh`): a real TCP proxy between imgstream and a service,
//! with faults ("toxics") added and removed through its HTTP API while a run goes on.

use super::Spawned;
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A Toxiproxy server of this test's own, on a free port; stopped when dropped.
pub struct Toxiproxy {
    api: String,
    http: reqwest::Client,
    _server: Spawned,
}

impl Toxiproxy {
    pub async fn start() -> Toxiproxy {
        let bin = super::cached_binary("toxiproxy");
        let port = super::free_port();
        let server = Command::new(&bin)
            .args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start toxiproxy");
        let proxy = Toxiproxy {
            api: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            _server: Spawned::from(server),
        };
        let up = super::eventually(Duration::from_secs(20), || async {
            proxy
                .http
                .get(format!("{}/version", proxy.api))
                .send()
                .await
                .is_ok()
        })
        .await;
        assert!(up, "toxiproxy did not answer on {}", proxy.api);
        proxy
    }

    /// A proxy to `upstream`, listening on `listen` ("127.0.0.1:0" for any free port).
    pub async fn proxy(&self, name: &str, listen: &str, upstream: &str) -> Proxy<'_> {
        let created: Value = self
            .http
            .post(format!("{}/proxies", self.api))
            .json(&json!({"name": name, "listen": listen, "upstream": upstream, "enabled": true}))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("create proxy")
            .json()
            .await
            .unwrap();
        Proxy {
            toxiproxy: self,
            name: name.to_string(),
            listen: created["listen"].as_str().unwrap().to_string(),
        }
    }
}

/// One proxied connection path.
pub struct Proxy<'a> {
    toxiproxy: &'a Toxiproxy,
    name: String,
    /// Where clients connect: `host:port`.
    pub listen: String,
}

impl Proxy<'_> {
    /// Adds a toxic of `kind` (latency, bandwidth, reset_peer, timeout, slow_close, …) on both
    /// directions.
    pub async fn add(&self, kind: &str, attributes: Value) {
        for stream in ["upstream", "downstream"] {
            let body = json!({
                "name": format!("{kind}_{stream}"),
                "type": kind,
                "stream": stream,
                "toxicity": 1.0,
                "attributes": attributes,
            });
            self.toxiproxy
                .http
                .post(format!(
                    "{}/proxies/{}/toxics",
                    self.toxiproxy.api, self.name
                ))
                .json(&body)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .unwrap_or_else(|e| panic!("adding {kind} to {}: {e}", self.name));
        }
    }

    /// Removes the toxic of `kind` from both directions.
    pub async fn remove(&self, kind: &str) {
        for stream in ["upstream", "downstream"] {
            self.toxiproxy
                .http
                .delete(format!(
                    "{}/proxies/{}/toxics/{kind}_{stream}",
                    self.toxiproxy.api, self.name
                ))
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .unwrap_or_else(|e| panic!("removing {kind} from {}: {e}", self.name));
        }
    }
}

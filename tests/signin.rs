//! `imgstream serve` facing people: sign-in with tokens from a real Keycloak (the secured stack's,
//! `scripts/stack/keycloak.sh`), every answer scoped to the caller's customers, and a server that
//! holds under hostile clients. Each test runs `imgstream serve` as its own process, so its log
//! and its memory can be read.

mod common;

use chrono::Utc;
use common::chromium::{Chromedriver, screenshot, until};
use common::{Spawned, TestEnv, eventually, free_port, stored_image};
use fantoccini::{Client, Locator};
use imgstream::domain::{IndexEntry, object_key, sha256_hex};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use uuid::Uuid;

const KEYCLOAK: &str = "http://127.0.0.1:8180";
const ISSUER: &str = "http://127.0.0.1:8180/realms/imgstream";
const AUDIENCE: &str = "imgstream-api";

/// A running `imgstream serve` and its address.
struct Server {
    process: Spawned,
    base: String,
    log: String,
}

async fn serve(env: &TestEnv, log: &str, extra: &[(&str, &str)]) -> Server {
    serve_on(env, log, free_port(), extra).await
}

async fn serve_on(env: &TestEnv, log: &str, port: u16, extra: &[(&str, &str)]) -> Server {
    let addr = format!("127.0.0.1:{port}");
    let process = env.spawn_with(&["serve", "--addr", &addr], log, extra);
    let base = format!("http://{addr}");
    let up = eventually(Duration::from_secs(30), || async {
        reqwest::get(format!("{base}/healthz"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(up, "serve did not start: {}", env.read_log(log));
    Server {
        process,
        base,
        log: log.to_string(),
    }
}

const SIGNED_IN: [(&str, &str); 2] = [
    ("IMGSTREAM_OIDC_ISSUER", ISSUER),
    ("IMGSTREAM_OIDC_AUDIENCE", AUDIENCE),
];

/// Keycloak must be up: `make stack-up-secured` starts it.
async fn keycloak_up() {
    let up = reqwest::get(format!("{ISSUER}/.well-known/openid-configuration"))
        .await
        .is_ok_and(|r| r.status().is_success());
    assert!(
        up,
        "Keycloak is not answering at {ISSUER}; run `make stack-up-secured` (or scripts/stack/keycloak.sh start)"
    );
}

/// POSTs a form (reqwest here is built without its `form` feature).
async fn post_form(url: &str, form: &[(&str, &str)]) -> reqwest::Response {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn token(form: &[(&str, &str)]) -> String {
    let response = post_form(&format!("{ISSUER}/protocol/openid-connect/token"), form).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "token request refused: {body}");
    body["access_token"].as_str().unwrap().to_string()
}

async fn password_token(user: &str) -> String {
    let password = format!("{user}-password");
    token(&[
        ("grant_type", "password"),
        ("client_id", "imgstream-serve"),
        ("client_secret", "imgstream-serve-local-secret"),
        ("username", user),
        ("password", &password),
    ])
    .await
}

async fn machine_token() -> String {
    token(&[
        ("grant_type", "client_credentials"),
        ("client_id", "imgstream-machine"),
        ("client_secret", "imgstream-machine-local-secret"),
    ])
    .await
}

/// GET with a bearer token (or none): status and body.
async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Every image id of a search, following `next` links.
async fn search_ids(base: &str, first: &str, token: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut url = format!("{base}{first}");
    loop {
        let (status, body) = get(&url, Some(token)).await;
        assert_eq!(status, 200, "{url}: {body}");
        let page: Value = serde_json::from_str(&body).unwrap();
        for image in page["images"].as_array().unwrap() {
            ids.insert(image["image_id"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(next) => url = format!("{base}{next}"),
            None => return ids,
        }
    }
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn metric(base: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    sample(&text, name)
}

fn ids_of(entries: &[&IndexEntry]) -> BTreeSet<String> {
    entries.iter().map(|e| e.image_id.to_string()).collect()
}

/// The admin REST API of Keycloak's master realm (bootstrap admin admin/admin).
async fn admin_token() -> String {
    let response = post_form(
        &format!("{KEYCLOAK}/realms/master/protocol/openid-connect/token"),
        &[
            ("grant_type", "password"),
            ("client_id", "admin-cli"),
            ("username", "admin"),
            ("password", "admin"),
        ],
    )
    .await;
    let body: Value = response.json().await.unwrap();
    body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no admin token: {body}"))
        .to_string()
}

const TEST_KEY: &str = "imgstream-test-rotation";

/// Removes the key this test adds to the realm (also one a failed earlier run left).
async fn remove_test_keys(admin: &str) {
    let http = reqwest::Client::new();
    let components: Value = http
        .get(format!(
            "{KEYCLOAK}/admin/realms/imgstream/components?type=org.keycloak.keys.KeyProvider"
        ))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for c in components.as_array().unwrap() {
        if c["name"] == TEST_KEY {
            http.delete(format!(
                "{KEYCLOAK}/admin/realms/imgstream/components/{}",
                c["id"].as_str().unwrap()
            ))
            .bearer_auth(admin)
            .send()
            .await
            .unwrap();
        }
    }
}

/// An RSA key pair made by openssl: (private PKCS#8 PEM, public SPKI PEM).
fn rsa_key() -> (String, String) {
    let private = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("openssl");
    assert!(private.status.success());
    let mut public = std::process::Command::new("openssl")
        .args(["pkey", "-pubout"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    public
        .stdin
        .take()
        .unwrap()
        .write_all(&private.stdout)
        .unwrap();
    let public = public.wait_with_output().unwrap();
    (
        String::from_utf8(private.stdout).unwrap(),
        String::from_utf8(public.stdout).unwrap(),
    )
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn kid_of(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_string()
}

fn sign(claims: &Value, kid: &str, pem: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_string());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_identity_sees_exactly_its_customers_and_bad_tokens_are_refused_with_a_reason() {
    keycloak_up().await;
    let env = TestEnv::new("signin").await;
    let index = env.index().await;
    let mut entries = Vec::new();
    for (i, customer) in ["a", "a", "a", "b", "b", "c", "c"].iter().enumerate() {
        entries.push(stored_image(&env, customer, i as i64 + 1).await);
    }
    index.insert_batch(&entries).await.unwrap();
    let of = |customers: &[&str]| -> Vec<&IndexEntry> {
        entries
            .iter()
            .filter(|e| customers.contains(&e.customer_id.as_str()))
            .collect()
    };
    let a = of(&["a"]);
    let server = serve(&env, "serve", &SIGNED_IN).await;
    let base = &server.base;

    let viewer_a = password_token("viewer-a").await;
    let machine_a = machine_token().await;
    let viewer_ab = password_token("viewer-ab").await;
    let admin = password_token("admin").await;
    let nobody = password_token("nobody").await;
    let cases: [(&str, &str, Vec<&IndexEntry>, bool); 5] = [
        ("viewer-a", &viewer_a, a.clone(), false),
        ("machine (client credentials)", &machine_a, a.clone(), false),
        ("viewer-ab", &viewer_ab, of(&["a", "b"]), false),
        ("admin", &admin, entries.iter().collect(), true),
        ("nobody", &nobody, Vec::new(), false),
    ];
    let unknown = Uuid::new_v4().to_string();
    for (who, token, visible, is_admin) in &cases {
        let token = *token;
        let expected = ids_of(visible);
        assert_eq!(
            search_ids(base, "/api/images?limit=2", token).await,
            expected,
            "{who}: search"
        );
        // A filter naming another customer narrows, never widens.
        for customer in ["a", "b", "c"] {
            let narrowed: BTreeSet<String> = ids_of(
                &visible
                    .iter()
                    .copied()
                    .filter(|e| e.customer_id == customer)
                    .collect::<Vec<_>>(),
            );
            assert_eq!(
                search_ids(base, &format!("/api/images?customer={customer}"), token).await,
                narrowed,
                "{who}: customer={customer}"
            );
        }
        // The gallery shows the same images.
        let (status, gallery) = get(&format!("{base}/?limit=100"), Some(token)).await;
        assert_eq!(status, 200, "{who}: {gallery}");
        for e in &entries {
            assert_eq!(
                gallery.contains(&format!("data-image-id=\"{}\"", e.image_id)),
                expected.contains(&e.image_id.to_string()),
                "{who}: gallery and image {} of {}",
                e.image_id,
                e.customer_id
            );
        }
        // By id: what the caller may not see answers exactly as an id nobody has.
        let (_, unknown_body) = get(&format!("{base}/api/images/{unknown}"), Some(token)).await;
        for e in &entries {
            let id = e.image_id.to_string();
            let routes = [
                format!("/api/images/{id}"),
                format!("/api/images/{id}/url"),
                format!("/thumbnails/{id}"),
                format!("/images/{id}"),
            ];
            for route in routes {
                let (status, body) = get(&format!("{base}{route}"), Some(token)).await;
                if expected.contains(&id) {
                    assert_eq!(status, 200, "{who}: {route}: {body}");
                } else {
                    assert_eq!(status, 404, "{who}: {route} of customer {}", e.customer_id);
                    if route.starts_with("/api/images/") && !route.ends_with("/url") {
                        assert_eq!(body.replace(&id, &unknown), unknown_body, "{who}: {route}");
                    }
                }
            }
            let download = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap()
                .get(format!("{base}/images/{id}/download"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            assert_eq!(
                download,
                if expected.contains(&id) { 303 } else { 404 },
                "{who}: download of customer {}",
                e.customer_id
            );
        }
        // The pipeline and its dead letters are for admins.
        for route in ["/api/pipeline", "/pipeline"] {
            let (status, body) = get(&format!("{base}{route}"), Some(token)).await;
            if *is_admin {
                assert_eq!(status, 200, "{who}: {route}: {body}");
            } else {
                assert_eq!(status, 403, "{who}: {route}: {body}");
            }
        }
    }

    // A cursor copied from the admin's pages opens nothing of another customer for viewer-a.
    let (_, first) = get(&format!("{base}/api/images?limit=1"), Some(&admin)).await;
    let first: Value = serde_json::from_str(&first).unwrap();
    let cursor = first["next_cursor"].as_str().unwrap();
    let after_cursor = search_ids(base, &format!("/api/images?cursor={cursor}"), &viewer_a).await;
    let newest = &entries[0];
    assert!(
        after_cursor.is_subset(&ids_of(&a)) && !after_cursor.contains(&newest.image_id.to_string()),
        "{after_cursor:?}"
    );

    // Presigned URLs: at most IMGSTREAM_SERVE_MAX_URL_TTL_SECS (1 h), each one counted.
    let issued = metric(base, "imgstream_presigned_urls_issued_total").await;
    assert!(issued >= 1.0);
    let (status, body) = get(
        &format!("{base}/api/images/{}/url?ttl=3601", a[0].image_id),
        Some(&viewer_a),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(
        &format!("{base}/api/images/{}/url?ttl=3600", a[0].image_id),
        Some(&viewer_a),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        metric(base, "imgstream_presigned_urls_issued_total").await,
        issued + 1.0
    );
    let log = env.read_log(&server.log);
    assert!(
        log.lines().any(|l| l.contains("presigned-url")
            && l.contains(&a[0].image_id.to_string())
            && l.contains("ttl_secs=3600")),
        "no audit line: {log}"
    );

    // Probes answer without a token; nothing else does.
    assert_eq!(get(&format!("{base}/healthz"), None).await.0, 200);
    assert_eq!(get(&format!("{base}/readyz"), None).await.0, 200);
    for route in ["/", "/api/images", "/api/pipeline", "/pipeline"] {
        assert_eq!(get(&format!("{base}{route}"), None).await.0, 401, "{route}");
    }

    // The realm's keys rotate: a new key, more preferred than the old, signs every new token.
    let admin_api = admin_token().await;
    remove_test_keys(&admin_api).await;
    let (private_pem, _) = rsa_key();
    let realm: Value = reqwest::Client::new()
        .get(format!("{KEYCLOAK}/admin/realms/imgstream"))
        .bearer_auth(&admin_api)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let added = reqwest::Client::new()
        .post(format!("{KEYCLOAK}/admin/realms/imgstream/components"))
        .bearer_auth(&admin_api)
        .json(&json!({
            "name": TEST_KEY,
            "providerId": "rsa",
            "providerType": "org.keycloak.keys.KeyProvider",
            "parentId": realm["id"],
            "config": {
                "priority": ["500"], "enabled": ["true"], "active": ["true"],
                "algorithm": ["RS256"], "privateKey": [private_pem]
            }
        }))
        .send()
        .await
        .unwrap();
    assert!(added.status().is_success(), "{:?}", added.text().await);
    let fetches = metric(base, "imgstream_oidc_key_fetches_total").await;
    let rotated = password_token("viewer-a").await;
    let new_kid = kid_of(&rotated);
    assert_ne!(new_kid, kid_of(&viewer_a), "Keycloak did not switch keys");
    let started = Instant::now();
    let works = eventually(Duration::from_secs(20), || async {
        get(&format!("{base}/api/images"), Some(&rotated)).await.0 == 200
    })
    .await;
    assert!(
        works,
        "a token of the rotated key never worked without a restart"
    );
    // Dozens of tries with the unknown key, and the keys were fetched once: the rate is bounded.
    assert_eq!(
        metric(base, "imgstream_oidc_key_fetches_total").await,
        fetches + 1.0,
        "keys fetched more than once in {:?}",
        started.elapsed()
    );

    // Tokens forged with the (now known) rotated key, so each fails for one reason only.
    let now = Utc::now().timestamp();
    let claims = |changes: Value| {
        let mut c = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "forged", "exp": now + 300, "iat": now,
            "customers": ["a"]
        });
        for (k, v) in changes.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let good = sign(&claims(json!({})), &new_kid, &private_pem);
    assert_eq!(
        get(&format!("{base}/api/images"), Some(&good)).await.0,
        200,
        "a well-formed token of the realm's key must pass, or the refusals below prove nothing"
    );
    let (other_pem, _) = rsa_key();
    let (_, public_pem) = (String::new(), {
        // The realm's public key as the JWKS gives it, PEM-encoded, the way an attacker keying
        // an HMAC with it would hold it.
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-pubout"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = out;
        out.stdin
            .take()
            .unwrap()
            .write_all(private_pem.as_bytes())
            .unwrap();
        String::from_utf8(out.wait_with_output().unwrap().stdout).unwrap()
    });
    let hs256 = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(new_kid.clone());
        jsonwebtoken::encode(
            &header,
            &claims(json!({})),
            &jsonwebtoken::EncodingKey::from_secret(public_pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": new_kid})
            .to_string()
            .as_bytes()),
        b64(claims(json!({})).to_string().as_bytes())
    );
    let bad: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            sign(&claims(json!({"exp": now - 120})), &new_kid, &private_pem),
            "expired",
        ),
        (
            "not yet valid",
            sign(&claims(json!({"nbf": now + 120})), &new_kid, &private_pem),
            "not valid yet",
        ),
        (
            "wrong issuer",
            sign(
                &claims(json!({"iss": "http://127.0.0.1:8180/realms/master"})),
                &new_kid,
                &private_pem,
            ),
            "issuer",
        ),
        (
            "wrong audience",
            sign(&claims(json!({"aud": "account"})), &new_kid, &private_pem),
            "audience",
        ),
        (
            "another key",
            sign(&claims(json!({})), &new_kid, &other_pem),
            "signature does not verify",
        ),
        ("alg none", none, "\"none\" is never accepted"),
        (
            "HS256 keyed with the public key",
            hs256,
            "\"HS256\" is never accepted",
        ),
        (
            // Cut mid-signature: its last base64 character may or may not decode; refused either way.
            "truncated",
            good[..good.len() - 12].to_string(),
            "signature does not verify|not a JWT",
        ),
        ("garbage", "not-a-token-at-all".to_string(), "not a JWT"),
    ];
    for (what, token, reason) in &bad {
        let (status, body) = get(&format!("{base}/api/images"), Some(token)).await;
        assert_eq!(status, 401, "{what}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        let error = error["error"].as_str().unwrap();
        assert!(
            reason.split('|').any(|r| error.contains(r)),
            "{what}: {error}"
        );
    }
    let log = env.read_log(&server.log);
    for (what, token, reason) in &bad {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("refused a request") && reason.split('|').any(|r| l.contains(r)))
            .collect();
        assert!(!lines.is_empty(), "{what}: no log line saying {reason:?}");
        // Not the token, nor its signature.
        let signature = token.rsplit('.').next().unwrap();
        assert!(
            !log.contains(token.as_str()),
            "{what}: the token is in the log"
        );
        if signature.len() > 10 {
            assert!(
                !log.contains(signature),
                "{what}: the signature is in the log"
            );
        }
    }
    remove_test_keys(&admin_api).await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_sign_in_serve_stays_on_loopback_and_refuses_to_listen_elsewhere() {
    let env = TestEnv::new("signin-loopback").await;
    let out = env.run(&["serve", "--addr", &format!("0.0.0.0:{}", free_port())]);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert!(
        err.contains("IMGSTREAM_OIDC_ISSUER") && err.contains("IMGSTREAM_OIDC_AUDIENCE"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.contains("refusing")).count(),
        1,
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_loris_is_cut_off_by_the_header_timeout_while_others_are_served() {
    let env = TestEnv::new("signin-hostile").await;
    let server = serve(
        &env,
        "serve",
        &[("IMGSTREAM_SERVE_HEADER_TIMEOUT_SECS", "2")],
    )
    .await;
    let addr = server.base.trim_start_matches("http://").to_string();
    let loris = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let started = Instant::now();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .unwrap();
        // A header line a second, never the blank line that ends them.
        let mut cut = None;
        for i in 0..20 {
            std::thread::sleep(Duration::from_secs(1));
            if stream
                .write_all(format!("X-Slow-{i}: x\r\n").as_bytes())
                .is_err()
            {
                cut = Some(started.elapsed());
                break;
            }
            let mut buf = [0u8; 512];
            stream.set_nonblocking(true).unwrap();
            let read = stream.read(&mut buf);
            stream.set_nonblocking(false).unwrap();
            if read.is_ok() {
                cut = Some(started.elapsed());
                break;
            }
        }
        cut
    });
    // Meanwhile, others are served promptly.
    for _ in 0..5 {
        let t = Instant::now();
        let (status, _) = get(&format!("{}/api/images", server.base), None).await;
        assert_eq!(status, 200);
        assert!(t.elapsed() < Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let cut = tokio::task::spawn_blocking(move || loris.join().unwrap())
        .await
        .unwrap();
    let cut = cut.expect("the slow client was never cut off");
    assert!(cut < Duration::from_secs(5), "cut off only after {cut:?}");

    // A foreign Host (DNS rebinding) is refused; the answers carry the strict headers.
    let client = reqwest::Client::new();
    let foreign = client
        .get(format!("{}/api/images", server.base))
        .header("Host", "attacker.example:80")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status().as_u16(), 421);
    let ok = client
        .get(format!("{}/", server.base))
        .header("Host", "localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let csp = ok.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("script-src"), "{csp}");
    assert_eq!(ok.headers()["x-content-type-options"], "nosniff");
    assert_eq!(ok.headers()["referrer-policy"], "no-referrer");
    // Probes answer whatever the Host (a kubelet asks by the pod's address), and say nothing
    // internal.
    let ready = client
        .get(format!("{}/readyz", server.base))
        .header("Host", "10.1.2.3:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    drop(server);
}

/// Peak RSS of a process, from /proc (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

/// The bound this test holds serve to: the default decode budget (256 MiB) plus room for the
/// process itself and the compressed originals in flight.
const PEAK_RSS_BOUND_MIB: f64 = 300.0;

#[tokio::test(flavor = "multi_thread")]
async fn eight_clients_asking_a_50_megapixel_thumbnail_keep_serve_within_its_memory_bound() {
    let env = TestEnv::new("signin-memory").await;
    // 7071×7071 RGB: just under the 50-megapixel ingest limit, 150 MB of pixels, a small file.
    let side = 7071u32;
    let started = Instant::now();
    let png = tokio::task::spawn_blocking(move || {
        // Black compresses to almost nothing, and quickly, even in a debug build.
        let pixels = vec![0u8; (side * side * 3) as usize];
        let mut png = Vec::new();
        image::ImageEncoder::write_image(
            image::codecs::png::PngEncoder::new_with_quality(
                &mut png,
                image::codecs::png::CompressionType::Fast,
                image::codecs::png::FilterType::NoFilter,
            ),
            &pixels,
            side,
            side,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
        png
    })
    .await
    .unwrap();
    eprintln!(
        "a {side}×{side} PNG of {} KB made in {:?}",
        png.len() / 1024,
        started.elapsed()
    );
    let image_id = Uuid::new_v4();
    let key = object_key(&image_id);
    let sha = sha256_hex(&png);
    env.store()
        .put_image(&key, png.clone().into(), "image/png", &sha)
        .await
        .unwrap();
    let entry = IndexEntry {
        image_id,
        object_key: key,
        bucket: env.settings.store.bucket.clone(),
        sha256: sha,
        size_bytes: png.len() as i64,
        width: side as i32,
        height: side as i32,
        content_type: "image/png".into(),
        customer_id: "a".into(),
        source_id: "cam-1".into(),
        created_at: Utc::now(),
        kafka_topic: env.name.clone(),
        kafka_partition: 0,
        kafka_offset: 0,
    };
    env.index().await.insert_batch(&[entry]).await.unwrap();
    let server = serve(&env, "serve", &[]).await;
    let pid = server.process.child().id();
    let before = peak_rss_mib(pid);
    let requests = (0..8).map(|_| {
        let url = format!("{}/thumbnails/{image_id}", server.base);
        tokio::spawn(async move {
            let response = reqwest::get(url).await.unwrap();
            (response.status().as_u16(), response.bytes().await.unwrap())
        })
    });
    let started = Instant::now();
    for r in futures::future::join_all(requests).await {
        let (status, body) = r.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let thumb = image::load_from_memory(&body).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (256, 256));
    }
    let peak = peak_rss_mib(pid);
    eprintln!(
        "8 thumbnail requests in {:?}; serve's peak RSS {before:.0} MiB before, {peak:.0} MiB after (bound {PEAK_RSS_BOUND_MIB})",
        started.elapsed()
    );
    assert!(
        peak < PEAK_RSS_BOUND_MIB,
        "serve's peak RSS {peak:.0} MiB exceeds {PEAK_RSS_BOUND_MIB} MiB"
    );
    drop(server);
}

/// `serve` with bearer tokens and browser sign-in through Keycloak's `imgstream-serve` client, on
/// `port` (the provider sends browsers back to it).
async fn serve_with_browser_sign_in(env: &TestEnv, log: &str, extra: &[(&str, &str)]) -> Server {
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let vars: Vec<(&str, &str)> = [
        &SIGNED_IN[..],
        &[
            ("IMGSTREAM_OIDC_CLIENT_ID", "imgstream-serve"),
            (
                "IMGSTREAM_OIDC_CLIENT_SECRET",
                "imgstream-serve-local-secret",
            ),
            ("IMGSTREAM_SERVE_PUBLIC_URL", &public),
        ][..],
        extra,
    ]
    .concat();
    serve_on(env, log, port, &vars).await
}

const SESSION_COOKIE: &str = "imgstream-session";

/// Signs `user` in on Keycloak's own login page, starting from the gallery, and waits for the
/// gallery again.
async fn sign_in_with_browser(browser: &Client, base: &str, user: &str) {
    browser.goto(&format!("{base}/")).await.unwrap();
    until(
        browser,
        "Keycloak's login page",
        "document.querySelector('#kc-login') !== null",
    )
    .await;
    let url = browser.current_url().await.unwrap();
    assert!(
        url.as_str().starts_with(KEYCLOAK)
            && url
                .query()
                .unwrap_or_default()
                .contains("code_challenge_method=S256"),
        "not Keycloak's login page with PKCE: {url}"
    );
    let password = format!("{user}-password");
    browser
        .find(Locator::Css("#username"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    browser
        .find(Locator::Css("#password"))
        .await
        .unwrap()
        .send_keys(&password)
        .await
        .unwrap();
    browser
        .find(Locator::Css("#kc-login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        browser,
        "the gallery after signing in",
        &format!(
            "location.href.startsWith('{base}/') && document.querySelector('#sign-out') !== null"
        ),
    )
    .await;
}

/// The session cookie the browser holds (HttpOnly: WebDriver reads it, page scripts cannot).
async fn session_cookie(browser: &Client) -> String {
    let cookie = browser
        .get_named_cookie(SESSION_COOKIE)
        .await
        .expect("a session cookie after signing in");
    assert_eq!(cookie.http_only(), Some(true), "{cookie:?}");
    assert_eq!(
        cookie.same_site().map(|s| s.to_string()).as_deref(),
        Some("Lax"),
        "{cookie:?}"
    );
    // Reached over plain http here: a Secure cookie would never be sent back.
    assert_ne!(cookie.secure(), Some(true), "{cookie:?}");
    cookie.value().to_string()
}

/// GET with a session cookie (none if empty), redirects not followed: status, `Location`, body.
async fn get_with_cookie(url: &str, cookie: &str) -> (u16, String, String) {
    let mut request = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(url);
    if !cookie.is_empty() {
        request = request.header("cookie", format!("{SESSION_COOKIE}={cookie}"));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, location, response.text().await.unwrap())
}

/// The image ids of the gallery page the browser shows, once every thumbnail has loaded.
async fn gallery_ids(browser: &Client, expected: usize) -> BTreeSet<String> {
    until(
        browser,
        &format!("{expected} thumbnails loaded"),
        &format!(
            "document.querySelectorAll('.card').length === {expected} && \
             Array.from(document.querySelectorAll('.card img')).every(i => i.complete && i.naturalWidth > 0)"
        ),
    )
    .await;
    let ids = browser
        .execute(
            "return Array.from(document.querySelectorAll('.card')).map(c => c.dataset.imageId);",
            vec![],
        )
        .await
        .unwrap();
    ids.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_signs_in_at_keycloak_sees_only_their_customers_and_signing_out_ends_the_session()
{
    keycloak_up().await;
    let driver = Chromedriver::start();
    let env = TestEnv::new("signin-browser").await;
    let mut entries = Vec::new();
    for (i, customer) in ["a", "a", "a", "b", "b", "c"].iter().enumerate() {
        entries.push(stored_image(&env, customer, i as i64 + 1).await);
    }
    env.index().await.insert_batch(&entries).await.unwrap();
    let of_a: BTreeSet<String> = entries
        .iter()
        .filter(|e| e.customer_id == "a")
        .map(|e| e.image_id.to_string())
        .collect();
    let server = serve_with_browser_sign_in(&env, "serve", &[]).await;
    let base = &server.base;

    // A signed-out browser is sent to sign in; the API answers 401 as before.
    let (status, location, _) = get_with_cookie(&format!("{base}/?limit=100"), "").await;
    assert_eq!(status, 303);
    assert_eq!(location, "/auth/sign-in?next=%2F%3Flimit%3D100");
    assert_eq!(get(&format!("{base}/api/images"), None).await.0, 401);

    let browser = driver.session().await;
    sign_in_with_browser(&browser, base, "viewer-a").await;
    assert_eq!(gallery_ids(&browser, of_a.len()).await, of_a);
    assert_eq!(
        browser
            .find(Locator::Css("#signed-in-as"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "viewer-a"
    );
    screenshot(&browser, "signed-in-gallery").await;

    // The cookie, copied out of the browser, is the session: another client holding it sees
    // exactly what the browser sees, and another customer's image is an unknown id.
    let cookie = session_cookie(&browser).await;
    let (status, _, body) = get_with_cookie(&format!("{base}/api/images"), &cookie).await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    let ids: BTreeSet<String> = page["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["image_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, of_a);
    let foreign = entries.iter().find(|e| e.customer_id == "b").unwrap();
    let (status, _, _) =
        get_with_cookie(&format!("{base}/thumbnails/{}", foreign.image_id), &cookie).await;
    assert_eq!(status, 404);
    let (status, _, _) = get_with_cookie(&format!("{base}/pipeline"), &cookie).await;
    assert_eq!(status, 403, "the pipeline is for admins");

    // Signing out: the session ends here and at Keycloak.
    browser
        .find(Locator::Css("#sign-out"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &browser,
        "the signed-out page",
        &format!("location.href === '{base}/auth/signed-out' && document.querySelector('#signed-out') !== null"),
    )
    .await;
    screenshot(&browser, "signed-out").await;
    assert!(
        browser.get_named_cookie(SESSION_COOKIE).await.is_err(),
        "the browser still holds a session cookie"
    );
    // The old cookie, replayed, opens nothing: not the API, not a page, not a thumbnail.
    let (status, _, body) = get_with_cookie(&format!("{base}/api/images"), &cookie).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("signed out"), "{body}");
    let (status, location, _) = get_with_cookie(&format!("{base}/"), &cookie).await;
    assert_eq!((status, location.as_str()), (303, "/auth/sign-in?next=%2F"));
    for e in &entries {
        let (status, _, _) =
            get_with_cookie(&format!("{base}/thumbnails/{}", e.image_id), &cookie).await;
        assert_eq!(status, 303, "thumbnail of {}", e.customer_id);
    }
    // Keycloak's session ended too: the gallery asks for the password again.
    browser.goto(&format!("{base}/")).await.unwrap();
    until(
        &browser,
        "Keycloak's login page again",
        "document.querySelector('#kc-login') !== null",
    )
    .await;
    let log = env.read_log(&server.log);
    assert!(!log.contains(&cookie), "the session cookie is in the log");
    assert!(
        log.lines()
            .any(|l| l.contains("refused a request") && l.contains("the session was signed out")),
        "{log}"
    );
    browser.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_cookie_an_expired_session_and_a_sign_out_without_its_csrf_token_are_refused() {
    keycloak_up().await;
    let driver = Chromedriver::start();
    let env = TestEnv::new("signin-cookie").await;
    let image = stored_image(&env, "a", 1).await;
    env.index()
        .await
        .insert_batch(std::slice::from_ref(&image))
        .await
        .unwrap();
    const LIFE: u64 = 12;
    let server = serve_with_browser_sign_in(
        &env,
        "serve",
        &[("IMGSTREAM_SERVE_SESSION_MAX_AGE_SECS", "12")],
    )
    .await;
    let base = &server.base;
    let browser = driver.session().await;
    sign_in_with_browser(&browser, base, "viewer-a").await;
    let cookie = session_cookie(&browser).await;
    let signed_in = Instant::now();
    let images = format!("{base}/api/images");
    assert_eq!(get_with_cookie(&images, &cookie).await.0, 200);

    // One character changed anywhere, or the cookie sealed by another server's key: refused.
    for at in [0, cookie.len() / 3, cookie.len() / 2, cookie.len() - 2] {
        let mut bytes = cookie.clone().into_bytes();
        bytes[at] = if bytes[at] == b'x' { b'y' } else { b'x' };
        let tampered = String::from_utf8(bytes).unwrap();
        let (status, _, body) = get_with_cookie(&images, &tampered).await;
        assert_eq!(status, 401, "changed at {at}: {body}");
        assert!(body.contains("does not verify"), "{body}");
        let (status, location, _) = get_with_cookie(&format!("{base}/"), &tampered).await;
        assert_eq!((status, location.as_str()), (303, "/auth/sign-in?next=%2F"));
    }
    let (status, _, _) = get_with_cookie(&images, &format!("{cookie}{cookie}")).await;
    assert_eq!(status, 401);

    // Sign-out without the session's CSRF token (what a form on another site would send) is
    // refused, and the session goes on.
    let sign_out = |csrf: Option<&str>| {
        let body = csrf.map_or(String::new(), |t| format!("csrf={t}"));
        let cookie = cookie.clone();
        let url = format!("{base}/auth/sign-out");
        async move {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap()
                .post(url)
                .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(sign_out(None).await, 403);
    assert_eq!(sign_out(Some("not-the-token")).await, 403);
    assert_eq!(
        get_with_cookie(&images, &cookie).await.0,
        200,
        "a refused sign-out ended the session"
    );
    assert!(
        signed_in.elapsed() < Duration::from_secs(LIFE),
        "the checks above took longer than the session lives ({:?}); the expiry below proves nothing",
        signed_in.elapsed()
    );

    // IMGSTREAM_SERVE_SESSION_MAX_AGE_SECS later, the same cookie is refused by the server
    // itself (a client keeping it past its Max-Age gains nothing).
    tokio::time::sleep(Duration::from_secs(LIFE + 1).saturating_sub(signed_in.elapsed())).await;
    let (status, _, body) = get_with_cookie(&images, &cookie).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("expired"), "{body}");
    let (status, location, _) = get_with_cookie(&format!("{base}/"), &cookie).await;
    assert_eq!((status, location.as_str()), (303, "/auth/sign-in?next=%2F"));
    browser.close().await.unwrap();
}

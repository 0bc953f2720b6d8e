//! Who is calling: bearer JWTs checked against the OpenID Connect issuer's keys.
//!
//! The issuer's discovery document names its JWKS; the keys are fetched at start and kept. A token
//! signed with a key we do not know (the issuer rotated its keys) fetches them again, at most once
//! per [`MIN_REFRESH`], so garbage `kid`s cannot make us hammer the provider; no request otherwise
//! calls the provider. Each key fixes its algorithm (its `alg`, or its type's usual one), and only
//! asymmetric signature algorithms are ever accepted: a token saying `none` or `HS256` is refused
//! before any key is touched, so a public key can never serve as an HMAC secret.
//!
//! A client sends the same token with every request until it expires. A token that verified is
//! remembered by its SHA-256 for at most [`VERIFIED_FOR`] and never past its `exp`, so its
//! signature is checked once, not on every request (as Envoy's JWT cache does). What that costs:
//! a key the issuer withdraws stops covering tokens already seen at most [`VERIFIED_FOR`] later.

use crate::config::OidcSettings;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use prometheus_client::metrics::counter::Counter;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use thiserror::Error;
use url::Url;

/// The shortest time between two fetches of the issuer's keys.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// Keys older than this are fetched again on the next request, so a key the issuer withdrew
/// stops being trusted.
pub const MAX_KEY_AGE: Duration = Duration::from_secs(3600);
/// How long a verified token is answered from memory, at most (never past its `exp`).
pub const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// Tokens remembered at once; when full, the memory starts again empty.
const VERIFIED_MAX: usize = 10_000;

/// Who a request comes from, as far as the index is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Sign-in is off: the server is on loopback, its one user sees everything.
    Open,
    /// A verified token.
    Signed {
        subject: String,
        customers: Vec<String>,
        admin: bool,
    },
}

impl Caller {
    /// The customers whose images this caller may see; `None`: all of them.
    pub fn scope(&self) -> Option<&[String]> {
        match self {
            Caller::Open | Caller::Signed { admin: true, .. } => None,
            Caller::Signed { customers, .. } => Some(customers),
        }
    }

    /// May see the pipeline: its counts, lag and dead letters.
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Open | Caller::Signed { admin: true, .. })
    }

    /// Names the caller in the audit log.
    pub fn subject(&self) -> &str {
        match self {
            Caller::Open => "-",
            Caller::Signed { subject, .. } => subject,
        }
    }
}

/// Why a token was refused: one line for the log, never the token itself.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("no bearer token (Authorization: Bearer <JWT>)")]
    Missing,
    #[error("the token is not a JWT (three base64url parts)")]
    Malformed,
    #[error("the token's algorithm {0:?} is never accepted (only RS*, PS*, ES*, EdDSA)")]
    RefusedAlgorithm(String),
    #[error("the token names no key (kid)")]
    NoKid,
    #[error("the token's key {0:?} is not among the issuer's keys")]
    UnknownKey(String),
    #[error("the token says {token} but its key {kid:?} is {key}")]
    AlgorithmMismatch {
        token: String,
        kid: String,
        key: String,
    },
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's issuer is not the configured one")]
    WrongIssuer,
    #[error("the token is not for this audience")]
    WrongAudience,
    #[error("the token's signature does not verify with the issuer's key {0:?}")]
    BadSignature(String),
    #[error("the token lacks claim {0}")]
    MissingClaim(String),
    #[error("the token was refused: {0}")]
    Other(String),
    #[error("no bearer token (Authorization: Bearer <JWT>) and {0}")]
    Session(super::session::SessionError),
}

/// A key of the issuer, ready to verify.
struct Key {
    algorithm: Algorithm,
    key: DecodingKey,
}

struct Keys {
    by_kid: HashMap<String, Arc<Key>>,
    fetched_at: Instant,
}

pub struct Verifier {
    oidc: OidcSettings,
    http: reqwest::Client,
    jwks_uri: Url,
    keys: RwLock<Keys>,
    /// One fetch at a time; callers that waited find the keys fresh.
    refreshing: tokio::sync::Mutex<()>,
    refreshes: Counter,
    /// Tokens that verified, by their SHA-256: who they are and until when that holds.
    verified: std::sync::Mutex<HashMap<[u8; 32], (Caller, Instant)>>,
}

/// Fetch failures name the URL (it is configuration, not a secret) and what to check.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct DiscoveryError(String);

impl DiscoveryError {
    pub fn new(message: impl Into<String>) -> Self {
        DiscoveryError(message.into())
    }
}

/// The HTTP client that talks to the provider: `timeout` per request, the CA of
/// `IMGSTREAM_OIDC_CA_FILE` trusted, redirects never followed (a redirect could lead the server's
/// requests anywhere).
pub fn provider_http(
    oidc: &OidcSettings,
    timeout: Duration,
) -> Result<reqwest::Client, DiscoveryError> {
    let mut http = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &oidc.ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            DiscoveryError(format!(
                "IMGSTREAM_OIDC_CA_FILE: cannot read {}: {e}",
                path.display()
            ))
        })?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            DiscoveryError(format!(
                "IMGSTREAM_OIDC_CA_FILE: {} is not PEM: {e}",
                path.display()
            ))
        })? {
            http = http.add_root_certificate(cert);
        }
    }
    http.build()
        .map_err(|e| DiscoveryError(format!("cannot make an HTTP client: {e}")))
}

impl Verifier {
    /// Reads the issuer's discovery document and its keys; refuses an issuer whose document names
    /// another issuer (RFC 8414 §3.3).
    pub async fn discover(
        oidc: &OidcSettings,
        http: reqwest::Client,
        refreshes: Counter,
    ) -> Result<Verifier, DiscoveryError> {
        let issuer = oidc.issuer.as_str().trim_end_matches('/');
        let discovery = format!("{issuer}/.well-known/openid-configuration");
        let document: Value = get_json(&http, &discovery).await?;
        let named = document["issuer"].as_str().unwrap_or_default();
        if named.trim_end_matches('/') != issuer {
            return Err(DiscoveryError(format!(
                "{discovery} names issuer {named:?}, not {issuer:?}; set IMGSTREAM_OIDC_ISSUER to the provider's issuer exactly"
            )));
        }
        let jwks_uri = document["jwks_uri"]
            .as_str()
            .and_then(|u| Url::parse(u).ok())
            .ok_or_else(|| DiscoveryError(format!("{discovery} has no jwks_uri")))?;
        let verifier = Verifier {
            oidc: oidc.clone(),
            http,
            jwks_uri,
            keys: RwLock::new(Keys {
                by_kid: HashMap::new(),
                fetched_at: Instant::now(),
            }),
            refreshing: tokio::sync::Mutex::new(()),
            refreshes,
            verified: Default::default(),
        };
        verifier.fetch_keys().await?;
        if verifier
            .keys
            .read()
            .expect("not poisoned")
            .by_kid
            .is_empty()
        {
            return Err(DiscoveryError(format!(
                "{} lists no signature key this server can use",
                verifier.jwks_uri
            )));
        }
        Ok(verifier)
    }

    async fn fetch_keys(&self) -> Result<(), DiscoveryError> {
        self.refreshes.inc();
        let set: Value = get_json(&self.http, self.jwks_uri.as_str()).await?;
        let mut by_kid = HashMap::new();
        for raw in set["keys"].as_array().into_iter().flatten() {
            // One key we cannot use (an encryption key, an unknown type) does not spoil the rest.
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
                continue;
            };
            let (Some(kid), Some(algorithm)) = (jwk.common.key_id.clone(), signing_algorithm(&jwk))
            else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            by_kid.insert(kid, Arc::new(Key { algorithm, key }));
        }
        tracing::info!(keys = by_kid.len(), jwks = %self.jwks_uri, "fetched the issuer's signing keys");
        *self.keys.write().expect("not poisoned") = Keys {
            by_kid,
            fetched_at: Instant::now(),
        };
        Ok(())
    }

    /// The key named `kid`, fetching the issuer's keys again if it is new and the last fetch is
    /// older than [`MIN_REFRESH`].
    async fn key(&self, kid: &str) -> Result<Arc<Key>, AuthError> {
        {
            let keys = self.keys.read().expect("not poisoned");
            if let Some(key) = keys.by_kid.get(kid)
                && keys.fetched_at.elapsed() < MAX_KEY_AGE
            {
                return Ok(key.clone());
            }
        }
        let _one = self.refreshing.lock().await;
        let stale = {
            let keys = self.keys.read().expect("not poisoned");
            let age = keys.fetched_at.elapsed();
            if let Some(key) = keys.by_kid.get(kid)
                && age < MAX_KEY_AGE
            {
                return Ok(key.clone());
            }
            age >= MIN_REFRESH
        };
        if stale {
            if let Err(e) = self.fetch_keys().await {
                tracing::warn!(error = %e, "refreshing the issuer's keys failed; keeping the old ones");
                // Not again before MIN_REFRESH either.
                self.keys.write().expect("not poisoned").fetched_at = Instant::now();
            }
            if let Some(key) = self.keys.read().expect("not poisoned").by_kid.get(kid) {
                return Ok(key.clone());
            }
        }
        Err(AuthError::UnknownKey(kid.chars().take(80).collect()))
    }

    /// Checks a bearer token and says who it is: from memory if it verified within
    /// [`VERIFIED_FOR`] and has not expired since.
    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some((caller, until)) = self.verified.lock().expect("not poisoned").get(&digest)
            && now < *until
        {
            return Ok(caller.clone());
        }
        let (caller, expires_in) = self.verify_signed(token).await?;
        if let Some(until) = expires_in.map(|left| now + left.min(VERIFIED_FOR)) {
            let mut verified = self.verified.lock().expect("not poisoned");
            if verified.len() >= VERIFIED_MAX {
                verified.clear();
            }
            verified.insert(digest, (caller.clone(), until));
        }
        Ok(caller)
    }

    /// The whole check of a token: its key, signature and claims. Also how long until it expires
    /// (`None` if it already has, within the leeway allowed).
    async fn verify_signed(&self, token: &str) -> Result<(Caller, Option<Duration>), AuthError> {
        let header = token_header(token)?;
        let alg = header["alg"].as_str().unwrap_or_default().to_string();
        let Ok(token_alg) = alg.parse::<Algorithm>() else {
            return Err(AuthError::RefusedAlgorithm(alg.chars().take(20).collect()));
        };
        if matches!(
            token_alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(AuthError::RefusedAlgorithm(alg));
        }
        let kid = header["kid"].as_str().ok_or(AuthError::NoKid)?;
        let key = self.key(kid).await?;
        if key.algorithm != token_alg {
            return Err(AuthError::AlgorithmMismatch {
                token: alg,
                kid: kid.to_string(),
                key: format!("{:?}", key.algorithm),
            });
        }
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[self.oidc.issuer.as_str().trim_end_matches('/')]);
        validation.set_audience(&[&self.oidc.audience]);
        validation.leeway = self.oidc.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Value>(token, &key.key, &validation)
            .map_err(|e| refusal(e, kid))?
            .claims;
        let subject = claims["sub"]
            .as_str()
            .ok_or_else(|| AuthError::MissingClaim("sub".into()))?
            .to_string();
        let customers = strings(claim(&claims, &self.oidc.customers_claim));
        let admin = strings(claim(&claims, &self.oidc.roles_claim)).contains(&self.oidc.admin_role);
        let unix_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let expires_in = claims["exp"]
            .as_u64()
            .and_then(|exp| exp.checked_sub(unix_now))
            .filter(|&left| left > 0)
            .map(Duration::from_secs);
        let caller = Caller::Signed {
            subject,
            customers,
            admin,
        };
        Ok((caller, expires_in))
    }
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, DiscoveryError> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| DiscoveryError(format!("cannot reach {url}: {e}; is the provider up?")))?;
    let status = response.status();
    if !status.is_success() {
        return Err(DiscoveryError(format!(
            "{url} answered {status}; check IMGSTREAM_OIDC_ISSUER"
        )));
    }
    response
        .json()
        .await
        .map_err(|e| DiscoveryError(format!("{url} did not answer JSON: {e}")))
}

/// The algorithm a JWK signs with: its own `alg`, or its type's usual one. `None` for keys that
/// do not sign (`use: enc`) and symmetric keys, which a public JWKS must never hold.
fn signing_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::OctetKey(_), _) | (AlgorithmParameters::Other(_), _) => return None,
        (_, Some(alg)) => match alg {
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::RS384 => Algorithm::RS384,
            KeyAlgorithm::RS512 => Algorithm::RS512,
            KeyAlgorithm::PS256 => Algorithm::PS256,
            KeyAlgorithm::PS384 => Algorithm::PS384,
            KeyAlgorithm::PS512 => Algorithm::PS512,
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::ES384 => Algorithm::ES384,
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
            _ => return None,
        },
        (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
        (AlgorithmParameters::EllipticCurve(ec), None) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        (AlgorithmParameters::OctetKeyPair(_), None) => Algorithm::EdDSA,
        _ => return None,
    };
    // The key's type must fit its algorithm, or a key could be used under another family.
    let fits = matches!(
        (&jwk.algorithm, algorithm),
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512,
        ) | (
            AlgorithmParameters::EllipticCurve(_),
            Algorithm::ES256 | Algorithm::ES384
        ) | (AlgorithmParameters::OctetKeyPair(_), Algorithm::EdDSA)
    );
    fits.then_some(algorithm)
}

/// A JWT's header, read without trusting it.
fn token_header(token: &str) -> Result<Value, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed)?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    value
        .is_object()
        .then_some(value)
        .ok_or(AuthError::Malformed)
}

fn refusal(e: jsonwebtoken::errors::Error, kid: &str) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidSignature => AuthError::BadSignature(kid.to_string()),
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => AuthError::Malformed,
        other => AuthError::Other(format!("{other:?}").chars().take(120).collect()),
    }
}

/// A claim by dotted path (`realm_access.roles`).
fn claim<'a>(claims: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(claims, |v, name| &v[name])
}

/// A claim's strings: an array of them, or one.
fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A P-256 key made for this test only (openssl genpkey), and its public half.
    const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgeJFzTegnxOSFno0d
2/QJdIByKeVgYQhxjqbTXYYm37OhRANCAASTqtRF2MrJ3FpOgqWFLN3iGeHhVPLG
6mJU+s5N+UQgLog/c5ptgdHaL/c/n8tY3q+pjcSVXedN0/dVu0G8pCNw
-----END PRIVATE KEY-----";
    const TEST_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEk6rURdjKydxaToKlhSzd4hnh4VTy
xupiVPrOTflEIC6IP3OabYHR2i/3P5/LWN6vqY3ElV3nTdP3VbtBvKQjcA==
-----END PUBLIC KEY-----";
    const ISSUER: &str = "https://issuer.test/realms/r";

    /// A verifier holding the test key as `k1`, with keys fetched just now (so none is fetched
    /// again within the test: its JWKS address answers nothing).
    fn verifier() -> Verifier {
        let key = Key {
            algorithm: Algorithm::ES256,
            key: DecodingKey::from_ec_pem(TEST_PUBLIC_KEY.as_bytes()).unwrap(),
        };
        Verifier {
            oidc: OidcSettings {
                issuer: Url::parse(ISSUER).unwrap(),
                audience: "api".into(),
                ca_file: None,
                customers_claim: "customers".into(),
                roles_claim: "roles".into(),
                admin_role: "admin".into(),
                leeway: Duration::from_secs(30),
                browser: None,
            },
            http: reqwest::Client::new(),
            jwks_uri: Url::parse("http://127.0.0.1:9/jwks").unwrap(),
            keys: RwLock::new(Keys {
                by_kid: HashMap::from([("k1".to_string(), Arc::new(key))]),
                fetched_at: Instant::now(),
            }),
            refreshing: tokio::sync::Mutex::new(()),
            refreshes: Counter::default(),
            verified: Default::default(),
        }
    }

    /// A token of customer `a` signed with the test key, expiring `exp_in` seconds from now
    /// (negative: that long ago).
    fn token(subject: &str, exp_in: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = serde_json::json!({
            "iss": ISSUER, "aud": "api", "sub": subject, "exp": now + exp_in, "customers": ["a"],
        });
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        let key = jsonwebtoken::EncodingKey::from_ec_pem(TEST_KEY.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    #[tokio::test]
    async fn a_token_that_verified_is_answered_from_memory_until_it_expires() {
        let verifier = verifier();
        let fresh = token("viewer", 300);
        let within_leeway = token("late", -5);
        let caller = verifier.verify(&fresh).await.unwrap();
        assert_eq!(caller.scope(), Some(&["a".to_string()][..]));
        assert_eq!(
            verifier.verify(&within_leeway).await.unwrap().subject(),
            "late"
        );
        // The issuer's key withdrawn: a token already verified still answers, from memory...
        verifier.keys.write().unwrap().by_kid.clear();
        assert_eq!(verifier.verify(&fresh).await.unwrap(), caller);
        // ...one never seen does not, and neither does one past its `exp`, which is never
        // remembered beyond it, though its leeway let it through once.
        assert_eq!(
            verifier.verify(&token("other", 300)).await,
            Err(AuthError::UnknownKey("k1".into()))
        );
        assert_eq!(
            verifier.verify(&within_leeway).await,
            Err(AuthError::UnknownKey("k1".into()))
        );
        // At most VERIFIED_FOR, however long the token lives.
        let (_, until) = verifier
            .verified
            .lock()
            .unwrap()
            .values()
            .next()
            .cloned()
            .unwrap();
        assert!(until <= Instant::now() + VERIFIED_FOR);
    }

    #[tokio::test]
    async fn a_refused_token_is_not_remembered() {
        let verifier = verifier();
        let mut forged = token("viewer", 300);
        forged.replace_range(forged.len() - 4.., "AAAA");
        assert!(verifier.verify(&forged).await.is_err());
        assert!(verifier.verified.lock().unwrap().is_empty());
    }

    #[test]
    fn headers_that_are_not_json_objects_are_malformed() {
        assert_eq!(token_header("garbage"), Err(AuthError::Malformed));
        assert_eq!(token_header("a.b"), Err(AuthError::Malformed));
        assert_eq!(token_header("e30.e30.x.y"), Err(AuthError::Malformed));
        assert_eq!(token_header("bm90IGpzb24.e30.x"), Err(AuthError::Malformed));
        assert!(token_header("e30.e30.").unwrap().is_object());
    }

    #[test]
    fn claims_are_read_by_dotted_path_as_lists_of_strings() {
        let claims: Value = serde_json::json!({
            "customers": ["a", "b", 3],
            "realm_access": {"roles": ["imgstream-admin"]},
            "one": "x"
        });
        assert_eq!(strings(claim(&claims, "customers")), ["a", "b"]);
        assert_eq!(
            strings(claim(&claims, "realm_access.roles")),
            ["imgstream-admin"]
        );
        assert_eq!(strings(claim(&claims, "one")), ["x"]);
        assert!(strings(claim(&claims, "missing.path")).is_empty());
    }

    #[test]
    fn only_asymmetric_signing_keys_are_kept_each_with_its_own_algorithm() {
        let key = |json: Value| signing_algorithm(&serde_json::from_value::<Jwk>(json).unwrap());
        let n = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";
        assert_eq!(
            key(
                serde_json::json!({"kty": "RSA", "kid": "1", "alg": "RS256", "use": "sig", "n": n, "e": "AQAB"})
            ),
            Some(Algorithm::RS256)
        );
        assert_eq!(
            key(serde_json::json!({"kty": "RSA", "kid": "1", "n": n, "e": "AQAB"})),
            Some(Algorithm::RS256)
        );
        assert_eq!(
            key(
                serde_json::json!({"kty": "RSA", "kid": "1", "alg": "RSA-OAEP", "use": "enc", "n": n, "e": "AQAB"})
            ),
            None
        );
        assert_eq!(
            key(serde_json::json!({"kty": "RSA", "kid": "1", "alg": "ES256", "n": n, "e": "AQAB"})),
            None,
            "an RSA key claiming an EC algorithm"
        );
        assert_eq!(
            key(serde_json::json!({"kty": "oct", "kid": "1", "alg": "HS256", "k": "c2VjcmV0"})),
            None
        );
    }
}

//! `imgstream serve`'s own settings: who may call it (OpenID Connect), and the limits that keep
//! it standing under hostile clients. Read from the same variables as [`super::Settings`].

use super::{ConfigError, Settings, invalid, parse_number, readable_file, with_secret_files};
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

/// Bearer tokens are checked against this provider (`IMGSTREAM_OIDC_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcSettings {
    /// `IMGSTREAM_OIDC_ISSUER`: the `iss` of every accepted token; its discovery document is at
    /// `<issuer>/.well-known/openid-configuration`.
    pub issuer: Url,
    /// `IMGSTREAM_OIDC_AUDIENCE`: an `aud` every accepted token must carry.
    pub audience: String,
    /// `IMGSTREAM_OIDC_CA_FILE`: a PEM bundle trusted (besides the system's roots) for the issuer.
    pub ca_file: Option<PathBuf>,
    /// `IMGSTREAM_OIDC_CUSTOMERS_CLAIM`: the claim listing the caller's customers (a dotted path).
    pub customers_claim: String,
    /// `IMGSTREAM_OIDC_ROLES_CLAIM`: the claim listing the caller's roles (a dotted path).
    pub roles_claim: String,
    /// `IMGSTREAM_OIDC_ADMIN_ROLE`: the role that sees every customer and the pipeline.
    pub admin_role: String,
    /// `IMGSTREAM_OIDC_LEEWAY_SECS`: clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Browser sign-in (authorization code with PKCE), on when `IMGSTREAM_OIDC_CLIENT_ID` is set.
    pub browser: Option<BrowserSettings>,
}

/// People sign in with their browser at the provider and keep a session cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserSettings {
    /// `IMGSTREAM_OIDC_CLIENT_ID`: the provider's client for this server's browser sign-in.
    pub client_id: String,
    /// `IMGSTREAM_OIDC_CLIENT_SECRET`: its secret (a confidential client); unset for a public one.
    pub client_secret: Option<Secret>,
    /// `IMGSTREAM_SERVE_PUBLIC_URL`: where people reach this server. The provider sends them back
    /// to `<url>/auth/callback`; an `https` URL makes the session cookie `Secure`.
    pub public_url: Url,
    /// `IMGSTREAM_SERVE_SESSION_KEY`: 32 bytes (base64 or 64 hex digits) sealing session cookies;
    /// unset: made at start, so sessions end with the process and are not shared by replicas.
    pub session_key: Option<Secret>,
    /// `IMGSTREAM_SERVE_SESSION_MAX_AGE_SECS`: the longest a session lasts; it ends sooner when
    /// the ID token it began with expires.
    pub session_max_age: Duration,
}

impl BrowserSettings {
    /// The session cookie is `Secure`: people reach this server over HTTPS.
    pub fn secure(&self) -> bool {
        self.public_url.scheme() == "https"
    }
}

/// A secret setting: compared, cloned, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A session key from its setting: 32 bytes, as 64 hex digits or base64 (standard or URL-safe).
fn session_key(raw: &str) -> Result<Secret, ConfigError> {
    use base64::Engine;
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let bytes = hex::decode(raw).ok().filter(|b| b.len() == 32).or_else(|| {
        engines
            .iter()
            .find_map(|e| e.decode(raw).ok().filter(|b| b.len() == 32))
    });
    bytes.map(Secret).ok_or_else(|| {
        invalid(
            "IMGSTREAM_SERVE_SESSION_KEY",
            "is not 32 bytes as 64 hex digits or base64; make one with `openssl rand -base64 32`",
        )
    })
}

/// `serve`'s own S3 key (`IMGSTREAM_SERVE_S3_ACCESS_KEY`/`_SECRET_KEY`); the secret never
/// appears in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Key {
    pub access_key: String,
    pub secret_key: String,
}

impl fmt::Debug for S3Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S3Key({}:<redacted>)", self.access_key)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeSettings {
    /// Sign-in; `None` serves everyone everything, and then only on loopback.
    pub oidc: Option<OidcSettings>,
    /// The key `serve` reads images, keeps thumbnails and signs URLs with
    /// (deploy/policies/s3-serve.json); `None`: the object store settings' own (`MINIO_*`), so
    /// the demo needs no second key.
    pub s3_key: Option<S3Key>,
    /// `IMGSTREAM_SERVE_OPEN_ACCESS=true`: listen beyond loopback without sign-in. Only for a
    /// container whose port is published on its host's loopback alone (deploy/compose.yaml).
    pub open_access: bool,
    /// `IMGSTREAM_SERVE_ALLOWED_HOSTS`: `Host` names answered (port ignored), lowercase.
    pub allowed_hosts: Vec<String>,
    /// `IMGSTREAM_SERVE_MAX_URL_TTL_SECS`: the longest life of a presigned URL.
    pub max_url_ttl: Duration,
    /// `IMGSTREAM_SERVE_HEADER_TIMEOUT_SECS`: a request's headers must arrive within this, and an
    /// idle keep-alive connection is closed after it.
    pub header_timeout: Duration,
    /// `IMGSTREAM_SERVE_REQUEST_TIMEOUT_SECS`: the longest a request is worked on.
    pub request_timeout: Duration,
    /// `IMGSTREAM_SERVE_MAX_CONNECTIONS`: open connections; more wait to be accepted.
    pub max_connections: usize,
    /// `IMGSTREAM_SERVE_MAX_REQUESTS`: requests worked on at once; more are answered 503.
    pub max_requests: usize,
    /// `IMGSTREAM_SERVE_THUMBNAIL_MEMORY_MB`: memory all thumbnail decodes together may take.
    pub thumbnail_memory_bytes: u64,
}

impl Default for ServeSettings {
    fn default() -> Self {
        ServeSettings::from_vars(&HashMap::new()).expect("the defaults are valid")
    }
}

impl ServeSettings {
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<ServeSettings, ConfigError> {
        let vars = &with_secret_files(vars)?;
        let set = |name: &str| {
            vars.get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let get = |name: &str, default: &str| set(name).unwrap_or_else(|| default.to_string());
        let oidc = match set("IMGSTREAM_OIDC_ISSUER") {
            None => {
                if let Some(name) = ["IMGSTREAM_OIDC_CLIENT_ID", "IMGSTREAM_SERVE_PUBLIC_URL"]
                    .into_iter()
                    .find(|n| set(n).is_some())
                {
                    return Err(invalid(
                        "IMGSTREAM_OIDC_ISSUER",
                        format!(
                            "is unset while {name} is set; browser sign-in needs the issuer and IMGSTREAM_OIDC_AUDIENCE too"
                        ),
                    ));
                }
                if set("IMGSTREAM_OIDC_AUDIENCE").is_some() {
                    return Err(invalid(
                        "IMGSTREAM_OIDC_ISSUER",
                        "is unset while IMGSTREAM_OIDC_AUDIENCE is set; set both to turn sign-in on",
                    ));
                }
                None
            }
            Some(raw) => {
                let issuer = Url::parse(&raw)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                    .ok_or_else(|| {
                        invalid(
                            "IMGSTREAM_OIDC_ISSUER",
                            format!("{raw:?} is not an http(s) URL"),
                        )
                    })?;
                let audience = set("IMGSTREAM_OIDC_AUDIENCE").ok_or_else(|| {
                    invalid(
                        "IMGSTREAM_OIDC_AUDIENCE",
                        "must be set with IMGSTREAM_OIDC_ISSUER: the `aud` this server's tokens carry",
                    )
                })?;
                Some(OidcSettings {
                    issuer,
                    audience,
                    ca_file: readable_file(vars, "IMGSTREAM_OIDC_CA_FILE")?,
                    customers_claim: get("IMGSTREAM_OIDC_CUSTOMERS_CLAIM", "customers"),
                    roles_claim: get("IMGSTREAM_OIDC_ROLES_CLAIM", "roles"),
                    admin_role: get("IMGSTREAM_OIDC_ADMIN_ROLE", "imgstream-admin"),
                    leeway: Duration::from_secs(parse_number(
                        "IMGSTREAM_OIDC_LEEWAY_SECS",
                        &get("IMGSTREAM_OIDC_LEEWAY_SECS", "30"),
                        0,
                        300,
                    )?),
                    browser: browser_settings(vars)?,
                })
            }
        };
        let mut allowed_hosts: Vec<String> =
            get("IMGSTREAM_SERVE_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
                .split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect();
        if let Some(bad) = allowed_hosts
            .iter()
            .find(|h| h.contains(['/', ' ', '@']) || h.contains("*"))
        {
            return Err(invalid(
                "IMGSTREAM_SERVE_ALLOWED_HOSTS",
                format!(
                    "{bad:?} is not a host name (a comma-separated list, no ports or wildcards)"
                ),
            ));
        }
        // The name people reach us by is one we answer for.
        if let Some(host) = oidc
            .as_ref()
            .and_then(|o| o.browser.as_ref())
            .and_then(|b| b.public_url.host_str())
            .map(str::to_ascii_lowercase)
            && !allowed_hosts.contains(&host)
        {
            allowed_hosts.push(host);
        }
        let secs = |name: &'static str, default: &str, max: u64| -> Result<Duration, ConfigError> {
            Ok(Duration::from_secs(parse_number(
                name,
                &get(name, default),
                1,
                max,
            )?))
        };
        let open_access = match get("IMGSTREAM_SERVE_OPEN_ACCESS", "false").as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            other => {
                return Err(invalid(
                    "IMGSTREAM_SERVE_OPEN_ACCESS",
                    format!("{other:?} is neither true nor false"),
                ));
            }
        };
        let s3_key = match (
            set("IMGSTREAM_SERVE_S3_ACCESS_KEY"),
            set("IMGSTREAM_SERVE_S3_SECRET_KEY"),
        ) {
            (None, None) => None,
            (Some(access_key), Some(secret_key)) => Some(S3Key {
                access_key,
                secret_key,
            }),
            (Some(_), None) => {
                return Err(invalid(
                    "IMGSTREAM_SERVE_S3_SECRET_KEY",
                    "is unset while IMGSTREAM_SERVE_S3_ACCESS_KEY is set; set both, or neither to use MINIO_ACCESS_KEY/MINIO_SECRET_KEY",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "IMGSTREAM_SERVE_S3_ACCESS_KEY",
                    "is unset while IMGSTREAM_SERVE_S3_SECRET_KEY is set; set both, or neither to use MINIO_ACCESS_KEY/MINIO_SECRET_KEY",
                ));
            }
        };
        Ok(ServeSettings {
            oidc,
            s3_key,
            open_access,
            allowed_hosts,
            max_url_ttl: secs("IMGSTREAM_SERVE_MAX_URL_TTL_SECS", "3600", 7 * 24 * 3600)?,
            header_timeout: secs("IMGSTREAM_SERVE_HEADER_TIMEOUT_SECS", "10", 600)?,
            request_timeout: secs("IMGSTREAM_SERVE_REQUEST_TIMEOUT_SECS", "60", 3600)?,
            max_connections: parse_number(
                "IMGSTREAM_SERVE_MAX_CONNECTIONS",
                &get("IMGSTREAM_SERVE_MAX_CONNECTIONS", "1024"),
                1,
                1_000_000,
            )?,
            max_requests: parse_number(
                "IMGSTREAM_SERVE_MAX_REQUESTS",
                &get("IMGSTREAM_SERVE_MAX_REQUESTS", "256"),
                1,
                1_000_000,
            )?,
            thumbnail_memory_bytes: parse_number::<u64>(
                "IMGSTREAM_SERVE_THUMBNAIL_MEMORY_MB",
                &get("IMGSTREAM_SERVE_THUMBNAIL_MEMORY_MB", "256"),
                16,
                1 << 20,
            )? << 20,
        })
    }

    /// Loads them the way [`super::Settings::load`] does.
    pub fn load() -> Result<ServeSettings, ConfigError> {
        ServeSettings::from_vars(&super::load_vars()?)
    }

    /// `settings` as `serve` uses them: with its own S3 key, when it has one, in place of the
    /// object store's (and of the AWS chain), for every read and every presigned URL.
    pub fn own_identity(&self, settings: &Settings) -> Settings {
        let mut own = settings.clone();
        if let Some(key) = &self.s3_key {
            own.store.access_key = key.access_key.clone();
            own.store.secret_key = key.secret_key.clone();
            own.store.aws_chain = None;
        }
        own
    }
}

/// Browser sign-in's settings, `None` unless `IMGSTREAM_OIDC_CLIENT_ID` is set.
fn browser_settings(
    vars: &HashMap<String, String>,
) -> Result<Option<BrowserSettings>, ConfigError> {
    let set = |name: &str| {
        vars.get(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let Some(client_id) = set("IMGSTREAM_OIDC_CLIENT_ID") else {
        if set("IMGSTREAM_SERVE_PUBLIC_URL").is_some() {
            return Err(invalid(
                "IMGSTREAM_OIDC_CLIENT_ID",
                "is unset while IMGSTREAM_SERVE_PUBLIC_URL is set; set the provider's client to turn browser sign-in on",
            ));
        }
        return Ok(None);
    };
    let raw = set("IMGSTREAM_SERVE_PUBLIC_URL").ok_or_else(|| {
        invalid(
            "IMGSTREAM_SERVE_PUBLIC_URL",
            "must be set with IMGSTREAM_OIDC_CLIENT_ID: the URL people reach this server at (the provider sends them back to <url>/auth/callback)",
        )
    })?;
    let public_url = Url::parse(&raw)
        .ok()
        .filter(|u| {
            matches!(u.scheme(), "http" | "https")
                && u.host().is_some()
                && u.path() == "/"
                && u.query().is_none()
                && u.username().is_empty()
        })
        .ok_or_else(|| {
            invalid(
                "IMGSTREAM_SERVE_PUBLIC_URL",
                format!(
                    "{raw:?} is not an http(s) URL without a path, like https://gallery.example.com"
                ),
            )
        })?;
    let session_max_age = Duration::from_secs(parse_number(
        "IMGSTREAM_SERVE_SESSION_MAX_AGE_SECS",
        &set("IMGSTREAM_SERVE_SESSION_MAX_AGE_SECS").unwrap_or_else(|| "28800".into()),
        1,
        7 * 24 * 3600,
    )?);
    Ok(Some(BrowserSettings {
        client_id,
        client_secret: set("IMGSTREAM_OIDC_CLIENT_SECRET").map(|s| Secret(s.into_bytes())),
        public_url,
        session_key: set("IMGSTREAM_SERVE_SESSION_KEY")
            .map(|k| session_key(&k))
            .transpose()?,
        session_max_age,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::vars;

    #[test]
    fn sign_in_is_off_by_default_and_needs_issuer_and_audience_together() {
        let s = ServeSettings::default();
        assert_eq!(s.oidc, None);
        assert_eq!(s.max_url_ttl, Duration::from_secs(3600));
        assert_eq!(s.allowed_hosts, ["127.0.0.1", "localhost", "[::1]"]);
        let err =
            ServeSettings::from_vars(&vars(&[("IMGSTREAM_OIDC_ISSUER", "http://kc/realms/x")]))
                .unwrap_err();
        assert_eq!(err.var, "IMGSTREAM_OIDC_AUDIENCE");
        let err =
            ServeSettings::from_vars(&vars(&[("IMGSTREAM_OIDC_AUDIENCE", "api")])).unwrap_err();
        assert_eq!(err.var, "IMGSTREAM_OIDC_ISSUER");
        let s = ServeSettings::from_vars(&vars(&[
            ("IMGSTREAM_OIDC_ISSUER", "https://kc.example/realms/x"),
            ("IMGSTREAM_OIDC_AUDIENCE", "api"),
        ]))
        .unwrap();
        let oidc = s.oidc.unwrap();
        assert_eq!(oidc.customers_claim, "customers");
        assert_eq!(oidc.leeway, Duration::from_secs(30));
    }

    #[test]
    fn serve_uses_its_own_s3_key_when_both_halves_are_set_and_the_store_key_otherwise() {
        let settings = Settings::from_vars(&vars(&[
            ("MINIO_ACCESS_KEY", "consumer"),
            ("MINIO_SECRET_KEY", "consumer-secret"),
        ]))
        .unwrap();
        let unset = ServeSettings::from_vars(&HashMap::new()).unwrap();
        assert_eq!(unset.s3_key, None);
        assert_eq!(
            unset.own_identity(&settings),
            settings,
            "the demo's one key"
        );

        let own = ServeSettings::from_vars(&vars(&[
            ("IMGSTREAM_SERVE_S3_ACCESS_KEY", "serve"),
            ("IMGSTREAM_SERVE_S3_SECRET_KEY", "serve-secret"),
        ]))
        .unwrap();
        let store = own.own_identity(&settings).store;
        assert_eq!(
            (store.access_key.as_str(), store.secret_key.as_str()),
            ("serve", "serve-secret")
        );
        assert!(!format!("{own:?}").contains("serve-secret"), "{own:?}");

        for (set, missing) in [
            (
                "IMGSTREAM_SERVE_S3_ACCESS_KEY",
                "IMGSTREAM_SERVE_S3_SECRET_KEY",
            ),
            (
                "IMGSTREAM_SERVE_S3_SECRET_KEY",
                "IMGSTREAM_SERVE_S3_ACCESS_KEY",
            ),
        ] {
            let err = ServeSettings::from_vars(&vars(&[(set, "x")])).unwrap_err();
            assert_eq!(err.var, missing);
        }
    }

    #[test]
    fn hosts_and_limits_are_checked_by_name() {
        let err =
            ServeSettings::from_vars(&vars(&[("IMGSTREAM_SERVE_ALLOWED_HOSTS", "*.example")]))
                .unwrap_err();
        assert_eq!(err.var, "IMGSTREAM_SERVE_ALLOWED_HOSTS");
        let err = ServeSettings::from_vars(&vars(&[("IMGSTREAM_SERVE_MAX_URL_TTL_SECS", "0")]))
            .unwrap_err();
        assert_eq!(err.var, "IMGSTREAM_SERVE_MAX_URL_TTL_SECS");
        let s = ServeSettings::from_vars(&vars(&[(
            "IMGSTREAM_SERVE_ALLOWED_HOSTS",
            "Gallery.Example.com, 10.0.0.5",
        )]))
        .unwrap();
        assert_eq!(s.allowed_hosts, ["gallery.example.com", "10.0.0.5"]);
        assert!(!s.open_access);
        let err =
            ServeSettings::from_vars(&vars(&[("IMGSTREAM_SERVE_OPEN_ACCESS", "yes")])).unwrap_err();
        assert_eq!(err.var, "IMGSTREAM_SERVE_OPEN_ACCESS");
    }

    #[test]
    fn browser_sign_in_needs_a_public_url_and_takes_a_32_byte_key() {
        let base = [
            ("IMGSTREAM_OIDC_ISSUER", "https://kc.example/realms/x"),
            ("IMGSTREAM_OIDC_AUDIENCE", "api"),
            ("IMGSTREAM_OIDC_CLIENT_ID", "serve"),
        ];
        let err = ServeSettings::from_vars(&vars(&base)).unwrap_err();
        assert_eq!(err.var, "IMGSTREAM_SERVE_PUBLIC_URL");
        let with =
            |extra: &[(&str, &str)]| ServeSettings::from_vars(&vars(&[&base[..], extra].concat()));
        let err = with(&[("IMGSTREAM_SERVE_PUBLIC_URL", "https://g.example/sub")]).unwrap_err();
        assert_eq!(err.var, "IMGSTREAM_SERVE_PUBLIC_URL");
        let s = with(&[("IMGSTREAM_SERVE_PUBLIC_URL", "https://Gallery.Example")]).unwrap();
        let browser = s.oidc.unwrap().browser.unwrap();
        assert!(browser.secure());
        assert_eq!(browser.session_key, None);
        assert_eq!(browser.session_max_age, Duration::from_secs(8 * 3600));
        assert!(s.allowed_hosts.contains(&"gallery.example".to_string()));
        let key = "00".repeat(32);
        let s = with(&[
            ("IMGSTREAM_SERVE_PUBLIC_URL", "http://127.0.0.1:8080"),
            ("IMGSTREAM_SERVE_SESSION_KEY", &key),
            ("IMGSTREAM_OIDC_CLIENT_SECRET", "s3cret"),
        ])
        .unwrap();
        let browser = s.oidc.unwrap().browser.unwrap();
        assert!(!browser.secure());
        assert_eq!(browser.session_key, Some(Secret(vec![0; 32])));
        assert!(!format!("{browser:?}").contains("s3cret"));
        let err = with(&[
            ("IMGSTREAM_SERVE_PUBLIC_URL", "http://127.0.0.1:8080"),
            ("IMGSTREAM_SERVE_SESSION_KEY", "c2hvcnQ="),
        ])
        .unwrap_err();
        assert_eq!(err.var, "IMGSTREAM_SERVE_SESSION_KEY");
        let err =
            ServeSettings::from_vars(&vars(&[("IMGSTREAM_OIDC_CLIENT_ID", "serve")])).unwrap_err();
        assert_eq!(err.var, "IMGSTREAM_OIDC_ISSUER");
    }
}

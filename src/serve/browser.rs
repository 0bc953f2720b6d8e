//! Browser sign-in: OpenID Connect's authorization-code flow with PKCE, through the
//! `openidconnect` crate, and the session cookie it ends in ([`super::session`]).
//!
//! - `GET /auth/sign-in?next=/path`: a fresh `state`, `nonce` and PKCE verifier, sealed in a
//!   short-lived cookie, and a redirect to the provider's login page;
//! - `GET /auth/callback?code&state`: `state` must match the cookie's; the code is exchanged with
//!   the PKCE verifier; the ID token's signature, issuer, audience, expiry and `nonce` are checked
//!   by the crate, and the access token is checked like any bearer token ([`super::auth::Verifier`]), so a
//!   session carries exactly the identity (subject, customers, admin) a bearer token gives;
//! - `POST /auth/sign-out`: needs the session's CSRF token; revokes the session here, clears the
//!   cookie, and ends the session at the provider too (RP-initiated logout) when it offers that;
//! - `GET /auth/signed-out`: where the provider sends people back.
//!
//! The crate talks to the provider through the `reqwest` client the bearer check already uses
//! (no second HTTP stack, redirects not followed), so the provider is called at start (discovery)
//! and once per sign-in (the code exchange), never per request.

use super::auth::{Caller, DiscoveryError, MIN_REFRESH};
use super::session::{Purpose, Session, SessionError, Sessions, now, random_token, session_end};
use super::{App, ServeError};
use crate::config::{BrowserSettings, OidcSettings};
use askama::Template;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreIdTokenVerifier, CoreJwsSigningAlgorithm,
    CoreTokenResponse,
};
use openidconnect::{
    AccessTokenHash, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken,
    EndSessionUrl, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, LogoutRequest, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, PostLogoutRedirectUrl,
    ProviderMetadataWithLogout, RedirectUrl, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long a person may take on the provider's login page.
const SIGN_IN_TIME: Duration = Duration::from_secs(600);
/// The largest answer read from the provider.
const MAX_PROVIDER_ANSWER: usize = 1 << 20;

type OidcClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// A sign-in under way: what the callback must find again.
#[derive(Serialize, Deserialize)]
struct Pending {
    state: String,
    nonce: String,
    pkce_verifier: String,
    next: String,
    expires_at: i64,
}

pub struct BrowserSignIn {
    settings: BrowserSettings,
    issuer: IssuerUrl,
    /// Holds the provider's keys as of its last discovery (see [`BrowserSignIn::rediscover`]).
    client: RwLock<(Arc<OidcClient>, Instant)>,
    end_session: Option<EndSessionUrl>,
    http: Http,
    pub sessions: Sessions,
}

/// What the ID token says, once checked.
struct IdClaims {
    subject: String,
    name: Option<String>,
    expires_at: i64,
}

/// The signed-in person, for the page header's sign-out form.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub name: String,
    pub csrf: String,
}

impl From<&Session> for SignedIn {
    fn from(s: &Session) -> Self {
        SignedIn {
            name: s.name.clone(),
            csrf: s.csrf.clone(),
        }
    }
}

impl Session {
    /// The identity the index scopes by: the same as a bearer token's.
    pub fn caller(&self) -> Caller {
        Caller::Signed {
            subject: self.subject.clone(),
            customers: self.customers.clone(),
            admin: self.admin,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

/// The crate's HTTP client: our `reqwest` client. A type of its own, not a closure, so the
/// futures are `Send` for every lifetime (what axum's handlers need).
#[derive(Clone)]
struct Http(reqwest::Client);

impl<'c> openidconnect::AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future =
        Pin<Box<dyn Future<Output = Result<openidconnect::HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        Box::pin(send(self.0.clone(), request))
    }
}

/// One request to the provider for the crate.
async fn send(
    http: reqwest::Client,
    request: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, HttpError> {
    let (parts, body) = request.into_parts();
    let url = parts.uri.to_string();
    let mut response = http
        .request(parts.method, &url)
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(|e| HttpError(format!("cannot reach {url}: {e}")))?;
    let mut answer = openidconnect::http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        answer = answer.header(name, value);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| HttpError(format!("reading {url}: {e}")))?
    {
        if body.len() + chunk.len() > MAX_PROVIDER_ANSWER {
            return Err(HttpError(format!("{url} answered more than 1 MiB")));
        }
        body.extend_from_slice(&chunk);
    }
    answer
        .body(body)
        .map_err(|e| HttpError(format!("{url}: {e}")))
}

impl BrowserSignIn {
    /// Reads the provider's discovery document (with its keys and logout endpoint).
    pub async fn discover(
        oidc: &OidcSettings,
        settings: &BrowserSettings,
        http: reqwest::Client,
    ) -> Result<BrowserSignIn, DiscoveryError> {
        let issuer = IssuerUrl::new(oidc.issuer.as_str().trim_end_matches('/').to_string())
            .map_err(|e| DiscoveryError::new(format!("IMGSTREAM_OIDC_ISSUER: {e}")))?;
        let http = Http(http);
        let (client, end_session) = client(&issuer, settings, &http).await?;
        if settings.session_key.is_none() {
            tracing::warn!(
                "IMGSTREAM_SERVE_SESSION_KEY is unset: session cookies are sealed with a key made at start, so sessions end when this process does and other replicas cannot read them; set it (`openssl rand -base64 32`) to keep them"
            );
        }
        Ok(BrowserSignIn {
            sessions: Sessions::new(settings.session_key.as_ref()),
            settings: settings.clone(),
            issuer,
            client: RwLock::new((Arc::new(client), Instant::now())),
            end_session,
            http,
        })
    }

    fn client(&self) -> Arc<OidcClient> {
        self.client.read().expect("not poisoned").0.clone()
    }

    /// The provider rotated its keys: discover again, at most once per [`MIN_REFRESH`]. True if
    /// the client was renewed.
    async fn rediscover(&self) -> bool {
        if self.client.read().expect("not poisoned").1.elapsed() < MIN_REFRESH {
            return false;
        }
        match client(&self.issuer, &self.settings, &self.http).await {
            Ok((client, _)) => {
                *self.client.write().expect("not poisoned") = (Arc::new(client), Instant::now());
                tracing::info!("read the provider's discovery document and keys again");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the provider's keys again failed");
                self.client.write().expect("not poisoned").1 = Instant::now();
                false
            }
        }
    }

    /// Origins a form may lead to besides ours: the provider's logout page.
    pub fn form_origins(&self) -> Vec<String> {
        self.end_session
            .iter()
            .map(|u| u.url().origin().ascii_serialization())
            .collect()
    }

    fn cookie_name(&self, purpose: Purpose) -> &'static str {
        // `__Host-`: the browser keeps it only if Secure, for this host alone, on path `/`.
        match (purpose, self.settings.secure()) {
            (Purpose::Session, true) => "__Host-imgstream-session",
            (Purpose::Session, false) => "imgstream-session",
            (Purpose::SignIn, true) => "__Host-imgstream-sign-in",
            (Purpose::SignIn, false) => "imgstream-sign-in",
        }
    }

    /// A `Set-Cookie` value: HttpOnly, SameSite=Lax, Secure over HTTPS; `max_age` 0 clears it.
    fn set_cookie(&self, purpose: Purpose, value: &str, max_age: i64) -> HeaderValue {
        let secure = if self.settings.secure() {
            "; Secure"
        } else {
            ""
        };
        HeaderValue::from_str(&format!(
            "{}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
            self.cookie_name(purpose),
            max_age.max(0)
        ))
        .expect("base64url and our names fit a header")
    }

    fn cookie<'h>(&self, headers: &'h HeaderMap, purpose: Purpose) -> Option<&'h str> {
        let name = self.cookie_name(purpose);
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    /// The session of a request's cookie: `None` without one.
    pub fn session(&self, headers: &HeaderMap) -> Option<Result<Session, SessionError>> {
        self.cookie(headers, Purpose::Session)
            .map(|c| self.sessions.check(c))
    }

    /// A signed-out browser asking for a page is sent to sign in, and back here afterwards.
    pub fn to_sign_in(&self, path_and_query: &str, clear_session: bool) -> Response {
        let next = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("next", path_and_query)
            .finish();
        let mut response = Redirect::to(&format!("/auth/sign-in?{next}")).into_response();
        if clear_session {
            response
                .headers_mut()
                .append(header::SET_COOKIE, self.set_cookie(Purpose::Session, "", 0));
        }
        response
    }
}

/// The crate's client from the provider's discovery document, and its logout endpoint.
async fn client(
    issuer: &IssuerUrl,
    settings: &BrowserSettings,
    http: &Http,
) -> Result<(OidcClient, Option<EndSessionUrl>), DiscoveryError> {
    let metadata = ProviderMetadataWithLogout::discover_async(issuer.clone(), http)
        .await
        .map_err(|e| {
            DiscoveryError::new(format!(
                "reading the provider's discovery document for browser sign-in: {}",
                error_chain(&e)
            ))
        })?;
    let end_session = metadata.additional_metadata().end_session_endpoint.clone();
    let redirect = settings
        .public_url
        .join("auth/callback")
        .map_err(|e| DiscoveryError::new(format!("IMGSTREAM_SERVE_PUBLIC_URL: {e}")))?;
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(settings.client_id.clone()),
        settings
            .client_secret
            .as_ref()
            .map(|s| ClientSecret::new(String::from_utf8_lossy(&s.0).into_owned())),
    )
    .set_redirect_uri(RedirectUrl::from_url(redirect));
    Ok((client, end_session))
}

/// The ID token checked by the crate: signature (the provider's asymmetric keys only, as for
/// bearer tokens: never `none`, never an HMAC keyed with the client secret), issuer, audience,
/// expiry, `nonce`, and `at_hash` against the access token (neither was swapped).
fn check_id_token(
    client: &OidcClient,
    id_token: &CoreIdToken,
    nonce: &Nonce,
    tokens: &CoreTokenResponse,
) -> Result<IdClaims, ClaimsVerificationError> {
    let verifier: CoreIdTokenVerifier = client.id_token_verifier().set_allowed_algs([
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
        CoreJwsSigningAlgorithm::RsaSsaPssSha256,
        CoreJwsSigningAlgorithm::RsaSsaPssSha384,
        CoreJwsSigningAlgorithm::RsaSsaPssSha512,
        CoreJwsSigningAlgorithm::EcdsaP256Sha256,
        CoreJwsSigningAlgorithm::EcdsaP384Sha384,
        CoreJwsSigningAlgorithm::EdDsa,
    ]);
    let claims = id_token.claims(&verifier, nonce)?;
    if let Some(expected) = claims.access_token_hash() {
        let alg = id_token
            .signing_alg()
            .map_err(ClaimsVerificationError::SignatureVerification)?;
        let key = id_token
            .signing_key(&verifier)
            .map_err(ClaimsVerificationError::SignatureVerification)?;
        let actual = AccessTokenHash::from_token(tokens.access_token(), alg, key)
            .map_err(|e| ClaimsVerificationError::Other(e.to_string()))?;
        if actual != *expected {
            return Err(ClaimsVerificationError::Other(
                "its at_hash is not the access token's".into(),
            ));
        }
    }
    Ok(IdClaims {
        subject: claims.subject().as_str().to_string(),
        name: claims.preferred_username().map(|n| n.as_str().to_string()),
        expires_at: claims.expiration().timestamp(),
    })
}

/// A path of ours to return to after signing in; anything else (another site, `//host`) is `/`.
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.contains('\\')
                && !p.starts_with("/auth/")
                && p.len() <= 2000 =>
        {
            p.to_string()
        }
        _ => "/".to_string(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn browser(app: &App) -> Result<&BrowserSignIn, ServeError> {
    app.browser
        .as_ref()
        .ok_or_else(|| ServeError::NotFound("browser sign-in is off".into()))
}

/// `GET /auth/sign-in`: to the provider's login page.
pub async fn sign_in(
    State(app): State<Arc<App>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, super::pages::PageError> {
    let browser = browser(&app)?;
    let pairs = super::query_pairs(raw.as_deref());
    let next = local_path(
        pairs
            .iter()
            .find(|(k, _)| k == "next")
            .map(|(_, v)| v.as_str()),
    );
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state, nonce) = browser
        .client()
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .set_pkce_challenge(challenge)
        .url();
    let pending = Pending {
        state: state.secret().clone(),
        nonce: nonce.secret().clone(),
        pkce_verifier: verifier.secret().clone(),
        next,
        expires_at: now() + SIGN_IN_TIME.as_secs() as i64,
    };
    let sealed = browser.sessions.seal(Purpose::SignIn, &pending);
    let mut response = Redirect::to(url.as_str()).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        browser.set_cookie(Purpose::SignIn, &sealed, SIGN_IN_TIME.as_secs() as i64),
    );
    Ok(response)
}

/// Equal secrets, compared in constant time.
fn same(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

/// `GET /auth/callback`: the provider sends the browser back with a code.
pub async fn callback(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, super::pages::PageError> {
    let browser = browser(&app)?;
    let pairs = super::query_pairs(raw.as_deref());
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let refuse = |reason: String| {
        tracing::warn!(%reason, "a browser sign-in failed");
        ServeError::BadRequest(format!("sign-in failed: {reason}; start again from /"))
    };
    if let Some(error) = param("error") {
        let error: String = error
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(80)
            .collect();
        return Err(refuse(format!("the provider answered {error}")).into());
    }
    let pending: Pending = browser
        .cookie(&headers, Purpose::SignIn)
        .and_then(|c| browser.sessions.open(Purpose::SignIn, c))
        .ok_or_else(|| {
            refuse(
                "no sign-in under way in this browser (its cookie is missing or not ours)".into(),
            )
        })?;
    if now() >= pending.expires_at {
        return Err(refuse("the sign-in took longer than 10 minutes".into()).into());
    }
    if !param("state").is_some_and(|s| same(s, &pending.state)) {
        return Err(refuse("the state does not match this browser's sign-in".into()).into());
    }
    let code = param("code").ok_or_else(|| refuse("the provider sent no code".into()))?;
    let client = browser.client();
    let tokens: CoreTokenResponse = client
        .exchange_code(AuthorizationCode::new(code.to_string()))
        .map_err(|e| ServeError::Internal(format!("the provider has no token endpoint: {e}")))?
        .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()))
        .request_async(&browser.http)
        .await
        .map_err(|e| refuse(format!("exchanging the code: {}", error_chain(&e))))?;
    let id_token = tokens
        .id_token()
        .ok_or_else(|| refuse("the provider sent no ID token".into()))?;
    let nonce = Nonce::new(pending.nonce.clone());
    let mut checked = check_id_token(&client, id_token, &nonce, &tokens);
    // Signed with a key we have not seen: the provider may have rotated its keys.
    if matches!(
        checked,
        Err(ClaimsVerificationError::SignatureVerification(_))
    ) && browser.rediscover().await
    {
        checked = check_id_token(&browser.client(), id_token, &nonce, &tokens);
    }
    let claims = checked.map_err(|e| refuse(format!("the ID token: {}", error_chain(&e))))?;
    // The identity comes from the access token, checked as a bearer token is: the same
    // audience, customers and roles, whichever way someone arrives.
    let caller = app
        .verifier
        .as_ref()
        .ok_or_else(|| ServeError::Internal("browser sign-in without a token verifier".into()))?
        .verify(tokens.access_token().secret())
        .await
        .map_err(|e| refuse(format!("the access token: {e}")))?;
    let Caller::Signed {
        subject,
        customers,
        admin,
    } = caller
    else {
        return Err(ServeError::Internal("a verified token without a subject".into()).into());
    };
    if subject != claims.subject {
        return Err(
            refuse("the ID token and the access token name different people".into()).into(),
        );
    }
    let name = claims.name.unwrap_or_else(|| subject.clone());
    let mut session = Session {
        id: random_token(16),
        subject,
        name,
        customers,
        admin,
        issued_at: now(),
        expires_at: session_end(browser.settings.session_max_age, claims.expires_at),
        csrf: random_token(32),
        id_token: Some(id_token.to_string()),
    };
    let mut sealed = browser.sessions.seal(Purpose::Session, &session);
    if sealed.len() > 3800 {
        // Too big for a browser to keep with its ID token (many customers): without it, the
        // provider asks the person to confirm signing out.
        session.id_token = None;
        sealed = browser.sessions.seal(Purpose::Session, &session);
    }
    tracing::info!(
        target: "imgstream::audit",
        event = "signed-in",
        subject = session.subject,
        customers = session.customers.len(),
        admin = session.admin,
        expires_in_secs = session.expires_at - session.issued_at,
        "a browser signed in"
    );
    let mut response = Redirect::to(&pending.next).into_response();
    let h = response.headers_mut();
    h.append(
        header::SET_COOKIE,
        browser.set_cookie(Purpose::Session, &sealed, session.expires_at - now()),
    );
    h.append(
        header::SET_COOKIE,
        browser.set_cookie(Purpose::SignIn, "", 0),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `POST /auth/sign-out` with the session's CSRF token in the form.
pub async fn sign_out(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: String,
) -> Result<Response, super::pages::PageError> {
    let browser = browser(&app)?;
    let session = match browser.session(&headers) {
        Some(Ok(session)) => session,
        // Signed out already, or never signed in: nothing to end here.
        Some(Err(_)) | None => {
            let mut response = Redirect::to("/auth/signed-out").into_response();
            response.headers_mut().append(
                header::SET_COOKIE,
                browser.set_cookie(Purpose::Session, "", 0),
            );
            return Ok(response);
        }
    };
    let form = super::query_pairs(Some(&body));
    let token = form.iter().find(|(k, _)| k == "csrf").map(|(_, v)| v);
    if !token.is_some_and(|t| same(t, &session.csrf)) {
        tracing::warn!(
            subject = session.subject,
            "refused a sign-out without the session's CSRF token"
        );
        return Err(ServeError::Forbidden(
            "signing out needs the form of one of this server's pages (its CSRF token was missing or wrong)".into(),
        )
        .into());
    }
    browser.sessions.revoke(&session);
    tracing::info!(
        target: "imgstream::audit",
        event = "signed-out",
        subject = session.subject,
        "a browser signed out"
    );
    let back = browser
        .settings
        .public_url
        .join("auth/signed-out")
        .expect("a fixed path joins");
    let to = match &browser.end_session {
        Some(end) => {
            let mut logout = LogoutRequest::from(end.clone())
                .set_client_id(ClientId::new(browser.settings.client_id.clone()))
                .set_post_logout_redirect_uri(PostLogoutRedirectUrl::from_url(back));
            if let Some(token) = session
                .id_token
                .as_deref()
                .and_then(|t| t.parse::<CoreIdToken>().ok())
            {
                logout = logout.set_id_token_hint(&token);
            }
            logout.http_get_url()
        }
        None => back,
    };
    let mut response = Redirect::to(to.as_str()).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        browser.set_cookie(Purpose::Session, "", 0),
    );
    Ok(response)
}

#[derive(Template)]
#[template(path = "signed_out.html")]
struct SignedOutPage {
    title: &'static str,
    signed_in: Option<SignedIn>,
}

/// `GET /auth/signed-out`.
pub async fn signed_out() -> Response {
    match (SignedOutPage {
        title: "Signed out",
        signed_in: None,
    })
    .render()
    {
        Ok(html) => Html(html).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_returned_to() {
        assert_eq!(local_path(Some("/images/x?y=1")), "/images/x?y=1");
        for bad in [
            None,
            Some("https://evil.example/"),
            Some("//evil.example/"),
            Some("/\\evil.example"),
            Some("/auth/sign-out"),
            Some(""),
        ] {
            assert_eq!(local_path(bad), "/", "{bad:?}");
        }
    }

    #[test]
    fn a_url_of_the_issuer_makes_an_origin() {
        let u = url::Url::parse("http://127.0.0.1:8180/realms/x/logout").unwrap();
        assert_eq!(u.origin().ascii_serialization(), "http://127.0.0.1:8180");
    }
}

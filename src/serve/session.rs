//! Browser sessions: who signed in, sealed in a cookie, and the sessions signed out since.
//!
//! The cookie holds the session itself (subject, customers, admin, its end, the sign-out form's
//! CSRF token and the ID token for the provider's logout), sealed with AES-256-GCM under
//! `IMGSTREAM_SERVE_SESSION_KEY`: a browser can neither read nor change it, and any replica with
//! the same key can read it, so sessions survive a restart and a load balancer without sticky
//! sessions. Each seal names its purpose (session or sign-in) as associated data, so one cookie
//! never passes for the other.
//!
//! Signing out must end the session on the server too, or a copied cookie would open the
//! gallery until it expires. A sealed cookie cannot be recalled, so the server keeps a
//! revocation record: the ids of sessions signed out, each only until the session would have
//! ended anyway, so the record holds at most the sign-outs of one session lifetime. It is also
//! bounded in count ([`MAX_REVOKED`]); when full, the oldest entry leaves and every session begun
//! at or before it is refused from then on (a watermark), so the bound can sign people out but
//! never lets a signed-out cookie back in. The record is in memory: a restart with a configured
//! key forgets it (those cookies work again until their own end, at most
//! `IMGSTREAM_SERVE_SESSION_MAX_AGE_SECS` and the ID token's life), and each replica keeps its own.

use crate::config::Secret;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Signed-out sessions remembered at most (about 100 bytes each).
pub const MAX_REVOKED: usize = 100_000;
/// A cookie longer than this is not ours (browsers keep at most 4096 bytes per cookie).
const MAX_COOKIE_LEN: usize = 4096;

/// One signed-in person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Random; names the session in the revocation record.
    pub id: String,
    pub subject: String,
    /// What the page header shows (`preferred_username`, or the subject).
    pub name: String,
    pub customers: Vec<String>,
    pub admin: bool,
    /// Unix seconds.
    pub issued_at: i64,
    pub expires_at: i64,
    /// The sign-out form's CSRF token: bound to this session, unknown to other sites.
    pub csrf: String,
    /// The ID token, sent back to the provider as `id_token_hint` when signing out.
    pub id_token: Option<String>,
}

/// Why a session cookie was refused (one line for the log; never the cookie).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the session cookie does not verify (changed, or sealed with another key)")]
    Tampered,
    #[error("the session has expired")]
    Expired,
    #[error("the session was signed out")]
    SignedOut,
}

/// What the seal is for, bound into it as associated data.
#[derive(Clone, Copy)]
pub enum Purpose {
    Session,
    SignIn,
}

impl Purpose {
    fn aad(self) -> &'static [u8] {
        match self {
            Purpose::Session => b"imgstream session v1",
            Purpose::SignIn => b"imgstream sign-in v1",
        }
    }
}

#[derive(Default)]
struct Revoked {
    /// session id → (issued at, expires at)
    by_id: HashMap<String, (i64, i64)>,
    /// Sessions issued at or before this are refused (see the module's docs).
    issued_until: Option<i64>,
}

pub struct Sessions {
    key: LessSafeKey,
    revoked: Mutex<Revoked>,
    max_revoked: usize,
}

/// Unix seconds now.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `n` random bytes, base64url.
pub fn random_token(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system's random source works");
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Sessions {
    /// Seals with `key`, or with one made now when unset (the caller warns about that).
    pub fn new(key: Option<&Secret>) -> Sessions {
        let bytes = match key {
            Some(Secret(bytes)) => bytes.clone(),
            None => {
                let mut bytes = vec![0u8; 32];
                aws_lc_rs::rand::fill(&mut bytes).expect("the system's random source works");
                bytes
            }
        };
        let key = UnboundKey::new(&AES_256_GCM, &bytes).expect("the settings hold 32-byte keys");
        Sessions {
            key: LessSafeKey::new(key),
            revoked: Mutex::new(Revoked::default()),
            max_revoked: MAX_REVOKED,
        }
    }

    /// `value` encrypted and authenticated: base64url(nonce ‖ ciphertext ‖ tag).
    pub fn seal(&self, purpose: Purpose, value: &impl Serialize) -> String {
        let mut data = serde_json::to_vec(value).expect("sessions serialize");
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("the system's random source works");
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.aad()),
                &mut data,
            )
            .expect("sealing a small value cannot fail");
        let mut out = nonce.to_vec();
        out.extend(data);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// What [`Sessions::seal`] sealed for `purpose`, if the text is exactly that.
    pub fn open<T: DeserializeOwned>(&self, purpose: Purpose, text: &str) -> Option<T> {
        if text.len() > MAX_COOKIE_LEN {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let mut sealed = sealed.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(purpose.aad()), &mut sealed)
            .ok()?;
        serde_json::from_slice(plain).ok()
    }

    /// The session a cookie holds, if it is ours, current and not signed out.
    pub fn check(&self, cookie: &str) -> Result<Session, SessionError> {
        let session: Session = self
            .open(Purpose::Session, cookie)
            .ok_or(SessionError::Tampered)?;
        if now() >= session.expires_at {
            return Err(SessionError::Expired);
        }
        let revoked = self.revoked.lock().expect("not poisoned");
        if revoked.by_id.contains_key(&session.id)
            || revoked.issued_until.is_some_and(|t| session.issued_at <= t)
        {
            return Err(SessionError::SignedOut);
        }
        Ok(session)
    }

    /// Ends `session` on this server: its cookie opens nothing from now on.
    pub fn revoke(&self, session: &Session) {
        let now = now();
        let mut revoked = self.revoked.lock().expect("not poisoned");
        // Sessions that ended anyway need no record.
        revoked.by_id.retain(|_, (_, expires)| *expires > now);
        while revoked.by_id.len() >= self.max_revoked {
            let Some((oldest, issued)) = revoked
                .by_id
                .iter()
                .min_by_key(|(_, (issued, _))| *issued)
                .map(|(id, (issued, _))| (id.clone(), *issued))
            else {
                break;
            };
            revoked.by_id.remove(&oldest);
            revoked.issued_until = Some(revoked.issued_until.map_or(issued, |t| t.max(issued)));
            tracing::warn!(
                "the record of signed-out sessions is full ({}); sessions begun before {} must sign in again",
                self.max_revoked,
                chrono::DateTime::from_timestamp(issued, 0).unwrap_or_default()
            );
        }
        revoked
            .by_id
            .insert(session.id.clone(), (session.issued_at, session.expires_at));
    }

    /// Signed-out sessions remembered now.
    pub fn revoked_count(&self) -> usize {
        self.revoked.lock().expect("not poisoned").by_id.len()
    }
}

/// A session's end: `max_age` from now, or the ID token's expiry if sooner.
pub fn session_end(max_age: Duration, id_token_expiry: i64) -> i64 {
    (now() + max_age.as_secs() as i64).min(id_token_expiry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, issued_at: i64) -> Session {
        Session {
            id: id.into(),
            subject: "sub".into(),
            name: "viewer".into(),
            customers: vec!["a".into()],
            admin: false,
            issued_at,
            expires_at: now() + 600,
            csrf: random_token(32),
            id_token: None,
        }
    }

    #[test]
    fn a_sealed_session_opens_only_unchanged_with_its_key_and_purpose() {
        let sessions = Sessions::new(None);
        let s = session("1", now());
        let cookie = sessions.seal(Purpose::Session, &s);
        assert_eq!(sessions.check(&cookie), Ok(s.clone()));
        // Any changed character, anywhere, is refused.
        for i in [0, cookie.len() / 2, cookie.len() - 1] {
            let mut bytes = cookie.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).unwrap();
            assert_eq!(sessions.check(&changed), Err(SessionError::Tampered));
        }
        assert_eq!(
            Sessions::new(None).check(&cookie),
            Err(SessionError::Tampered),
            "another key"
        );
        let sign_in = sessions.seal(Purpose::SignIn, &s);
        assert_eq!(sessions.check(&sign_in), Err(SessionError::Tampered));
        assert_eq!(sessions.check(""), Err(SessionError::Tampered));
        assert_eq!(
            sessions.check(&"A".repeat(5000)),
            Err(SessionError::Tampered)
        );
        let key = Secret(vec![7; 32]);
        let a = Sessions::new(Some(&key));
        let b = Sessions::new(Some(&key));
        assert_eq!(b.check(&a.seal(Purpose::Session, &s)), Ok(s));
    }

    #[test]
    fn an_expired_session_is_refused() {
        let sessions = Sessions::new(None);
        let mut s = session("1", now() - 100);
        s.expires_at = now() - 1;
        let cookie = sessions.seal(Purpose::Session, &s);
        assert_eq!(sessions.check(&cookie), Err(SessionError::Expired));
    }

    #[test]
    fn a_signed_out_session_stays_out_even_when_the_record_overflows() {
        let mut sessions = Sessions::new(None);
        sessions.max_revoked = 3;
        let t = now() - 1000;
        let all: Vec<Session> = (0..5).map(|i| session(&i.to_string(), t + i)).collect();
        let cookies: Vec<String> = all
            .iter()
            .map(|s| sessions.seal(Purpose::Session, s))
            .collect();
        let later = session("later", t + 100);
        let later_cookie = sessions.seal(Purpose::Session, &later);
        for s in &all {
            sessions.revoke(s);
            assert!(sessions.revoked_count() <= 3);
        }
        for c in &cookies {
            assert_eq!(sessions.check(c), Err(SessionError::SignedOut));
        }
        // Begun after every evicted entry: still signed in.
        assert_eq!(sessions.check(&later_cookie), Ok(later));
    }

    #[test]
    fn a_session_ends_with_its_id_token_if_that_comes_first() {
        let t = now();
        assert_eq!(session_end(Duration::from_secs(3600), t + 300), t + 300);
        let end = session_end(Duration::from_secs(60), t + 300);
        assert!((t + 60..=t + 61).contains(&end));
    }
}

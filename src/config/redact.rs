//! Credentials can ride inside a URL setting (`https://user:secret@registry`, a store endpoint
//! behind an authenticating proxy). Every URL passes through here before it reaches a message:
//! an error's text, a log line, `setup --check` or `status` output. Library errors quote the
//! URL they were sent to (reqwest, object_store), so their text is passed through here too.

use std::borrow::Cow;

/// What replaces a secret in a message.
pub const MASK: &str = "***";

/// `url` with its userinfo masked (see [`redact`]), for a message that names a URL setting.
pub fn redact_url(url: &str) -> String {
    redact(url).into_owned()
}

/// `text` with the userinfo of every URL in it masked: `scheme://user:secret@host` becomes
/// `scheme://user:***@host`, and a lone `scheme://token@host` (a user name is as often a token)
/// becomes `scheme://***@host`. Text without a URL carrying userinfo comes back unchanged and
/// unallocated, so every log line can afford the pass.
pub fn redact(text: &str) -> Cow<'_, str> {
    match redact_urls(text) {
        Cow::Borrowed(text) => redact_authorities(text),
        Cow::Owned(text) => Cow::Owned(redact_authorities(&text).into_owned()),
    }
}

/// Userinfo in running text without a scheme in front: hyper's debug lines name a pooled
/// connection by its authority, `("https", user:secret@host:9000)`. A `name:password@` there
/// has its password masked; an `@` without a `:` before it (an e-mail address) is left alone.
fn redact_authorities(text: &str) -> Cow<'_, str> {
    let userinfo_char = |c: char| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                '-' | '.' | '_' | '~' | '%' | '!' | '$' | '&' | '*' | '+' | '=' | ':'
            )
    };
    let mut out = String::new();
    let mut done = 0;
    for (at, _) in text.match_indices('@') {
        let start = text[..at]
            .rfind(|c: char| !userinfo_char(c))
            .map_or(0, |i| {
                i + text[i..].chars().next().map_or(1, char::len_utf8)
            });
        let Some(colon) = text[start..at].find(':').map(|i| start + i) else {
            continue;
        };
        if colon + 1 >= at || text[colon + 1..at] == *MASK || colon < done {
            continue;
        }
        out.push_str(&text[done..colon + 1]);
        out.push_str(MASK);
        done = at;
    }
    if done == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[done..]);
    Cow::Owned(out)
}

fn redact_urls(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    // Everything before `done` has been copied to `out` (or needs no change).
    let mut done = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("://") {
        let authority_start = search + found + 3;
        // The authority ends where the path, query or fragment starts; in running text, at
        // whitespace or a quote too. A URL parser takes the last `@` before that end, so a
        // password holding an unencoded `@` is masked whole.
        let authority_len = text[authority_start..]
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '\\' | '"' | '\'' | '`') || c.is_whitespace()
            })
            .unwrap_or(text.len() - authority_start);
        let authority = &text[authority_start..authority_start + authority_len];
        search = authority_start + authority_len;
        let Some(at) = authority.rfind('@') else {
            continue;
        };
        let userinfo = &authority[..at];
        let shown = match userinfo.split_once(':') {
            Some((user, _)) if !user.is_empty() => format!("{user}:{MASK}"),
            _ => MASK.to_string(),
        };
        out.push_str(&text[done..authority_start]);
        out.push_str(&shown);
        done = authority_start + at;
    }
    if done == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[done..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_of_a_url_is_masked_and_the_rest_kept() {
        assert_eq!(
            redact_url("https://reader:s3cret@registry.example.com:8081/apis/ccompat/v7"),
            "https://reader:***@registry.example.com:8081/apis/ccompat/v7"
        );
        assert_eq!(
            redact_url("http://tok3n@minio:9000"),
            "http://***@minio:9000"
        );
        assert_eq!(
            redact_url("http://:s3cret@minio:9000"),
            "http://***@minio:9000"
        );
        // Unencoded `@` in a password: a URL parser splits at the last one, so must we.
        assert_eq!(redact_url("http://u:p@ss@h/x"), "http://u:***@h/x");
    }

    #[test]
    fn every_url_in_running_text_is_masked() {
        let text = "error sending request for url (http://u:one@a:1/x): connect to \
                    https://v:two@b/y failed; see http://c/z";
        let shown = redact(text);
        assert_eq!(
            shown,
            "error sending request for url (http://u:***@a:1/x): connect to \
             https://v:***@b/y failed; see http://c/z"
        );
        assert_eq!(redact("\"http://u:three@a\""), "\"http://u:***@a\"");
        // hyper names pooled connections by their authority, without a scheme.
        assert_eq!(
            redact("pooling idle connection for (\"https\", proxy:four@127.0.0.1:9010)"),
            "pooling idle connection for (\"https\", proxy:***@127.0.0.1:9010)"
        );
    }

    #[test]
    fn text_without_credentials_is_left_alone() {
        for text in [
            "",
            "plain words",
            "http://127.0.0.1:9000/bucket/images/ab/x",
            "mail admin@example.com about http://host/",
            "http://host said: contact admin@example.com",
            "ends with ://",
        ] {
            assert!(
                matches!(redact(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
    }
}

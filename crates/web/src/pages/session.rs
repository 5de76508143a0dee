//! Who is signed in: the session cookie, the login steps' cookies and the CSRF tokens of forms.
//!
//! A cookie's value is 32 random bytes; the store keeps only its SHA-256, so a copy of the
//! store opens no session. A CSRF token is a hash of the cookie value it belongs to: only a
//! page that could read the (HttpOnly) cookie, which is to say one we served, can know it, and
//! it needs no state of its own, so every node sharing the store accepts it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::HeaderMap;
use hyper::header::{self, HeaderValue};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The signed-in session. `__Host-` makes browsers insist on Secure, Path=/ and no Domain.
pub const SESSION_COOKIE: &str = "__Host-sealmail-session";
/// A login whose password was right and whose second factor is still to come.
pub const PENDING_COOKIE: &str = "__Host-sealmail-pending";
/// Given with the login form, before any login, so that the form has a CSRF token too.
pub const LOGIN_COOKIE: &str = "__Host-sealmail-login";

/// A session ends after this long without a request...
pub const IDLE_SECS: i64 = 30 * 60;
/// ...and this long after its login, whatever happens.
pub const ABSOLUTE_SECS: i64 = 12 * 3600;
/// Time to type the second factor after the password.
pub const PENDING_SECS: i64 = 5 * 60;
/// The `credential` of a stored session that is only half logged in (password, no code yet).
pub const PENDING_CREDENTIAL: &str = sealmail_store::WEB_SESSION_PENDING;
/// A cookie value is 32 bytes, 43 characters of base64url; anything else is not ours.
const COOKIE_VALUE_LEN: usize = 43;

/// A new random cookie value.
pub fn new_cookie_value() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

/// What the store keeps of a cookie value.
pub fn cookie_hash(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// The CSRF token of forms shown with the cookie `value` (one label per cookie kind, so a
/// login form's token is no signed-in form's).
pub fn csrf_token(label: &str, value: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"sealmail csrf\0");
    hash.update(label.as_bytes());
    hash.update(b"\0");
    hash.update(value.as_bytes());
    URL_SAFE_NO_PAD.encode(hash.finalize())
}

/// Whether `given` is the CSRF token for the cookie `value`, compared in constant time.
pub fn csrf_matches(label: &str, value: &str, given: &str) -> bool {
    let expected = csrf_token(label, value);
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

/// The value of cookie `name` in the request, when it has the shape of ours.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
        .filter(|value| {
            value.len() == COOKIE_VALUE_LEN
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A `Set-Cookie` value for a cookie that lives at most `max_age` seconds (the browser's
/// session otherwise) and is never sent to another site, nor readable by scripts.
pub fn set_cookie(name: &str, value: &str, max_age: i64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{name}={value}; Max-Age={max_age}; Path=/; Secure; HttpOnly; SameSite=Strict"
    ))
    .ok()
}

/// A `Set-Cookie` value that removes the cookie.
pub fn clear_cookie(name: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Strict"
    ))
    .unwrap_or(HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_values_are_random_and_shaped() {
        let (Some(a), Some(b)) = (new_cookie_value(), new_cookie_value()) else {
            panic!("no randomness");
        };
        assert_ne!(a, b);
        assert_eq!(a.len(), COOKIE_VALUE_LEN);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {SESSION_COOKIE}={a}; x=y"))
                .unwrap_or(HeaderValue::from_static("")),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE).as_deref(), Some(a.as_str()));
        assert_eq!(cookie(&headers, PENDING_COOKIE), None);
        let mut forged = HeaderMap::new();
        forged.insert(
            header::COOKIE,
            HeaderValue::from_static("__Host-sealmail-session=short"),
        );
        assert_eq!(
            cookie(&forged, SESSION_COOKIE),
            None,
            "a value not shaped like ours is ignored"
        );
    }

    #[test]
    fn csrf_tokens_belong_to_their_cookie_and_kind() {
        let token = csrf_token("session", "value-one");
        assert!(csrf_matches("session", "value-one", &token));
        assert!(!csrf_matches("session", "value-two", &token));
        assert!(!csrf_matches("login", "value-one", &token));
        assert!(!csrf_matches("session", "value-one", ""));
        assert_ne!(cookie_hash("value-one"), cookie_hash("value-two"));
    }

    #[test]
    fn cookies_are_host_only_secure_httponly_strict() {
        let Some(value) = set_cookie(SESSION_COOKIE, "abc", IDLE_SECS) else {
            panic!("no header");
        };
        let text = value.to_str().unwrap_or("");
        for part in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(text.contains(part), "{text}");
        }
        assert!(!text.contains("Domain"), "{text}");
    }
}

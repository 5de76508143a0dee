//! The answers to the challenges of orders in progress, shared with the listeners: HTTP-01
//! key authorizations by token (asked by the HTTP listener at
//! `/.well-known/acme-challenge/TOKEN`), and TLS-ALPN-01 certificates put into the
//! [`CertResolver`] by name. Answers live only while their order runs ([`ChallengeGuard`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sealmail_tls::CertResolver;

use crate::AcmeError;

/// At most this many HTTP-01 answers are held at once.
pub const MAX_HTTP_ANSWERS: usize = 256;
/// ACME tokens are base64url of at least 128 bits (RFC 8555 section 8.3); longer than this is
/// not a token.
pub const MAX_TOKEN_LEN: usize = 256;

/// Shared between the ACME client and the listeners that answer its challenges.
#[derive(Debug)]
pub struct Challenges {
    http: Mutex<HashMap<String, String>>,
    resolver: Option<Arc<CertResolver>>,
}

/// The path prefix of HTTP-01 requests (RFC 8555 section 8.3).
pub const HTTP_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Whether `token` is a plausible ACME token: base64url characters only, bounded length.
pub fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Challenges {
    /// `resolver` is the one the TLS listeners use; without it TLS-ALPN-01 cannot be answered.
    pub fn new(resolver: Option<Arc<CertResolver>>) -> Arc<Challenges> {
        Arc::new(Challenges {
            http: Mutex::new(HashMap::new()),
            resolver,
        })
    }

    /// The body to answer `GET /.well-known/acme-challenge/{token}` with, if an order in
    /// progress has that token; `None` (answer 404) otherwise or for a malformed token.
    pub fn http_answer(&self, token: &str) -> Option<String> {
        if !valid_token(token) {
            return None;
        }
        let map = self.http.lock().unwrap_or_else(|e| e.into_inner());
        map.get(token).cloned()
    }

    /// The answer for a request path (`/.well-known/acme-challenge/{token}`, no query);
    /// `None` for any other path or an unknown token (answer 404).
    pub fn http_answer_for_path(&self, path: &str) -> Option<String> {
        self.http_answer(path.strip_prefix(HTTP_CHALLENGE_PREFIX)?)
    }

    /// How many HTTP-01 answers are held (tests and status).
    pub fn http_len(&self) -> usize {
        self.http.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub(crate) fn add_http(&self, token: &str, key_authorization: &str) -> Result<(), AcmeError> {
        if !valid_token(token) {
            return Err(AcmeError::Protocol(format!(
                "the ACME server sent a malformed challenge token ({} bytes)",
                token.len()
            )));
        }
        let mut map = self.http.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(token) && map.len() >= MAX_HTTP_ANSWERS {
            return Err(AcmeError::Protocol(format!(
                "more than {MAX_HTTP_ANSWERS} HTTP-01 challenges at once"
            )));
        }
        map.insert(token.to_string(), key_authorization.to_string());
        Ok(())
    }

    pub(crate) fn remove_http(&self, token: &str) {
        let mut map = self.http.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(token);
    }

    pub(crate) fn add_alpn(&self, name: &str, key_authorization_sha256: &[u8; 32]) -> Result<(), AcmeError> {
        let Some(resolver) = &self.resolver else {
            return Err(AcmeError::Config(
                "TLS-ALPN-01 needs the TLS listeners' certificate resolver; none was given".into(),
            ));
        };
        let key = sealmail_tls::alpn_challenge_key(name, key_authorization_sha256)
            .map_err(|e| AcmeError::Key(e.to_string()))?;
        if !resolver.set_alpn_challenge(name, key) {
            return Err(AcmeError::Protocol(
                "too many TLS-ALPN-01 challenges at once".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn remove_alpn(&self, name: &str) {
        if let Some(resolver) = &self.resolver {
            resolver.clear_alpn_challenge(name);
        }
    }
}

/// Removes the answers of one order when the order ends, however it ends.
pub(crate) struct ChallengeGuard<'a> {
    challenges: &'a Challenges,
    http_tokens: Vec<String>,
    alpn_names: Vec<String>,
}

impl<'a> ChallengeGuard<'a> {
    pub(crate) fn new(challenges: &'a Challenges) -> Self {
        ChallengeGuard {
            challenges,
            http_tokens: Vec::new(),
            alpn_names: Vec::new(),
        }
    }

    pub(crate) fn http(&mut self, token: &str, key_authorization: &str) -> Result<(), AcmeError> {
        self.challenges.add_http(token, key_authorization)?;
        self.http_tokens.push(token.to_string());
        Ok(())
    }

    pub(crate) fn alpn(&mut self, name: &str, digest: &[u8; 32]) -> Result<(), AcmeError> {
        self.challenges.add_alpn(name, digest)?;
        self.alpn_names.push(name.to_string());
        Ok(())
    }
}

impl Drop for ChallengeGuard<'_> {
    fn drop(&mut self) {
        for token in &self.http_tokens {
            self.challenges.remove_http(token);
        }
        for name in &self.alpn_names {
            self.challenges.remove_alpn(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_answers_end_with_their_order() -> Result<(), AcmeError> {
        assert!(valid_token("abc-DEF_123"));
        assert!(!valid_token(""));
        assert!(!valid_token("../etc/passwd"));
        assert!(!valid_token("a=b"));
        assert!(!valid_token(&"a".repeat(MAX_TOKEN_LEN + 1)));
        let challenges = Challenges::new(None);
        {
            let mut guard = ChallengeGuard::new(&challenges);
            guard.http("tok_1", "tok_1.thumb")?;
            assert_eq!(challenges.http_answer("tok_1").as_deref(), Some("tok_1.thumb"));
            assert_eq!(challenges.http_answer("tok_2"), None);
            assert_eq!(challenges.http_answer("tok/1"), None);
            assert_eq!(
                challenges
                    .http_answer_for_path("/.well-known/acme-challenge/tok_1")
                    .as_deref(),
                Some("tok_1.thumb")
            );
            assert_eq!(challenges.http_answer_for_path("/tok_1"), None);
            assert_eq!(
                challenges.http_answer_for_path("/.well-known/acme-challenge/tok_1?x"),
                None
            );
            assert!(guard.alpn("mail.a.test", &[0; 32]).is_err(), "no resolver");
        }
        assert_eq!(challenges.http_answer("tok_1"), None);
        assert_eq!(challenges.http_len(), 0);
        for n in 0..MAX_HTTP_ANSWERS {
            challenges.add_http(&format!("t{n}"), "x")?;
        }
        assert!(challenges.add_http("one_more", "x").is_err());
        Ok(())
    }
}

//! Proofs that a security condition holds, as values: code that takes one cannot be reached
//! without it. Every layer may take them (a session, the guard, the store); only the place
//! where the condition is established makes them, and `tests/proof_makers.rs` holds each
//! maker to its crate (`net` for [`TlsActive`], `identity` for [`Authenticated`]): Rust cannot
//! restrict a public constructor to one other crate, so a test does.

use crate::{AccountId, EmailAddress};

/// Proof that a connection runs over TLS, with what was negotiated. Made from a rustls session
/// whose handshake is complete, so code that takes `&TlsActive` (password authentication, for
/// one) cannot be reached in plaintext.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TlsActive {
    pub version: &'static str,
    pub cipher: &'static str,
    pub server_name: Option<String>,
}

impl TlsActive {
    /// `None` while the handshake is still running. Only `net` calls this, when its handshake
    /// has completed.
    pub fn from_completed_handshake(session: &rustls::ServerConnection) -> Option<TlsActive> {
        if session.is_handshaking() {
            return None;
        }
        Some(TlsActive {
            version: version_name(session.protocol_version()?),
            cipher: suite_name(session.negotiated_cipher_suite()?),
            server_name: session.server_name().map(str::to_string),
        })
    }
}

/// "TLSv1.3" / "TLSv1.2", as Postfix writes it in Received headers and logs.
pub fn version_name(version: rustls::ProtocolVersion) -> &'static str {
    match version {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "TLS(other)",
    }
}

/// The IANA name of a negotiated suite, e.g. "TLS13_AES_256_GCM_SHA384".
pub fn suite_name(suite: rustls::SupportedCipherSuite) -> &'static str {
    suite.suite().as_str().unwrap_or("unknown")
}

/// An account as the store keeps it. The password hash travels with it so that a login can
/// be seen to be revoked when the hash changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub address: EmailAddress,
    pub password_hash: String,
}

/// Proof that a session has authenticated as `account`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Authenticated {
    pub account: Account,
}

impl Authenticated {
    /// Only `identity` calls this, after it has verified the account's credentials.
    pub fn from_verified_credentials(account: Account) -> Authenticated {
        Authenticated { account }
    }
}

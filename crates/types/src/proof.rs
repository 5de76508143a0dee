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
    /// The certificate the client presented, which the listener's verifier accepted.
    pub client_certificate: Option<ClientCertificate>,
    /// What SCRAM-PLUS binds its exchange to (RFC 5056).
    pub channel_bindings: ChannelBindingData,
}

/// A client's certificate as the handshake accepted it (the leaf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// Lower-case hex SHA-256 of the DER encoding.
    pub fingerprint: String,
    /// Its rfc822Name subject alternative names and subject emailAddress, as written.
    pub emails: Vec<String>,
    /// Unix seconds.
    pub not_after: i64,
}

/// Channel bindings of one TLS session.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ChannelBindingData {
    /// RFC 9266 `tls-exporter`: 32 octets exported with the label "EXPORTER-Channel-Binding".
    /// Only for TLS 1.3: with TLS 1.2 it is safe only with the extended master secret, which
    /// rustls does not report.
    pub tls_exporter: Option<Vec<u8>>,
    /// RFC 5929 `tls-server-end-point`: the hash of the certificate this server presented.
    pub tls_server_end_point: Option<Vec<u8>>,
}

impl std::fmt::Debug for ChannelBindingData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelBindingData")
            .field("tls_exporter", &self.tls_exporter.is_some())
            .field("tls_server_end_point", &self.tls_server_end_point.is_some())
            .finish()
    }
}

/// The label of RFC 9266 section 2.
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

impl TlsActive {
    /// `None` while the handshake is still running. Only `net` calls this, when its handshake
    /// has completed; it passes the hash of the certificate it presented (`tls-server-end-point`)
    /// and the facts of the client's certificate, if one was accepted.
    pub fn from_completed_handshake(
        session: &rustls::ServerConnection,
        tls_server_end_point: Option<Vec<u8>>,
        client_certificate: Option<ClientCertificate>,
    ) -> Option<TlsActive> {
        if session.is_handshaking() {
            return None;
        }
        let version = session.protocol_version()?;
        let tls_exporter = match version {
            rustls::ProtocolVersion::TLSv1_3 => session
                .export_keying_material([0u8; 32], TLS_EXPORTER_LABEL, None)
                .ok()
                .map(|bytes| bytes.to_vec()),
            _ => None,
        };
        Some(TlsActive {
            version: version_name(version),
            cipher: suite_name(session.negotiated_cipher_suite()?),
            server_name: session.server_name().map(str::to_string),
            client_certificate,
            channel_bindings: ChannelBindingData {
                tls_exporter,
                tls_server_end_point,
            },
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

/// Which credential a login used: named in security events, and what decides whether the
/// login still stands later (revoking an app password ends only the sessions it opened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    AccountPassword,
    /// The account password followed by a current TOTP or recovery code
    /// (`auth.password_with_code`).
    AccountPasswordWithCode,
    AppPassword {
        id: i64,
        name: String,
        password_hash: String,
        /// Unix seconds.
        expires_at: Option<i64>,
    },
    Certificate {
        fingerprint: String,
        /// Unix seconds.
        not_after: i64,
    },
    Scram,
}

impl Credential {
    /// When the credential stops being valid by itself (an app password's expiry, a
    /// certificate's end of validity): a session it opened ends then.
    pub fn expires_at(&self) -> Option<i64> {
        match self {
            Credential::AppPassword { expires_at, .. } => *expires_at,
            Credential::Certificate { not_after, .. } => Some(*not_after),
            _ => None,
        }
    }
}

impl std::fmt::Display for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::AccountPassword => f.write_str("account password"),
            Credential::AccountPasswordWithCode => f.write_str("account password and code"),
            Credential::AppPassword { name, .. } => write!(f, "app password {name}"),
            Credential::Certificate { fingerprint, .. } => write!(f, "certificate {fingerprint}"),
            Credential::Scram => f.write_str("SCRAM"),
        }
    }
}

/// Proof that a session has authenticated as `account`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Authenticated {
    pub account: Account,
    pub credential: Credential,
}

impl Authenticated {
    /// Only `identity` calls this, after it has verified the account's password.
    pub fn from_verified_credentials(account: Account) -> Authenticated {
        Authenticated {
            account,
            credential: Credential::AccountPassword,
        }
    }

    /// Only `identity` calls this, after it has verified `credential`.
    pub fn with_verified_credential(account: Account, credential: Credential) -> Authenticated {
        Authenticated { account, credential }
    }
}

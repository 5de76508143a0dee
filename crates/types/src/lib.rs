//! Values that arrive from outside (config files, the command line, protocol commands) are parsed
//! here once into types that can only hold valid values: [`Domain`] and [`EmailAddress`].
//! Nothing in this crate does I/O.
//!
//! Normalisation rules (RFC 5321 section 2.4, RFC 6531, RFC 5890):
//! - a domain is compared case-insensitively and stored in its ASCII (A-label, IDNA) form;
//! - a local part may be UTF-8 (SMTPUTF8); it is stored lower-cased, because users expect
//!   `Alice@` and `alice@` to be the same mailbox and nearly every server treats them so.

pub mod cache;
pub mod clock;
pub mod line;
pub mod proof;
pub mod rate;
pub mod token;
pub mod xtext;

use std::fmt;

use serde::{Deserialize, Serialize};

/// RFC 5321 section 4.5.3.1.1: the local part is at most 64 octets.
pub const MAX_LOCAL_PART_OCTETS: usize = 64;
/// RFC 5321 section 4.5.3.1.2: a domain is at most 255 octets (253 in its textual form).
pub const MAX_DOMAIN_OCTETS: usize = 253;
/// RFC 1035 section 2.3.4: a label is at most 63 octets.
pub const MAX_LABEL_OCTETS: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("empty domain")]
    EmptyDomain,
    #[error("domain {0:?} is not a valid internationalised domain name")]
    Idna(String),
    #[error("domain {0:?} is longer than {MAX_DOMAIN_OCTETS} octets")]
    DomainTooLong(String),
    #[error("domain {0:?} has an empty label or a label longer than {MAX_LABEL_OCTETS} octets")]
    BadLabel(String),
    #[error(
        "domain {0:?} may only contain letters, digits and hyphens, and no label may start or end with a hyphen"
    )]
    BadDomainCharacter(String),
    #[error("domain {0:?} needs at least two labels (like example.org)")]
    SingleLabel(String),
    #[error("address {0:?} has no @")]
    MissingAt(String),
    #[error("address {0:?} has an empty local part")]
    EmptyLocalPart(String),
    #[error("address {0:?} has a local part longer than {MAX_LOCAL_PART_OCTETS} octets")]
    LocalPartTooLong(String),
    #[error(
        "address {0:?} has a character not allowed in a local part (spaces, control characters, quotes, brackets, commas, or misplaced dots)"
    )]
    BadLocalPart(String),
}

/// A DNS domain name in lower-case ASCII form (IDNA A-labels), without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Domain(String);

impl Domain {
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        let trimmed = input.strip_suffix('.').unwrap_or(input);
        if trimmed.is_empty() {
            return Err(AddressError::EmptyDomain);
        }
        let ascii = idna::domain_to_ascii_strict(trimmed)
            .map_err(|_| AddressError::Idna(input.to_string()))?
            .to_ascii_lowercase();
        if ascii.len() > MAX_DOMAIN_OCTETS {
            return Err(AddressError::DomainTooLong(input.to_string()));
        }
        let mut labels = 0;
        for label in ascii.split('.') {
            labels += 1;
            if label.is_empty() || label.len() > MAX_LABEL_OCTETS {
                return Err(AddressError::BadLabel(input.to_string()));
            }
            let ldh = label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !ldh || label.starts_with('-') || label.ends_with('-') {
                return Err(AddressError::BadDomainCharacter(input.to_string()));
            }
        }
        if labels < 2 {
            return Err(AddressError::SingleLabel(input.to_string()));
        }
        Ok(Domain(ascii))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The domain in its Unicode form, for showing to people.
    pub fn to_unicode(&self) -> String {
        idna::domain_to_unicode(&self.0).0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Domain {
    type Error = AddressError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Domain::parse(&value)
    }
}

impl From<Domain> for String {
    fn from(value: Domain) -> Self {
        value.0
    }
}

/// A mailbox address `local@domain`: unquoted dot-atom local part (UTF-8 allowed, RFC 6531),
/// lower-cased; domain normalised as [`Domain`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress {
    local: String,
    domain: Domain,
}

impl EmailAddress {
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        let (local, domain) = input
            .rsplit_once('@')
            .ok_or_else(|| AddressError::MissingAt(input.to_string()))?;
        if local.is_empty() {
            return Err(AddressError::EmptyLocalPart(input.to_string()));
        }
        let local = local.to_lowercase();
        if local.len() > MAX_LOCAL_PART_OCTETS {
            return Err(AddressError::LocalPartTooLong(input.to_string()));
        }
        if !is_dot_atom(&local) {
            return Err(AddressError::BadLocalPart(input.to_string()));
        }
        let domain = Domain::parse(domain)?;
        Ok(EmailAddress { local, domain })
    }

    pub fn local_part(&self) -> &str {
        &self.local
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }
}

/// RFC 5322 dot-atom-text, with RFC 6531's UTF-8 extension of atext.
fn is_dot_atom(local: &str) -> bool {
    const ATEXT_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return false;
    }
    local.chars().all(|c| {
        c == '.'
            || c.is_ascii_alphanumeric()
            || ATEXT_SPECIALS.contains(c)
            || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
    })
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl TryFrom<String> for EmailAddress {
    type Error = AddressError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        EmailAddress::parse(&value)
    }
}

impl From<EmailAddress> for String {
    fn from(value: EmailAddress) -> Self {
        value.to_string()
    }
}

/// An account's key in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AccountId(pub i64);

/// A mailbox's key in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MailboxId(pub i64);

/// A stored message's key in the store (one per message per mailbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub i64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_normalise_case_dot_and_idna() {
        let cases = [
            ("Example.TEST", "example.test"),
            ("example.test.", "example.test"),
            ("bücher.example", "xn--bcher-kva.example"),
            ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                Domain::parse(input).map(String::from),
                Ok(expected.to_string()),
                "{input}"
            );
        }
        assert_eq!(
            Domain::parse("xn--bcher-kva.example").map(|d| d.to_unicode()),
            Ok("bücher.example".to_string())
        );
    }

    #[test]
    fn bad_domains_are_refused() {
        let long_label = format!("{}.test", "a".repeat(64));
        let long_domain = format!("{}test", "abcdefghi.".repeat(26));
        for input in [
            "",
            "localhost",
            "a..b",
            "-a.test",
            "a-.test",
            "a_b.test",
            "a b.test",
            &long_label,
            &long_domain,
            "exa\u{0}mple.test",
        ] {
            assert!(Domain::parse(input).is_err(), "{input:?} should be refused");
        }
    }

    #[test]
    fn addresses_normalise_and_allow_utf8_local_parts() {
        let cases = [
            ("Alice@Example.TEST", "alice@example.test"),
            ("jörg@bücher.example", "jörg@xn--bcher-kva.example"),
            ("first.last+tag@example.test", "first.last+tag@example.test"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                EmailAddress::parse(input).map(String::from),
                Ok(expected.to_string()),
                "{input}"
            );
        }
    }

    #[test]
    fn bad_addresses_are_refused_with_the_reason() {
        type Check = fn(&AddressError) -> bool;
        let cases: [(&str, Check); 7] = [
            ("alice", |e| matches!(e, AddressError::MissingAt(_))),
            ("@example.test", |e| matches!(e, AddressError::EmptyLocalPart(_))),
            ("a b@example.test", |e| matches!(e, AddressError::BadLocalPart(_))),
            (".a@example.test", |e| matches!(e, AddressError::BadLocalPart(_))),
            ("a..b@example.test", |e| {
                matches!(e, AddressError::BadLocalPart(_))
            }),
            ("a\"b@example.test", |e| {
                matches!(e, AddressError::BadLocalPart(_))
            }),
            ("alice@localhost", |e| matches!(e, AddressError::SingleLabel(_))),
        ];
        for (input, check) in cases {
            match EmailAddress::parse(input) {
                Err(e) => assert!(check(&e), "{input}: unexpected {e:?}"),
                Ok(a) => panic!("{input} accepted as {a}"),
            }
        }
        let long = format!("{}@example.test", "a".repeat(65));
        assert!(matches!(
            EmailAddress::parse(&long),
            Err(AddressError::LocalPartTooLong(_))
        ));
    }
}

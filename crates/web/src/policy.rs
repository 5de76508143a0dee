//! The MTA-STS policy (RFC 8461) every served domain publishes: one text for all of them, since
//! they share our MX hosts. `domain dns` prints its id and the `https` listener serves it, both
//! from [`MtaStsPolicy::text`], so the id changes exactly when the policy does.

use sealmail_config::{MtaStsConfig, MtaStsMode};
use sha2::{Digest, Sha256};

/// The policy as served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtaStsPolicy {
    pub mode: MtaStsMode,
    /// Our host name first, then `[mta_sts] mx`.
    pub mx: Vec<String>,
    pub max_age_secs: u64,
}

impl MtaStsPolicy {
    /// The policy for `hostname` under `config`; `ca_issued` says whether the certificate
    /// served for `hostname` comes from a CA (senders enforcing the policy verify it, so a
    /// self-signed one gets `testing` unless the admin chose a mode).
    pub fn new(config: &MtaStsConfig, hostname: &str, ca_issued: bool) -> MtaStsPolicy {
        let mode = config.mode.unwrap_or(if ca_issued {
            MtaStsMode::Enforce
        } else {
            MtaStsMode::Testing
        });
        let mut mx = vec![hostname.to_ascii_lowercase()];
        for name in &config.mx {
            if !mx.contains(name) {
                mx.push(name.clone());
            }
        }
        MtaStsPolicy {
            mode,
            mx,
            max_age_secs: config.max_age.as_secs(),
        }
    }

    /// The policy file (RFC 8461 3.2), lines ended by CRLF.
    pub fn text(&self) -> String {
        let mut text = format!("version: STSv1\r\nmode: {}\r\n", self.mode.as_str());
        for host in &self.mx {
            text.push_str(&format!("mx: {host}\r\n"));
        }
        text.push_str(&format!("max_age: {}\r\n", self.max_age_secs));
        text
    }

    /// The `id=` of the `_mta-sts` TXT record: taken from the text, so that a changed policy
    /// gets a new id and senders fetch it again (RFC 8461 3.1).
    pub fn id(&self) -> String {
        let digest = Sha256::digest(self.text().as_bytes());
        hex::encode(&digest[..8])
    }
}

/// Whether a leaf certificate (DER) was issued by someone else than itself: a CA, as opposed
/// to the self-signed certificate `init` and `quickstart` make. Unparsable counts as not.
pub fn ca_issued(leaf: &[u8]) -> bool {
    use x509_parser::prelude::*;
    match X509Certificate::from_der(leaf) {
        Ok((_, cert)) => cert.issuer().as_raw() != cert.subject().as_raw(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_mode_follows_the_certificate_unless_chosen_and_the_id_follows_the_text() {
        let config = MtaStsConfig {
            mode: None,
            max_age: Duration::from_secs(604_800),
            mx: vec!["mx2.example.org".into(), "mail.example.org".into()],
        };
        let testing = MtaStsPolicy::new(&config, "Mail.Example.org", false);
        assert_eq!(
            testing.text(),
            "version: STSv1\r\nmode: testing\r\nmx: mail.example.org\r\nmx: mx2.example.org\r\nmax_age: 604800\r\n"
        );
        let enforce = MtaStsPolicy::new(&config, "mail.example.org", true);
        assert_eq!(enforce.mode, MtaStsMode::Enforce);
        assert_ne!(testing.id(), enforce.id());
        assert_eq!(
            enforce.id(),
            MtaStsPolicy::new(&config, "mail.example.org", true).id()
        );
        assert_eq!(enforce.id().len(), 16);
        let chosen = MtaStsConfig {
            mode: Some(MtaStsMode::Testing),
            ..config
        };
        assert_eq!(
            MtaStsPolicy::new(&chosen, "mail.example.org", true).mode,
            MtaStsMode::Testing
        );
    }
}

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

    /// The policy for the certificate served for `hostname`: `enforce` only when senders
    /// would accept it for every MX host listed ([`enforceable`]), unless the mode is chosen.
    pub fn for_certificate(
        config: &MtaStsConfig,
        hostname: &str,
        serving: &rustls::sign::CertifiedKey,
    ) -> MtaStsPolicy {
        let mut hosts = vec![hostname.to_ascii_lowercase()];
        hosts.extend(config.mx.iter().cloned());
        let acceptable = serving
            .cert
            .first()
            .is_some_and(|leaf| enforceable(leaf.as_ref(), &hosts));
        MtaStsPolicy::new(config, hostname, acceptable)
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

/// Whether senders enforcing the policy would accept a leaf certificate (DER) for every MX
/// host in `hosts`: issued by someone else than itself (a CA, as opposed to the self-signed
/// certificate `init` and `quickstart` make), valid now and for another day, and naming every
/// host (a `*.` name covers one label). Whether the CA is one senders trust is not known here;
/// `[mta_sts] mode` says so when the automatic choice is wrong. Unparsable counts as not.
pub fn enforceable(leaf: &[u8], hosts: &[String]) -> bool {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(leaf) else {
        return false;
    };
    let now = sealmail_types::clock::now_unix();
    let validity = cert.validity();
    if cert.issuer().as_raw() == cert.subject().as_raw()
        || validity.not_before.timestamp() > now
        || validity.not_after.timestamp() < now.saturating_add(86_400)
    {
        return false;
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    hosts.iter().all(|host| {
        let host = host.to_ascii_lowercase();
        // A policy pattern `*.example.org` is met by a certificate for the same pattern.
        names.iter().any(|name| {
            *name == host
                || name.strip_prefix("*.").is_some_and(|parent| {
                    host.split_once('.')
                        .is_some_and(|(label, rest)| !label.is_empty() && label != "*" && rest == parent)
                })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn enforce_needs_a_ca_certificate_valid_for_every_mx_host() -> Result<(), Box<dyn std::error::Error>> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let now = time::OffsetDateTime::now_utc();
        let issue = |names: &[&str], days_left: i64| -> Result<Vec<u8>, Box<dyn std::error::Error>> {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = rcgen::CertificateParams::new(names)?;
            params.not_before = now - time::Duration::days(1);
            params.not_after = now + time::Duration::days(days_left);
            let key = rcgen::KeyPair::generate()?;
            Ok(params.signed_by(&key, &issuer)?.der().to_vec())
        };
        let host = vec!["mail.example.org".to_string()];
        let both = vec!["mail.example.org".to_string(), "mx2.example.org".to_string()];
        assert!(enforceable(&issue(&["mail.example.org"], 30)?, &host));
        assert!(enforceable(&issue(&["*.example.org"], 30)?, &both));
        assert!(
            !enforceable(&issue(&["mail.example.org"], 30)?, &both),
            "mx2 not named"
        );
        assert!(
            !enforceable(&issue(&["other.example.net"], 30)?, &host),
            "another name"
        );
        assert!(!enforceable(&issue(&["mail.example.org"], -1)?, &host), "expired");
        let key = rcgen::KeyPair::generate()?;
        let self_signed = rcgen::CertificateParams::new(host.clone())?.self_signed(&key)?;
        assert!(!enforceable(self_signed.der(), &host), "self-signed");
        assert!(!enforceable(b"garbage", &host));
        Ok(())
    }

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

//! Client autoconfiguration: Thunderbird's `config-v1.1.xml` and Microsoft's Autodiscover
//! (POX). Both list only our TLS endpoints, implicit TLS first (RFC 8314 5.1), and the
//! user's full address as the login name.

use sealmail_config::{Listener, Role, TlsMode};
use sealmail_types::{Domain, EmailAddress};

/// One place a mail client can connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// IMAP (reading) or submission (sending).
    pub role: Role,
    pub port: u16,
    /// Implicit TLS, else STARTTLS.
    pub implicit: bool,
}

/// What clients are told: the host name and its endpoints, implicit TLS first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub host: String,
    pub list: Vec<Endpoint>,
}

impl Endpoints {
    /// The IMAP and submission listeners any client may use: not those limited to some
    /// networks (`allow`), asking for a client certificate, or behind a proxy (their port is
    /// not the one clients reach); and not those on loopback while the role has others.
    pub fn from_listeners(host: &Domain, listeners: &[Listener]) -> Endpoints {
        let usable = |l: &&Listener| {
            matches!(l.role, Role::Imap | Role::Submission)
                && matches!(l.tls, TlsMode::Implicit | TlsMode::StartTls)
                && l.allow.is_empty()
                && l.client_cert != sealmail_config::ClientCertMode::Required
                && !l.proxy_protocol
        };
        let public = |role: Role| {
            listeners
                .iter()
                .filter(usable)
                .any(|l| l.role == role && !l.bind.ip().is_loopback())
        };
        let mut list: Vec<Endpoint> = listeners
            .iter()
            .filter(usable)
            .filter(|l| !(l.bind.ip().is_loopback() && public(l.role)))
            .map(|l| Endpoint {
                role: l.role,
                port: l.bind.port(),
                implicit: l.tls == TlsMode::Implicit,
            })
            .collect();
        list.sort_by_key(|e| (e.role != Role::Imap, !e.implicit, e.port));
        list.dedup();
        Endpoints {
            host: host.to_string(),
            list,
        }
    }

    fn of(&self, role: Role) -> impl Iterator<Item = &Endpoint> {
        self.list.iter().filter(move |e| e.role == role)
    }
}

/// Text escaped for XML and HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Thunderbird's autoconfig document for `domain` (the "config-v1.1.xml" format).
pub fn thunderbird(domain: &Domain, endpoints: &Endpoints) -> String {
    let domain = escape(domain.as_str());
    let host = escape(&endpoints.host);
    let mut xml =
        String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<clientConfig version=\"1.1\">\n");
    xml.push_str(&format!(
        "  <emailProvider id=\"{domain}\">\n    <domain>{domain}</domain>\n    <displayName>{domain}</displayName>\n    <displayShortName>{domain}</displayShortName>\n"
    ));
    for (role, element, kind) in [
        (Role::Imap, "incomingServer", "imap"),
        (Role::Submission, "outgoingServer", "smtp"),
    ] {
        for e in endpoints.of(role) {
            let socket = if e.implicit { "SSL" } else { "STARTTLS" };
            xml.push_str(&format!(
                "    <{element} type=\"{kind}\">\n      <hostname>{host}</hostname>\n      <port>{}</port>\n      <socketType>{socket}</socketType>\n      <authentication>password-cleartext</authentication>\n      <username>%EMAILADDRESS%</username>\n    </{element}>\n",
                e.port
            ));
        }
    }
    xml.push_str("  </emailProvider>\n</clientConfig>\n");
    xml
}

/// An Apple configuration profile (`.mobileconfig`, a property list) with one mail account
/// for `address`: the first IMAP and the first submission endpoint (implicit TLS first), the
/// address as the login name, the password left for the device to ask (a profile is a file
/// people keep; no secret goes in it). `None` without an IMAP or a submission endpoint.
///
/// The identifiers are derived from the host name and the address, so a profile downloaded
/// again replaces the one installed instead of adding a second account.
pub fn apple_profile(address: &EmailAddress, endpoints: &Endpoints) -> Option<String> {
    let incoming = endpoints.of(Role::Imap).next()?;
    let outgoing = endpoints.of(Role::Submission).next()?;
    let host = escape(&endpoints.host);
    let login = escape(&address.to_string());
    let domain = escape(address.domain().as_str());
    let reversed: Vec<&str> = endpoints.host.split('.').rev().collect();
    let identifier = escape(&format!("{}.sealmail.{}", reversed.join("."), address));
    let uuid = |part: &str| stable_uuid(&format!("{}\n{address}\n{part}", endpoints.host));
    let (profile_uuid, account_uuid) = (uuid("profile"), uuid("account"));
    Some(format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>PayloadContent</key>
  <array>
    <dict>
      <key>EmailAccountDescription</key><string>{login}</string>
      <key>EmailAccountType</key><string>EmailTypeIMAP</string>
      <key>EmailAddress</key><string>{login}</string>
      <key>IncomingMailServerAuthentication</key><string>EmailAuthPassword</string>
      <key>IncomingMailServerHostName</key><string>{host}</string>
      <key>IncomingMailServerPortNumber</key><integer>{incoming_port}</integer>
      <key>IncomingMailServerUseSSL</key><true/>
      <key>IncomingMailServerUsername</key><string>{login}</string>
      <key>OutgoingMailServerAuthentication</key><string>EmailAuthPassword</string>
      <key>OutgoingMailServerHostName</key><string>{host}</string>
      <key>OutgoingMailServerPortNumber</key><integer>{outgoing_port}</integer>
      <key>OutgoingMailServerUseSSL</key><true/>
      <key>OutgoingMailServerUsername</key><string>{login}</string>
      <key>OutgoingPasswordSameAsIncomingPassword</key><true/>
      <key>PayloadDisplayName</key><string>{login}</string>
      <key>PayloadIdentifier</key><string>{identifier}.account</string>
      <key>PayloadType</key><string>com.apple.mail.managed</string>
      <key>PayloadUUID</key><string>{account_uuid}</string>
      <key>PayloadVersion</key><integer>1</integer>
    </dict>
  </array>
  <key>PayloadDescription</key><string>The mail account {login} on {host}</string>
  <key>PayloadDisplayName</key><string>Mail: {login}</string>
  <key>PayloadIdentifier</key><string>{identifier}</string>
  <key>PayloadOrganization</key><string>{domain}</string>
  <key>PayloadRemovalDisallowed</key><false/>
  <key>PayloadType</key><string>Configuration</string>
  <key>PayloadUUID</key><string>{profile_uuid}</string>
  <key>PayloadVersion</key><integer>1</integer>
</dict>
</plist>
"#,
        incoming_port = incoming.port,
        outgoing_port = outgoing.port,
    ))
}

/// A UUID made from `name` (RFC 9562 version 8, "custom": the first 122 bits of its SHA-256).
fn stable_uuid(name: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&Sha256::digest(name.as_bytes())[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode_upper(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The largest Autodiscover request read.
pub const MAX_AUTODISCOVER_REQUEST: usize = 8 * 1024;

/// The address an Autodiscover (POX) request asks about: the text of its one `EMailAddress`
/// element. quick-xml would be a new dependency for one element of a body of at most 8 KiB
/// whose text must then parse as an address; this finds the element and nothing else.
pub fn autodiscover_address(body: &[u8]) -> Option<EmailAddress> {
    if body.len() > MAX_AUTODISCOVER_REQUEST {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    let (_, after) = text.split_once("<EMailAddress>")?;
    let (address, _) = after.split_once("</EMailAddress>")?;
    EmailAddress::parse(address.trim()).ok()
}

/// Microsoft's Autodiscover answer (the "outlook" response schema) for `address`.
pub fn autodiscover(address: &EmailAddress, endpoints: &Endpoints) -> String {
    let login = escape(&address.to_string());
    let host = escape(&endpoints.host);
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006\">\n  <Response xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a\">\n    <Account>\n      <AccountType>email</AccountType>\n      <Action>settings</Action>\n",
    );
    for (role, kind) in [(Role::Imap, "IMAP"), (Role::Submission, "SMTP")] {
        for e in endpoints.of(role) {
            let security = if e.implicit {
                "<SSL>on</SSL>"
            } else {
                "<SSL>off</SSL>\n        <Encryption>TLS</Encryption>"
            };
            xml.push_str(&format!(
                "      <Protocol>\n        <Type>{kind}</Type>\n        <Server>{host}</Server>\n        <Port>{}</Port>\n        <LoginName>{login}</LoginName>\n        <DomainRequired>off</DomainRequired>\n        <SPA>off</SPA>\n        {security}\n        <AuthRequired>on</AuthRequired>\n      </Protocol>\n",
                e.port
            ));
        }
    }
    xml.push_str("    </Account>\n  </Response>\n</Autodiscover>\n");
    xml
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(role: Role, port: u16, tls: TlsMode) -> Listener {
        Listener {
            role,
            bind: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            tls,
            allow: Vec::new(),
            deny: Vec::new(),
            proxy_protocol: false,
            client_cert: sealmail_config::ClientCertMode::Off,
        }
    }

    #[test]
    fn only_tls_endpoints_are_listed_implicit_first() -> Result<(), Box<dyn std::error::Error>> {
        let host = Domain::parse("mail.example.org")?;
        let endpoints = Endpoints::from_listeners(
            &host,
            &[
                listener(Role::Mx, 25, TlsMode::StartTls),
                listener(Role::Submission, 587, TlsMode::StartTls),
                listener(Role::Submission, 465, TlsMode::Implicit),
                listener(Role::Imap, 143, TlsMode::StartTls),
                listener(Role::Imap, 993, TlsMode::Implicit),
                listener(Role::Https, 443, TlsMode::Implicit),
                listener(Role::Http, 80, TlsMode::None),
            ],
        );
        let ports: Vec<u16> = endpoints.list.iter().map(|e| e.port).collect();
        assert_eq!(ports, [993, 143, 465, 587]);
        // Restricted, certificate-only, proxied and (beside public ones) loopback listeners
        // are not for every client.
        let public = |port: u16| Listener {
            bind: std::net::SocketAddr::from(([192, 0, 2, 1], port)),
            ..listener(Role::Imap, port, TlsMode::Implicit)
        };
        let restricted = Listener {
            allow: vec!["10.0.0.0/8".parse()?],
            ..public(9931)
        };
        let certificate_only = Listener {
            client_cert: sealmail_config::ClientCertMode::Required,
            ..public(9932)
        };
        let proxied = Listener {
            proxy_protocol: true,
            ..public(9933)
        };
        let filtered = Endpoints::from_listeners(
            &host,
            &[
                public(993),
                restricted,
                certificate_only,
                proxied,
                listener(Role::Imap, 1993, TlsMode::Implicit),
            ],
        );
        let ports: Vec<u16> = filtered.list.iter().map(|e| e.port).collect();
        assert_eq!(ports, [993]);
        let xml = thunderbird(&Domain::parse("example.org")?, &endpoints);
        let imaps = xml.find("<port>993</port>").ok_or("no 993")?;
        let imap = xml.find("<port>143</port>").ok_or("no 143")?;
        assert!(imaps < imap);
        assert!(!xml.contains("<port>25</port>") && !xml.contains("plain"));
        Ok(())
    }

    #[test]
    fn the_apple_profile_names_the_first_tls_endpoints_and_no_secret()
    -> Result<(), Box<dyn std::error::Error>> {
        let host = Domain::parse("mail.example.org")?;
        let endpoints = Endpoints::from_listeners(
            &host,
            &[
                listener(Role::Submission, 587, TlsMode::StartTls),
                listener(Role::Submission, 465, TlsMode::Implicit),
                listener(Role::Imap, 993, TlsMode::Implicit),
            ],
        );
        let address = EmailAddress::parse("a&b@example.org")?;
        let profile = apple_profile(&address, &endpoints).ok_or("no profile")?;
        assert!(profile.contains("<key>IncomingMailServerPortNumber</key><integer>993</integer>"));
        assert!(profile.contains("<key>OutgoingMailServerPortNumber</key><integer>465</integer>"));
        assert!(profile.contains("<string>a&amp;b@example.org</string>"));
        assert!(
            !profile.contains("Password</key><string>"),
            "no password in a profile"
        );
        // Downloaded again, it has the same identifiers (it replaces the installed one).
        assert_eq!(Some(profile.clone()), apple_profile(&address, &endpoints));
        let other = apple_profile(&EmailAddress::parse("c@example.org")?, &endpoints).ok_or("none")?;
        let uuid = |p: &str| {
            p.split("<key>PayloadUUID</key><string>")
                .nth(2)
                .map(|r| r[..36].to_string())
        };
        assert_ne!(uuid(&profile), uuid(&other));
        assert_eq!(uuid(&profile).map(|u| u.as_bytes()[14]), Some(b'8'));
        // Without an IMAP endpoint there is no account to describe.
        let only_submission =
            Endpoints::from_listeners(&host, &[listener(Role::Submission, 465, TlsMode::Implicit)]);
        assert!(apple_profile(&address, &only_submission).is_none());
        Ok(())
    }

    #[test]
    fn the_autodiscover_address_is_one_bounded_element() -> Result<(), Box<dyn std::error::Error>> {
        let request = b"<?xml version=\"1.0\"?><Autodiscover xmlns=\"x\"><Request><EMailAddress> a@example.org </EMailAddress></Request></Autodiscover>";
        assert_eq!(
            autodiscover_address(request).map(|a| a.to_string()),
            Some("a@example.org".to_string())
        );
        assert!(autodiscover_address(b"<EMailAddress><script>@x</EMailAddress>").is_none());
        assert!(autodiscover_address(b"<EMailAddress>a@example.org").is_none());
        let mut big = b"<EMailAddress>a@example.org</EMailAddress>".to_vec();
        big.resize(MAX_AUTODISCOVER_REQUEST + 1, b' ');
        assert!(autodiscover_address(&big).is_none());
        Ok(())
    }
}

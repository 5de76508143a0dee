//! The page at `https://HOST/`: the settings a mail client needs, to type by hand. Plain HTML,
//! no script, no style; every value escaped.

use sealmail_config::Role;
use sealmail_types::Domain;

use crate::autoconfig::{Endpoints, escape};

/// The settings page; `domain` names the mail domain when the page was asked of `autoconfig.D`.
pub fn settings(endpoints: &Endpoints, domain: Option<&Domain>) -> String {
    let host = escape(&endpoints.host);
    let title = match domain {
        Some(domain) => format!("Mail settings for {}", escape(domain.as_str())),
        None => format!("Mail settings for {host}"),
    };
    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>{title}</title></head>\n<body>\n<h1>{title}</h1>\n<p>User name: your full email address. Password: your password, or an app password.</p>\n<table>\n<tr><th>Service</th><th>Server</th><th>Port</th><th>Security</th></tr>\n"
    );
    for e in &endpoints.list {
        let service = match e.role {
            Role::Imap => "Incoming mail (IMAP)",
            _ => "Outgoing mail (SMTP submission)",
        };
        let security = if e.implicit { "SSL/TLS" } else { "STARTTLS" };
        html.push_str(&format!(
            "<tr><td>{service}</td><td>{host}</td><td>{}</td><td>{security}</td></tr>\n",
            e.port
        ));
    }
    html.push_str("</table>\n<p>Every connection is encrypted; passwords are never accepted without TLS.</p>\n</body>\n</html>\n");
    html
}

//! The pages' templates (askama, under `crates/web/templates/`): one struct per page, every
//! value escaped by the template unless it is SVG we drew ourselves (`|safe`).

use askama::Template;
use hyper::StatusCode;

use super::{Answer, SignedIn, html};

/// What every page shows around its content: the title, who is signed in, a message.
pub struct Chrome {
    pub title: String,
    /// The signed-in user's address, with the CSRF token of the log-out form.
    pub user: Option<(String, String)>,
    pub admin: bool,
    pub message: Option<String>,
    pub error: Option<String>,
}

impl Chrome {
    pub fn public(title: &str) -> Chrome {
        Chrome {
            title: title.to_string(),
            user: None,
            admin: false,
            message: None,
            error: None,
        }
    }

    pub fn signed(title: &str, user: &SignedIn) -> Chrome {
        Chrome {
            title: title.to_string(),
            user: Some((user.account.address.to_string(), user.csrf())),
            admin: user.admin,
            message: None,
            error: None,
        }
    }

    pub fn with_message(mut self, message: Option<&str>) -> Chrome {
        self.message = message.map(str::to_string);
        self
    }

    pub fn with_error(mut self, error: Option<&str>) -> Chrome {
        self.error = error.map(str::to_string);
        self
    }
}

/// Renders a template into a page; a template that fails to render is a server error (logged).
pub fn render(template: &impl Template, status: StatusCode) -> Answer {
    match template.render() {
        Ok(text) => html(status, text),
        Err(error) => {
            tracing::error!(%error, "a page template failed");
            html(StatusCode::INTERNAL_SERVER_ERROR, String::new())
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage {
    pub chrome: Chrome,
    pub text: String,
}

/// A message for a signed-in user (the page keeps its navigation and log-out button).
pub fn signed_message_page(user: &SignedIn, title: &str, text: &str, status: StatusCode) -> Answer {
    render(
        &MessagePage {
            chrome: Chrome::signed(title, user),
            text: text.to_string(),
        },
        status,
    )
}

pub fn message_page(title: &str, text: &str, status: StatusCode) -> Answer {
    render(
        &MessagePage {
            chrome: Chrome::public(title),
            text: text.to_string(),
        },
        status,
    )
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub chrome: Chrome,
    pub csrf: String,
}

pub fn login(csrf: &str, message: Option<&str>, error: Option<&str>, status: StatusCode) -> Answer {
    render(
        &LoginPage {
            chrome: Chrome::public("Log in").with_message(message).with_error(error),
            csrf: csrf.to_string(),
        },
        status,
    )
}

#[derive(Template)]
#[template(path = "code.html")]
pub struct CodePage {
    pub chrome: Chrome,
    pub csrf: String,
    /// What the security key button asks for, when the account has keys.
    pub key: Option<KeyLogin>,
}

/// A WebAuthn authentication the second-factor page offers (sealmail.js runs it).
pub struct KeyLogin {
    pub challenge: String,
    pub rp_id: String,
    /// The account's credential ids, base64url, comma-separated.
    pub allow: String,
}

pub fn code_form(csrf: &str, key: Option<KeyLogin>, error: Option<&str>, status: StatusCode) -> Answer {
    render(
        &CodePage {
            chrome: Chrome::public("Second factor").with_error(error),
            csrf: csrf.to_string(),
            key,
        },
        status,
    )
}

/// A WebAuthn registration the account page offers (sealmail.js runs it).
pub struct KeyRegistration {
    pub challenge: String,
    pub rp_id: String,
    /// The user handle (base64url): not the address, which the authenticator need not keep.
    pub user_id: String,
    pub user_name: String,
    /// The credential ids registered already (base64url, comma-separated): not made twice.
    pub exclude: String,
}

pub struct SecurityKeyRow {
    pub id: i64,
    pub name: String,
    pub added: String,
    pub last_used: String,
}

/// One row of a table of facts.
pub struct Row {
    pub cells: Vec<String>,
}

pub struct AppPasswordRow {
    pub name: String,
    pub scopes: String,
    pub created: String,
    pub expires: String,
    pub last_used: String,
}

pub struct SessionRow {
    pub started: String,
    pub last_seen: String,
    pub address: String,
    pub agent: String,
    pub credential: String,
    pub this_one: bool,
}

pub struct EventRow {
    pub at: String,
    pub kind: String,
    pub address: String,
    pub account: String,
    pub listener: String,
    pub detail: String,
}

pub struct EndpointRow {
    pub service: String,
    pub host: String,
    pub port: u16,
    pub security: String,
}

#[derive(Template)]
#[template(path = "account.html")]
pub struct AccountPage {
    pub chrome: Chrome,
    pub csrf: String,
    pub mfa: String,
    pub mfa_active: bool,
    pub app_passwords: Vec<AppPasswordRow>,
    pub sessions: Vec<SessionRow>,
    pub events: Vec<EventRow>,
    pub certificates: Vec<Row>,
    pub security_keys: Vec<SecurityKeyRow>,
    pub key_registration: KeyRegistration,
}

#[derive(Template)]
#[template(path = "setup.html")]
pub struct SetupPage {
    pub chrome: Chrome,
    pub address: String,
    pub endpoints: Vec<EndpointRow>,
    pub domain: String,
}

#[derive(Template)]
#[template(path = "enrol.html")]
pub struct EnrolPage {
    pub chrome: Chrome,
    pub csrf: String,
    pub qr_svg: String,
    pub secret: String,
    pub uri: String,
}

#[derive(Template)]
#[template(path = "once.html")]
pub struct ShownOncePage {
    pub chrome: Chrome,
    pub intro: String,
    pub secrets: Vec<String>,
}

pub struct UserRow {
    pub address: String,
    pub admin: bool,
    pub mfa: String,
    pub app_passwords: usize,
}

#[derive(Template)]
#[template(path = "admin_overview.html")]
pub struct AdminOverview {
    pub chrome: Chrome,
    pub facts: Vec<Row>,
    pub charts: Vec<String>,
    pub period: String,
}

#[derive(Template)]
#[template(path = "admin_users.html")]
pub struct AdminUsers {
    pub chrome: Chrome,
    pub csrf: String,
    pub users: Vec<UserRow>,
}

pub struct QueueRow {
    pub id: i64,
    pub sender: String,
    pub size: u64,
    pub created: String,
    pub recipients: Vec<Row>,
}

#[derive(Template)]
#[template(path = "admin_queue.html")]
pub struct AdminQueue {
    pub chrome: Chrome,
    pub csrf: String,
    pub entries: Vec<QueueRow>,
    pub header: Option<(i64, String)>,
}

pub struct BanRow {
    pub address: String,
    pub until: String,
    pub level: i64,
    pub reason: String,
    pub events: Vec<EventRow>,
}

#[derive(Template)]
#[template(path = "admin_bans.html")]
pub struct AdminBans {
    pub chrome: Chrome,
    pub csrf: String,
    pub bans: Vec<BanRow>,
}

#[derive(Template)]
#[template(path = "admin_events.html")]
pub struct AdminEvents {
    pub chrome: Chrome,
    pub kind: String,
    pub address: String,
    pub account: String,
    pub hours: i64,
    pub events: Vec<EventRow>,
}

pub struct DomainRow {
    pub name: String,
    pub records: String,
    pub check: Vec<Row>,
    /// The last daily check of the domain, when one has finished.
    pub graded: Option<GradeView>,
}

/// The last daily check of a domain (`sealmail check`, run by the server): its grade and
/// every WARN and FAIL with its fix.
pub struct GradeView {
    pub grade: String,
    pub score: i64,
    pub when: String,
    pub node: String,
    pub findings: Vec<FindingRow>,
}

/// One WARN or FAIL of a check. Text from the checked domain's DNS records and servers:
/// escaped like everything else the templates show.
pub struct FindingRow {
    pub status: String,
    pub id: String,
    pub detail: String,
    pub fix: String,
}

#[derive(Template)]
#[template(path = "admin_domains.html")]
pub struct AdminDomains {
    pub chrome: Chrome,
    pub csrf: String,
    pub domains: Vec<DomainRow>,
}

#[derive(Template)]
#[template(path = "admin_certificates.html")]
pub struct AdminCertificates {
    pub chrome: Chrome,
    pub status: String,
}

#[derive(Template)]
#[template(path = "issued.html")]
pub struct IssuedPage {
    pub chrome: Chrome,
    pub address: String,
    pub fingerprint: String,
    pub until: String,
    pub password: String,
    pub file_name: String,
    pub p12_base64: String,
}

//! The pages people use in a browser, on the host name over HTTPS: a self-service account page
//! for every user ([`account`]) and an admin console for accounts with the admin role
//! ([`admin`]); docs/WEB.md says what each offers.
//!
//! Everything is a plain HTML form posted back to us (the pages work without JavaScript; one
//! small script adds copy buttons). Templates are askama's, which escape every value unless a
//! template says otherwise, and only SVG we drew ourselves is inserted as is. Sessions live in
//! the store ([`session`]), so every node sharing it knows them and "log out everywhere" ends
//! them everywhere. Logins go through intrusion prevention like IMAP and SMTP logins: failures
//! count toward a ban of the client's address and throttle the account.

pub mod account;
pub mod admin;
pub mod session;
mod views;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use sealmail_guard::Guard;
use sealmail_identity::{Identity, Password};
use sealmail_store::{Account, WebSession};
use sealmail_types::clock::now_unix;
use sealmail_types::{AccountId, Domain, EmailAddress};

use crate::WebContext;
use session::{
    ABSOLUTE_SECS, IDLE_SECS, LOGIN_COOKIE, PENDING_COOKIE, PENDING_CREDENTIAL, PENDING_SECS, SESSION_COOKIE,
};

/// The listener name in security events of logins through the pages.
pub const LISTENER: &str = "https";
/// The largest form body read before login (user name, password, a token)...
const MAX_LOGIN_FORM: usize = 2048;
/// ...the answer of a security key at login (a credential id may have 1023 bytes)...
const MAX_KEY_LOGIN_FORM: usize = 4096;
/// ...and after it.
const MAX_FORM: usize = 16 * 1024;
/// Fields a form may have.
const MAX_FIELDS: usize = 16;
/// A request's last-seen time is written at most this often.
const TOUCH_EVERY_SECS: i64 = 60;
/// The CSP of pages: our own stylesheet, script and inline SVG, nothing inline, nothing else.
const PAGE_CSP: &str =
    "default-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the admin console needs of the server beyond the store: the parts of the CLI that
/// live in the server binary (DNS records, certificates, the client CA).
#[async_trait::async_trait]
pub trait Console: Send + Sync + 'static {
    /// The zone-file text `sealmail domain dns DOMAIN` prints.
    async fn dns_records(&self, domain: &Domain) -> Result<String, String>;
    /// What `sealmail domain dns DOMAIN --check` finds: name, type and status of each record.
    async fn check_dns(&self, domain: &Domain) -> Result<Vec<(String, String, String)>, String>;
    /// What `sealmail cert status` prints.
    fn certificate_status(&self) -> Result<String, String>;
    /// Starts the server's check of `domain` (`sealmail check`, as the daily one), in the
    /// background: its result replaces the domain's last when it ends.
    fn check_now(&self, domain: &Domain) -> Result<(), String>;
    /// What `sealmail domain add DOMAIN` does: the domain, and DKIM keys for it.
    async fn add_domain(&self, domain: &Domain) -> Result<(), String>;
    /// What `sealmail dkim rotate DOMAIN` does: new keys, signing from the next start; their
    /// selectors.
    async fn rotate_dkim(&self, domain: &Domain) -> Result<Vec<String>, String>;
    /// What `sealmail ca issue ADDRESS` does: a client certificate from the internal CA,
    /// registered to the account.
    async fn issue_client_certificate(
        &self,
        address: &EmailAddress,
    ) -> Result<IssuedClientCertificate, String>;
}

/// A client certificate just issued, as a PKCS#12 file and its password (shown once).
pub struct IssuedClientCertificate {
    pub p12: Vec<u8>,
    pub password: String,
    pub fingerprint: String,
    pub not_after: i64,
}

/// What the pages work with, besides the web context.
pub struct Pages {
    pub identity: Arc<Identity>,
    pub guard: Arc<Guard>,
    pub console: Arc<dyn Console>,
    /// When set, the admin console answers only on the `https` listener bound here
    /// (`[web] admin_listener`); elsewhere its paths are unknown (404).
    pub admin_listener: Option<SocketAddr>,
}

/// The connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Visit {
    pub peer: IpAddr,
    pub local: SocketAddr,
}

pub(crate) type Answer = Response<Full<Bytes>>;

/// A signed-in user.
pub struct SignedIn {
    pub account: Account,
    pub session: WebSession,
    /// The session cookie's value: forms carry its CSRF token.
    cookie: String,
    pub admin: bool,
}

impl SignedIn {
    pub fn csrf(&self) -> String {
        session::csrf_token("session", &self.cookie)
    }

    /// The session cookie's value (WebAuthn registration challenges are bound to it).
    pub(crate) fn cookie(&self) -> &str {
        &self.cookie
    }
}

/// A posted form's fields (at most [`MAX_FIELDS`]; the first of a repeated name counts).
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map_or("", |(_, value)| value.as_str())
    }
}

/// Whether a connection accepted on `local` came through the listener bound to `bind` (which
/// may be a wildcard address).
fn is_listener(bind: SocketAddr, local: SocketAddr) -> bool {
    bind.port() == local.port() && (bind.ip() == local.ip() || bind.ip().is_unspecified())
}

/// Whether `path` belongs to the pages (on the host name, they answer it or say 404).
pub(crate) fn serves_path(path: &str) -> bool {
    matches!(
        path,
        "/" | "/setup" | "/setup/apple.mobileconfig" | "/login" | "/login/code" | "/login/key"
    ) || ["/static/", "/account/", "/admin/"]
        .iter()
        .any(|prefix| path.starts_with(prefix))
        || path == "/admin"
}

/// The charts of the admin overview, over the last 24 hours or the last 7 days (`week`), from
/// what this process has counted since it started (`sealmail_metrics::history`).
pub(crate) fn charts(now: i64, week: bool) -> Vec<String> {
    use crate::chart::{Series, bar_chart, table_bars};
    let history = sealmail_metrics::history::History::global();
    // Up to the minute: what the sampler has not folded in yet is shown too.
    history.sample(now);
    let hours = if week { 7 * 24 } else { 24 };
    let series = |name: &str| history.series(name, hours, now);
    let (messages_in, messages_out, refusals) =
        (series("messages_in"), series("messages_out"), series("refusals"));
    let (logins, failures, bans) = (series("logins"), series("login_failures"), series("bans"));
    let tls = history.tls_seen(hours, now);
    let mut versions: Vec<(String, u64)> = Vec::new();
    for (version, _, count) in &tls {
        match versions.iter_mut().find(|(v, _)| v == version) {
            Some((_, total)) => *total += count,
            None => versions.push((version.clone(), *count)),
        }
    }
    versions.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    let suites: Vec<(String, u64)> = tls
        .iter()
        .map(|(version, suite, count)| (format!("{suite} ({version})"), *count))
        .collect();
    vec![
        bar_chart(
            "Messages per hour",
            &[
                Series {
                    label: "received",
                    points: &messages_in,
                },
                Series {
                    label: "delivered out",
                    points: &messages_out,
                },
                Series {
                    label: "refused",
                    points: &refusals,
                },
            ],
            640,
            260,
        ),
        bar_chart(
            "Logins per hour",
            &[
                Series {
                    label: "logins",
                    points: &logins,
                },
                Series {
                    label: "failures",
                    points: &failures,
                },
            ],
            640,
            260,
        ),
        bar_chart(
            "Bans per hour",
            &[Series {
                label: "bans",
                points: &bans,
            }],
            640,
            260,
        ),
        table_bars("TLS versions seen", &versions, 640),
        table_bars("Cipher suites seen", &suites, 640),
    ]
}

/// The page for `request`, when its path is one of the pages'; `None` leaves it to the rest of
/// the site.
pub(crate) async fn answer(
    context: &WebContext,
    pages: &Pages,
    visit: Visit,
    request: Request<Incoming>,
) -> Option<Answer> {
    route(context, pages, visit, request).await.map(with_page_headers)
}

async fn route(
    context: &WebContext,
    pages: &Pages,
    visit: Visit,
    request: Request<Incoming>,
) -> Option<Answer> {
    let path = request.uri().path().to_string();
    let get = matches!(*request.method(), Method::GET | Method::HEAD);
    let post = request.method() == Method::POST;
    let answer = match path.as_str() {
        "/static/sealmail.css" if get => asset(
            "text/css; charset=utf-8",
            include_str!("../../static/sealmail.css"),
        ),
        "/static/sealmail.js" if get => asset(
            "text/javascript; charset=utf-8",
            include_str!("../../static/sealmail.js"),
        ),
        "/" if get => match signed_in(context, pages, &request, visit).await {
            Ok(Some(user)) => account::overview(context, pages, &user, None).await,
            Ok(None) => login_page(None, StatusCode::OK),
            Err(answer) => answer,
        },
        "/setup" if get => account::setup_page(
            context,
            signed_in(context, pages, &request, visit).await.ok().flatten(),
        ),
        "/setup/apple.mobileconfig" if get => match signed_in(context, pages, &request, visit).await {
            Ok(Some(user)) => account::apple_profile(context, &user).await,
            Ok(None) => login_page(Some("Log in first."), StatusCode::FORBIDDEN),
            Err(answer) => answer,
        },
        "/login" if post => login(context, pages, visit, request).await,
        "/login/code" | "/login/key" if post => second_factor(context, pages, visit, request).await,
        p if (p.starts_with("/account/") || p.starts_with("/admin"))
            && post
            && pages.guard.is_banned(visit.peer) =>
        {
            banned()
        }
        p if p.starts_with("/account/") && post => {
            let user = match signed_in(context, pages, &request, visit).await {
                Ok(Some(user)) => user,
                Ok(None) => {
                    return Some(login_page(
                        Some("Your session has ended; log in again."),
                        StatusCode::FORBIDDEN,
                    ));
                }
                Err(answer) => return Some(answer),
            };
            let form = match signed_form(request, &user).await {
                Ok(form) => form,
                Err(answer) => return Some(answer),
            };
            account::action(context, pages, visit, &user, &path, form).await
        }
        p if p == "/admin" || p.starts_with("/admin/") => {
            if pages
                .admin_listener
                .is_some_and(|only| !is_listener(only, visit.local))
            {
                return None;
            }
            let user = match signed_in(context, pages, &request, visit).await {
                Ok(Some(user)) if user.admin => user,
                Ok(Some(user)) => {
                    return Some(views::signed_message_page(
                        &user,
                        "Not allowed",
                        "This page is for admins.",
                        StatusCode::FORBIDDEN,
                    ));
                }
                Ok(None) => return Some(login_page(Some("Log in first."), StatusCode::FORBIDDEN)),
                Err(answer) => return Some(answer),
            };
            if get {
                let query = request.uri().query().unwrap_or("").to_string();
                admin::page(context, pages, &user, &path, &query).await
            } else if post {
                let form = match signed_form(request, &user).await {
                    Ok(form) => form,
                    Err(answer) => return Some(answer),
                };
                admin::action(context, pages, visit, &user, &path, form).await
            } else {
                return None;
            }
        }
        _ => return None,
    };
    Some(answer)
}

fn asset(kind: &'static str, text: &'static str) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    response
}

/// Pages are never cached and may use our own stylesheet and script.
fn with_page_headers(mut response: Answer) -> Answer {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An HTML page.
pub(crate) fn html(status: StatusCode, body: String) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// The login form, with a fresh login cookie for its CSRF token.
fn login_page(error: Option<&str>, status: StatusCode) -> Answer {
    login_page_with(None, error, status)
}

fn login_page_with(message: Option<&str>, error: Option<&str>, status: StatusCode) -> Answer {
    let Some(value) = session::new_cookie_value() else {
        return views::message_page("Unavailable", "Try again later.", StatusCode::SERVICE_UNAVAILABLE);
    };
    let csrf = session::csrf_token("login", &value);
    let mut response = views::login(&csrf, message, error, status);
    if let Some(cookie) = session::set_cookie(LOGIN_COOKIE, &value, ABSOLUTE_SECS) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// Reads a form body of at most `limit` bytes.
async fn read_form(request: Request<Incoming>, limit: usize) -> Result<Form, Answer> {
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(views::message_page(
            "Bad request",
            "Expected a form.",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ));
    }
    let body = match Limited::new(request.into_body(), limit).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return Err(views::message_page(
                "Too large",
                "The form is too large.",
                StatusCode::PAYLOAD_TOO_LARGE,
            ));
        }
    };
    let fields: Vec<(String, String)> = form_urlencoded::parse(&body)
        .take(MAX_FIELDS)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    Ok(Form(fields))
}

/// A signed-in user's form, once its CSRF token is the session's.
async fn signed_form(request: Request<Incoming>, user: &SignedIn) -> Result<Form, Answer> {
    let form = read_form(request, MAX_FORM).await?;
    if !session::csrf_matches("session", &user.cookie, form.get("csrf")) {
        return Err(views::message_page(
            "Refused",
            "The form was not sent from this site's page (missing or wrong CSRF token).",
            StatusCode::FORBIDDEN,
        ));
    }
    Ok(form)
}

/// The signed-in user of the request's session cookie, if any; the session's expiry moves on.
async fn signed_in(
    context: &WebContext,
    pages: &Pages,
    request: &Request<Incoming>,
    _visit: Visit,
) -> Result<Option<SignedIn>, Answer> {
    let Some(cookie) = session::cookie(request.headers(), SESSION_COOKIE) else {
        return Ok(None);
    };
    let now = now_unix();
    let unavailable = |error: &dyn std::fmt::Display| {
        tracing::error!(%error, "cannot read a web session");
        views::message_page("Unavailable", "Try again later.", StatusCode::SERVICE_UNAVAILABLE)
    };
    let hash = session::cookie_hash(&cookie);
    let stored = context
        .store
        .web_session(&hash, now)
        .await
        .map_err(|e| unavailable(&e))?;
    let Some(stored) = stored.filter(|s| s.credential != PENDING_CREDENTIAL) else {
        return Ok(None);
    };
    let Some(account) = context
        .store
        .account_by_id(stored.account)
        .await
        .map_err(|e| unavailable(&e))?
    else {
        return Ok(None);
    };
    if now - stored.last_seen_at >= TOUCH_EVERY_SECS {
        let expires = (now + IDLE_SECS).min(stored.created_at + ABSOLUTE_SECS);
        if let Err(error) = context.store.touch_web_session(&hash, now, expires).await {
            tracing::warn!(%error, "cannot note a web session's use");
        }
    }
    let admin = context
        .store
        .is_admin(account.id)
        .await
        .map_err(|e| unavailable(&e))?;
    let _ = pages;
    Ok(Some(SignedIn {
        account,
        session: stored,
        cookie,
        admin,
    }))
}

fn user_agent(request: &Request<Incoming>) -> String {
    request
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect()
}

/// Stores a new session for `account` and answers with its cookie set and the account page.
async fn start_session(
    context: &WebContext,
    pages: &Pages,
    visit: Visit,
    account: Account,
    credential: &str,
    user_agent: String,
) -> Answer {
    let now = now_unix();
    let Some(cookie) = session::new_cookie_value() else {
        return views::message_page("Unavailable", "Try again later.", StatusCode::SERVICE_UNAVAILABLE);
    };
    let stored = WebSession {
        id_hash: session::cookie_hash(&cookie),
        account: account.id,
        credential: credential.to_string(),
        client_address: visit.peer.to_string(),
        user_agent,
        created_at: now,
        last_seen_at: now,
        expires_at: now + IDLE_SECS,
    };
    if let Err(error) = context.store.add_web_session(stored.clone()).await {
        tracing::error!(%error, "cannot store a web session");
        return views::message_page("Unavailable", "Try again later.", StatusCode::SERVICE_UNAVAILABLE);
    }
    pages
        .guard
        .login_succeeded(visit.peer, &account.address.to_string(), LISTENER, credential)
        .await;
    let admin = context.store.is_admin(account.id).await.unwrap_or(false);
    let user = SignedIn {
        account,
        session: stored,
        cookie: cookie.clone(),
        admin,
    };
    let mut response = account::overview(context, pages, &user, Some("You are logged in.")).await;
    let headers = response.headers_mut();
    if let Some(value) = session::set_cookie(SESSION_COOKIE, &cookie, ABSOLUTE_SECS) {
        headers.append(header::SET_COOKIE, value);
    }
    headers.append(header::SET_COOKIE, session::clear_cookie(LOGIN_COOKIE));
    headers.append(header::SET_COOKIE, session::clear_cookie(PENDING_COOKIE));
    response
}

const LOGIN_FAILED: &str = "Wrong address or password.";

/// `POST /login`: the password; then the account page, or the second-factor form.
async fn login(context: &WebContext, pages: &Pages, visit: Visit, request: Request<Incoming>) -> Answer {
    let login_cookie = session::cookie(request.headers(), LOGIN_COOKIE);
    let agent = user_agent(&request);
    let form = match read_form(request, MAX_LOGIN_FORM).await {
        Ok(form) => form,
        Err(answer) => return answer,
    };
    let Some(login_cookie) = login_cookie.filter(|c| session::csrf_matches("login", c, form.get("csrf")))
    else {
        return login_page(
            Some("The login form had expired; try again."),
            StatusCode::FORBIDDEN,
        );
    };
    let _ = login_cookie;
    if pages.guard.is_banned(visit.peer) {
        return banned();
    }
    let username = form.get("username").trim().to_string();
    let password = Password::new(form.get("password").to_string());
    if pages.guard.wait_for_turn(&username, visit.peer).await.is_err() {
        return login_page(
            Some("Too many attempts; try again later."),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let account = match EmailAddress::parse(&username) {
        Ok(address) => match pages.identity.verify_password(&address, &password).await {
            Ok(account) => account,
            Err(error) => {
                tracing::error!(%error, "a web login could not be checked");
                return views::message_page(
                    "Unavailable",
                    "Try again later.",
                    StatusCode::SERVICE_UNAVAILABLE,
                );
            }
        },
        Err(_) => None,
    };
    let Some(account) = account else {
        return match pages.guard.auth_failed(visit.peer, &username, LISTENER).await {
            Some(_) => banned(),
            None => login_page(Some(LOGIN_FAILED), StatusCode::UNAUTHORIZED),
        };
    };
    match pages.identity.mfa_active(account.id).await {
        Ok(false) => start_session(context, pages, visit, account, "password", agent).await,
        Ok(true) => {
            // The owner learns that someone has the password, whatever happens next.
            pages
                .guard
                .change_made(
                    sealmail_guard::kind::SECOND_FACTOR_PENDING,
                    visit.peer,
                    &account.address.to_string(),
                    "password accepted; waiting for the second factor".to_string(),
                )
                .await;
            pending_second_factor(context, visit, account, agent).await
        }
        Err(error) => {
            tracing::error!(%error, "a web login could not be checked");
            views::message_page("Unavailable", "Try again later.", StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}

/// The password was right and the account has a second factor: a short-lived half session,
/// and the form for the code.
async fn pending_second_factor(
    context: &WebContext,
    visit: Visit,
    account: Account,
    agent: String,
) -> Answer {
    let now = now_unix();
    let Some(cookie) = session::new_cookie_value() else {
        return views::message_page("Unavailable", "Try again later.", StatusCode::SERVICE_UNAVAILABLE);
    };
    let pending = WebSession {
        id_hash: session::cookie_hash(&cookie),
        account: account.id,
        credential: PENDING_CREDENTIAL.to_string(),
        client_address: visit.peer.to_string(),
        user_agent: agent,
        created_at: now,
        last_seen_at: now,
        expires_at: now + PENDING_SECS,
    };
    if let Err(error) = context.store.add_web_session(pending).await {
        tracing::error!(%error, "cannot store a web session");
        return views::message_page("Unavailable", "Try again later.", StatusCode::SERVICE_UNAVAILABLE);
    }
    let key = key_login(context, account.id, &cookie).await;
    let mut response = views::code_form(
        &session::csrf_token("pending", &cookie),
        key,
        None,
        StatusCode::OK,
    );
    if let Some(value) = session::set_cookie(PENDING_COOKIE, &cookie, PENDING_SECS) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// `POST /login/code` (a TOTP code or a recovery code) and `POST /login/key` (a security
/// key's answer) after the password.
async fn second_factor(
    context: &WebContext,
    pages: &Pages,
    visit: Visit,
    request: Request<Incoming>,
) -> Answer {
    let by_key = request.uri().path() == "/login/key";
    let pending_cookie = session::cookie(request.headers(), PENDING_COOKIE);
    let agent = user_agent(&request);
    let limit = if by_key {
        MAX_KEY_LOGIN_FORM
    } else {
        MAX_LOGIN_FORM
    };
    let form = match read_form(request, limit).await {
        Ok(form) => form,
        Err(answer) => return answer,
    };
    let Some(cookie) = pending_cookie.filter(|c| session::csrf_matches("pending", c, form.get("csrf")))
    else {
        return login_page(Some("The login had expired; start again."), StatusCode::FORBIDDEN);
    };
    if pages.guard.is_banned(visit.peer) {
        return banned();
    }
    let hash = session::cookie_hash(&cookie);
    let pending = match context.store.web_session(&hash, now_unix()).await {
        // Taken before the code is checked: parallel guesses on one half login get one code.
        Ok(Some(pending))
            if pending.credential == PENDING_CREDENTIAL
                && matches!(context.store.end_web_session(&hash).await, Ok(true)) =>
        {
            pending
        }
        Ok(_) => return login_page(Some("The login had expired; start again."), StatusCode::FORBIDDEN),
        Err(error) => {
            tracing::error!(%error, "cannot read a web session");
            return views::message_page("Unavailable", "Try again later.", StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    let account = match context.store.account_by_id(pending.account).await {
        Ok(Some(account)) => account,
        _ => return login_page(Some("The login had expired; start again."), StatusCode::FORBIDDEN),
    };
    let address = account.address.to_string();
    if pages.guard.wait_for_turn(&address, visit.peer).await.is_err() {
        return login_page(
            Some("Too many attempts; try again later."),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let checked = if by_key {
        security_key_login(context, pages, visit, &account, &cookie, &form).await
    } else {
        let code: String = form
            .get("code")
            .chars()
            .filter(|c| !c.is_whitespace())
            .take(64)
            .collect();
        pages
            .identity
            .second_factor(account.id, &code)
            .await
            .map(|right| {
                right.then_some(if code.len() == 6 {
                    "password+totp"
                } else {
                    "password+recovery code"
                })
            })
            .map_err(|error| error.to_string())
    };
    match checked {
        Ok(Some(credential)) => start_session(context, pages, visit, account, credential, agent).await,
        Ok(None) => {
            // One code per password (the half login is gone already): guessing codes costs a
            // password check each time, under the account's throttle, and every wrong code is
            // an event on the owner's page.
            let ban = pages
                .guard
                .auth_failed_with(
                    visit.peer,
                    &address,
                    LISTENER,
                    Some(
                        if by_key {
                            "security key refused"
                        } else {
                            "wrong second factor"
                        }
                        .to_string(),
                    ),
                )
                .await;
            let mut response = match ban {
                Some(_) => banned(),
                None => login_page(
                    Some(if by_key {
                        "The security key was not accepted; log in again."
                    } else {
                        "That code is not right (or was used already); log in again."
                    }),
                    StatusCode::UNAUTHORIZED,
                ),
            };
            response
                .headers_mut()
                .append(header::SET_COOKIE, session::clear_cookie(PENDING_COOKIE));
            response
        }
        Err(error) => {
            tracing::error!(%error, "a second factor could not be checked");
            views::message_page("Unavailable", "Try again later.", StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}

/// A base64url form field (WebAuthn answers), decoded when it holds at most `limit` bytes.
pub(crate) fn base64url_field(form: &Form, name: &str, limit: usize) -> Option<Vec<u8>> {
    use base64::Engine;
    let text = form.get(name);
    if text.is_empty() || text.len() > limit.div_ceil(3) * 4 {
        return None;
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()
}

/// The label of the login challenge (bound to the half login's cookie, which is used once).
const KEY_LOGIN: &str = "login";

/// What the second-factor page offers for the account's security keys; `None` without keys.
async fn key_login(context: &WebContext, account: AccountId, cookie: &str) -> Option<views::KeyLogin> {
    use base64::Engine;
    let keys = context.store.security_keys(account).await.ok()?;
    if keys.is_empty() {
        return None;
    }
    Some(views::KeyLogin {
        challenge: crate::webauthn::challenge(KEY_LOGIN, cookie),
        rp_id: context.hostname.to_string(),
        allow: keys
            .iter()
            .map(|k| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&k.credential_id))
            .collect::<Vec<_>>()
            .join(","),
    })
}

/// Checks a security key's answer for the half login of `cookie`: the credential to record
/// (`password+security key`) when it is one of the account's keys, signed our challenge, and
/// its counter moved on (the store compares and sets it in one step).
async fn security_key_login(
    context: &WebContext,
    pages: &Pages,
    visit: Visit,
    account: &Account,
    cookie: &str,
    form: &Form,
) -> Result<Option<&'static str>, String> {
    use crate::webauthn::{self, Assertion, Expected, MAX_CREDENTIAL_ID};
    let field = |name: &str, limit: usize| base64url_field(form, name, limit);
    let (Some(credential_id), Some(client_data_json), Some(authenticator_data), Some(signature)) = (
        field("credential_id", MAX_CREDENTIAL_ID),
        field("client_data", 1024),
        field("authenticator_data", 512),
        field("signature", 1024),
    ) else {
        return Ok(None);
    };
    // Keys stand in for the code only while the second factor is on.
    match pages.identity.mfa_status(&account.address).await {
        Ok(sealmail_identity::MfaStatus::Active { .. }) => {}
        Ok(_) => return Ok(None),
        Err(error) => return Err(error.to_string()),
    }
    let keys = context
        .store
        .security_keys(account.id)
        .await
        .map_err(|error| error.to_string())?;
    let Some(key) = keys.into_iter().find(|k| k.credential_id == credential_id) else {
        return Ok(None);
    };
    let challenge = webauthn::challenge(KEY_LOGIN, cookie);
    let expected = Expected {
        rp_id: context.hostname.as_str(),
        challenge: &challenge,
        ports: &[visit.local.port()],
    };
    let assertion = Assertion {
        credential_id,
        client_data_json,
        authenticator_data,
        signature,
    };
    let sign_count = match webauthn::verify_assertion(&assertion, &key.public_key, &expected) {
        Ok(count) => count,
        Err(error) => {
            tracing::info!(%error, "security key refused");
            return Ok(None);
        }
    };
    let recorded = context
        .store
        .security_key_used(account.id, &key.credential_id, sign_count, now_unix())
        .await
        .map_err(|error| error.to_string())?;
    if !recorded {
        // A counter that did not move on: a replayed answer or a cloned key.
        tracing::warn!(key = %key.name, sign_count, "security key counter did not increase");
        return Ok(None);
    }
    Ok(Some("password+security key"))
}

/// An answer after which the connection closes: a banned client keeps no open connection to
/// go on guessing through (bans are otherwise checked when a connection is accepted).
fn closing(mut response: Answer) -> Answer {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The answer for a client banned while its connection was open.
fn banned() -> Answer {
    closing(views::message_page(
        "Refused",
        "Too many failed attempts from your address; try again later.",
        StatusCode::FORBIDDEN,
    ))
}

/// How checking the signed-in user's password again ended.
pub(crate) enum Reauthentication {
    Confirmed,
    /// Wrong (counted toward a ban like a failed login).
    Refused,
    /// The page to answer with instead: the client is banned, or the check could not be made.
    Stop(Answer),
}

/// Checks the password a form carries before a change that outlives the session (an app
/// password, a second factor, a certificate, a new password): a stolen session alone cannot
/// make them. The account's throttle and the address's ban count apply as at login.
pub(crate) async fn reauthenticate(
    pages: &Pages,
    visit: Visit,
    user: &SignedIn,
    password: &str,
) -> Reauthentication {
    if pages.guard.is_banned(visit.peer) {
        return Reauthentication::Stop(banned());
    }
    let address = user.account.address.to_string();
    if pages.guard.wait_for_turn(&address, visit.peer).await.is_err() {
        return Reauthentication::Stop(views::signed_message_page(
            user,
            "Busy",
            "Too many attempts on this account; try again later.",
            StatusCode::TOO_MANY_REQUESTS,
        ));
    }
    let password = Password::new(password.to_string());
    match pages
        .identity
        .verify_password(&user.account.address, &password)
        .await
    {
        Ok(Some(account)) if account.id == user.account.id => Reauthentication::Confirmed,
        Ok(_) => {
            let ban = pages
                .guard
                .auth_failed_with(
                    visit.peer,
                    &address,
                    LISTENER,
                    Some("wrong current password".into()),
                )
                .await;
            match ban {
                Some(_) => Reauthentication::Stop(banned()),
                None => Reauthentication::Refused,
            }
        }
        Err(error) => {
            tracing::error!(%error, "a password could not be checked");
            Reauthentication::Stop(views::message_page(
                "Unavailable",
                "Try again later.",
                StatusCode::SERVICE_UNAVAILABLE,
            ))
        }
    }
}

/// How recent an admin's login must be for changes to accounts and domains.
pub(crate) const RECENT_LOGIN_SECS: i64 = 10 * 60;

/// Whether the session's login is recent enough for an admin change that hands out or removes
/// credentials (a session left open or stolen later cannot).
pub(crate) fn recently_logged_in(user: &SignedIn) -> bool {
    now_unix() - user.session.created_at <= RECENT_LOGIN_SECS
}

/// What a user is told of a failed change: the rule it broke, or that something went wrong
/// (the details go to the log, not to the page).
pub(crate) fn user_error(error: &sealmail_identity::IdentityError) -> String {
    use sealmail_identity::IdentityError;
    use sealmail_store::StoreError;
    match error {
        IdentityError::PasswordTooShort
        | IdentityError::PasswordTooLong
        | IdentityError::Mfa(_)
        | IdentityError::BadName(_)
        | IdentityError::Store(
            StoreError::Duplicate(_) | StoreError::NotFound(_) | StoreError::NotAllowed(_),
        ) => error.to_string(),
        other => {
            tracing::error!(error = %other, "a change on the account page failed");
            "That did not work; try again later.".to_string()
        }
    }
}

/// Formats a Unix time for a page: `2026-12-05 11:50 UTC`.
pub(crate) fn when(unix: i64) -> String {
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp(unix) else {
        return unix.to_string();
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute()
    )
}

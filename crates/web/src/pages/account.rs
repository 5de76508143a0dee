//! The self-service account page: password, second factor, app passwords, sessions, the
//! account's own security events, and the settings a mail client needs.

use hyper::StatusCode;
use hyper::header;

use sealmail_config::Role;
use sealmail_guard::kind;
use sealmail_identity::{MfaStatus, Password, Scopes};
use sealmail_store::EventFilter;
use sealmail_types::clock::now_unix;

use super::views::{
    self, AccountPage, AppPasswordRow, Chrome, EndpointRow, EnrolPage, EventRow, IssuedPage, KeyRegistration,
    Row, SecurityKeyRow, SessionRow, SetupPage, ShownOncePage, render,
};
use super::{Answer, Form, Pages, Reauthentication, SignedIn, Visit, session, when};
use crate::WebContext;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Events shown on the account page.
const ACCOUNT_EVENTS: u32 = 50;

/// The account page, with `message` on top.
pub async fn overview(context: &WebContext, pages: &Pages, user: &SignedIn, message: Option<&str>) -> Answer {
    overview_with(context, pages, user, message, None, StatusCode::OK).await
}

async fn overview_with(
    context: &WebContext,
    pages: &Pages,
    user: &SignedIn,
    message: Option<&str>,
    error: Option<String>,
    status: StatusCode,
) -> Answer {
    let address = &user.account.address;
    let now = now_unix();
    let mfa_status = pages.identity.mfa_status(address).await;
    let (mfa, mfa_active) = match mfa_status {
        Ok(MfaStatus::Active {
            since,
            recovery_codes_left,
        }) => (
            format!(
                "On since {} ({recovery_codes_left} recovery codes left).",
                when(since)
            ),
            true,
        ),
        Ok(MfaStatus::Pending) => ("Set-up started but not finished.".to_string(), false),
        Ok(MfaStatus::Off) => ("Off: your password alone logs in.".to_string(), false),
        Err(error) => {
            tracing::error!(%error, "cannot read the second factor");
            ("Unknown (try again later).".to_string(), false)
        }
    };
    let app_passwords = pages
        .identity
        .app_passwords(address)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|p| AppPasswordRow {
            name: p.name,
            scopes: p.scopes,
            created: when(p.created_at),
            expires: p.expires_at.map_or("never".to_string(), when),
            last_used: match (p.last_used_at, p.last_used_from) {
                (Some(at), Some(from)) => format!("{} from {from}", when(at)),
                (Some(at), None) => when(at),
                _ => "never".to_string(),
            },
        })
        .collect();
    let sessions = context
        .store
        .web_sessions(user.account.id, now)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.credential != session::PENDING_CREDENTIAL)
        .map(|s| SessionRow {
            this_one: s.id_hash == user.session.id_hash,
            started: when(s.created_at),
            last_seen: when(s.last_seen_at),
            address: s.client_address,
            agent: s.user_agent,
            credential: s.credential,
        })
        .collect();
    let filter = EventFilter {
        since: now - 7 * 86_400,
        account: Some(address.to_string()),
        ..EventFilter::default()
    };
    let events = context
        .store
        .recent_events(&filter, ACCOUNT_EVENTS)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(event_row)
        .collect();
    let certificates = pages
        .identity
        .client_certs(address)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|c| Row {
            cells: vec![c.fingerprint, c.subject, when(c.not_after)],
        })
        .collect();
    let keys = context
        .store
        .security_keys(user.account.id)
        .await
        .unwrap_or_default();
    let exclude = keys
        .iter()
        .map(|k| URL_SAFE_NO_PAD.encode(&k.credential_id))
        .collect::<Vec<_>>()
        .join(",");
    let security_keys = keys
        .into_iter()
        .map(|k| SecurityKeyRow {
            id: k.id,
            name: k.name,
            added: when(k.created_at),
            last_used: k.last_used_at.map_or("never".to_string(), when),
        })
        .collect();
    let key_registration = KeyRegistration {
        challenge: crate::webauthn::challenge(KEY_REGISTRATION, user.cookie()),
        rp_id: context.hostname.to_string(),
        user_id: webauthn_user_id(user.account.id),
        user_name: address.to_string(),
        exclude,
    };
    render(
        &AccountPage {
            chrome: Chrome::signed("Your account", user)
                .with_message(message)
                .with_error(error.as_deref()),
            csrf: user.csrf(),
            mfa,
            mfa_active,
            app_passwords,
            sessions,
            events,
            certificates,
            security_keys,
            key_registration,
        },
        status,
    )
}

/// The label of the registration challenge (bound to the session cookie).
const KEY_REGISTRATION: &str = "register";

/// The WebAuthn user handle of an account: opaque, 16 bytes (not the address: authenticators
/// may show or keep it).
fn webauthn_user_id(account: sealmail_types::AccountId) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("sealmail webauthn user\0{}", account.0).as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

pub(crate) fn event_row(e: sealmail_store::SecurityEvent) -> EventRow {
    EventRow {
        at: when(e.at),
        kind: e.kind,
        address: e.address.unwrap_or_default(),
        account: e.account.unwrap_or_default(),
        listener: e.listener.unwrap_or_default(),
        detail: e.detail.unwrap_or_default(),
    }
}

/// `GET /setup`: the settings to type into a mail client, the user's own when signed in.
pub fn setup_page(context: &WebContext, user: Option<SignedIn>) -> Answer {
    let endpoints = context
        .endpoints
        .list
        .iter()
        .map(|e| EndpointRow {
            service: match e.role {
                Role::Imap => "Incoming mail (IMAP)".to_string(),
                _ => "Outgoing mail (SMTP submission)".to_string(),
            },
            host: context.endpoints.host.clone(),
            port: e.port,
            security: if e.implicit { "SSL/TLS" } else { "STARTTLS" }.to_string(),
        })
        .collect();
    let (chrome, address, domain) = match &user {
        Some(user) => (
            Chrome::signed("Mail client settings", user),
            user.account.address.to_string(),
            user.account.address.domain().to_string(),
        ),
        None => (
            Chrome::public("Mail client settings"),
            String::new(),
            String::new(),
        ),
    };
    render(
        &SetupPage {
            chrome,
            address,
            endpoints,
            domain,
        },
        StatusCode::OK,
    )
}

/// `GET /setup/apple.mobileconfig`: the signed-in user's account as an Apple configuration
/// profile, signed (CMS) with the certificate served for the host name, so the device shows it
/// as verified when that certificate chains to a CA it trusts.
pub async fn apple_profile(context: &WebContext, user: &SignedIn) -> Answer {
    let address = &user.account.address;
    let Some(profile) = crate::autoconfig::apple_profile(address, &context.endpoints) else {
        return views::signed_message_page(
            user,
            "No profile",
            "This server has no IMAP or no submission listener that every client may use.",
            StatusCode::NOT_FOUND,
        );
    };
    let serving = context.certificates.serving(context.hostname.as_str());
    // An RSA signature takes milliseconds: off the runtime, like other key operations.
    let signing = tokio::task::spawn_blocking(move || {
        sealmail_tls::signed_data::sign_attached(profile.as_bytes(), &serving, std::time::SystemTime::now())
            .map_err(|error| error.to_string())
    })
    .await
    .unwrap_or_else(|error| Err(error.to_string()));
    let signed = match signing {
        Ok(signed) => signed,
        Err(error) => {
            tracing::warn!(%error, "cannot sign the configuration profile");
            return views::signed_message_page(
                user,
                "No profile",
                "The profile cannot be signed with this server's certificate; the settings above work by hand.",
                StatusCode::SERVICE_UNAVAILABLE,
            );
        }
    };
    let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(signed)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-apple-aspen-config"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        header::HeaderValue::from_static("attachment; filename=\"mail.mobileconfig\""),
    );
    response
}

/// Client certificates an account may have before issuing another is refused (an admin
/// removes old ones with `sealmail user cert remove`).
pub const MAX_CLIENT_CERTS: usize = 10;

/// A form posted to `/account/...`, its CSRF token already checked.
pub async fn action(
    context: &WebContext,
    pages: &Pages,
    visit: Visit,
    user: &SignedIn,
    path: &str,
    form: Form,
) -> Answer {
    let address = &user.account.address;
    let record = |detail: String| async move {
        pages
            .guard
            .change_made(
                kind::ACCOUNT_CHANGE,
                visit.peer,
                &user.account.address.to_string(),
                detail,
            )
            .await;
    };
    let failed =
        |text: String| overview_with(context, pages, user, None, Some(text), StatusCode::BAD_REQUEST);
    // Changes that outlive this session need the password again (a stolen session cannot make
    // them); logging out does not.
    let needs_password = !matches!(
        path,
        "/account/logout"
            | "/account/logout-everywhere"
            | "/account/app-passwords/revoke"
            | "/account/security-keys/remove"
    );
    if needs_password {
        let field = if path == "/account/password" {
            "current"
        } else {
            "password"
        };
        match super::reauthenticate(pages, visit, user, form.get(field)).await {
            Reauthentication::Confirmed => {}
            Reauthentication::Refused => {
                return overview_with(
                    context,
                    pages,
                    user,
                    None,
                    Some("The password is not right.".to_string()),
                    StatusCode::UNAUTHORIZED,
                )
                .await;
            }
            Reauthentication::Stop(answer) => return answer,
        }
    }
    match path {
        "/account/logout" => {
            let _ = context.store.end_web_session(&user.session.id_hash).await;
            logged_out("You are logged out.")
        }
        "/account/logout-everywhere" => {
            let ended = context
                .store
                .end_web_sessions(user.account.id, None)
                .await
                .unwrap_or(0);
            record(format!("logged out everywhere ({ended} sessions)")).await;
            logged_out("You are logged out everywhere.")
        }
        "/account/password" => {
            if form.get("new") != form.get("again") {
                return failed("The new passwords differ.".to_string()).await;
            }
            let new = Password::new(form.get("new").to_string());
            match pages.identity.set_password(address, &new).await {
                Ok(()) => {
                    let ended = context
                        .store
                        .end_web_sessions(user.account.id, Some(&user.session.id_hash))
                        .await
                        .unwrap_or(0);
                    record(format!("password changed; {ended} other sessions ended")).await;
                    overview(
                        context,
                        pages,
                        user,
                        Some("Password changed; your other sessions were logged out."),
                    )
                    .await
                }
                Err(error) => failed(super::user_error(&error)).await,
            }
        }
        "/account/mfa/start" => match pages
            .identity
            .enable_mfa(address, context.hostname.as_str())
            .await
        {
            Ok(enrolment) => {
                let secret = secret_of(&enrolment.uri).unwrap_or_default();
                let qr_svg = match crate::qr::qr_svg(&enrolment.uri) {
                    Ok(svg) => svg,
                    Err(error) => {
                        tracing::error!(%error, "cannot draw a QR code");
                        String::new()
                    }
                };
                render(
                    &EnrolPage {
                        chrome: Chrome::signed("Set up an authenticator app", user),
                        csrf: user.csrf(),
                        qr_svg,
                        secret,
                        uri: enrolment.uri.to_string(),
                    },
                    StatusCode::OK,
                )
            }
            Err(error) => failed(super::user_error(&error)).await,
        },
        "/account/mfa/confirm" => match pages.identity.confirm_mfa(address, form.get("code")).await {
            Ok(codes) => {
                record("second factor turned on".to_string()).await;
                render(
                    &ShownOncePage {
                        chrome: Chrome::signed("Second factor on", user),
                        intro: "Your recovery codes: each logs in once in place of a code, if you lose the app. Keep them somewhere safe.".to_string(),
                        secrets: codes.iter().map(|c| c.to_string()).collect(),
                    },
                    StatusCode::OK,
                )
            }
            Err(error) => failed(super::user_error(&error)).await,
        },
        "/account/mfa/disable" => {
            let keys = context
                .store
                .security_keys(user.account.id)
                .await
                .map_or(0, |keys| keys.len());
            // The store removes the security keys with the second factor.
            match pages.identity.disable_mfa(address).await {
                Ok(_) => {
                    record(format!("second factor turned off ({keys} security keys removed)")).await;
                    overview(context, pages, user, Some("The second factor is off.")).await
                }
                Err(error) => failed(super::user_error(&error)).await,
            }
        }
        "/account/security-keys/add" => {
            add_security_key(context, pages, user, visit.local.port(), &form, record).await
        }
        "/account/security-keys/remove" => {
            let id = form.get("id").parse::<i64>().unwrap_or(0);
            let name = context
                .store
                .security_keys(user.account.id)
                .await
                .unwrap_or_default()
                .into_iter()
                .find(|k| k.id == id)
                .map(|k| k.name);
            match context.store.remove_security_key(user.account.id, id).await {
                Ok(true) => {
                    record(format!("security key {} removed", name.unwrap_or_default())).await;
                    overview(context, pages, user, Some("Security key removed.")).await
                }
                Ok(false) => failed("No such security key.".to_string()).await,
                Err(error) => {
                    tracing::error!(%error, "cannot remove a security key");
                    failed("Try again later.".to_string()).await
                }
            }
        }
        "/account/app-passwords/add" => {
            let name = form.get("name").trim().to_string();
            let Some(scopes) = Scopes::parse(form.get("scope")) else {
                return failed("Choose what the password is for.".to_string()).await;
            };
            let expires_at = match form.get("days").trim() {
                "" => None,
                text => match text.parse::<u16>() {
                    Ok(days) if days > 0 => Some(now_unix() + i64::from(days) * 86_400),
                    _ => return failed("Days must be a number from 1 to 65535.".to_string()).await,
                },
            };
            match pages
                .identity
                .add_app_password(address, &name, scopes, expires_at)
                .await
            {
                Ok(password) => {
                    record(format!("app password {name} created")).await;
                    render(
                        &ShownOncePage {
                            chrome: Chrome::signed("App password created", user),
                            intro: format!(
                                "The app password \u{201c}{name}\u{201d}: type it into the device in place of your password."
                            ),
                            secrets: vec![password.expose().to_string()],
                        },
                        StatusCode::OK,
                    )
                }
                Err(error) => failed(super::user_error(&error)).await,
            }
        }
        "/account/app-passwords/revoke" => {
            let name = form.get("name").to_string();
            match pages.identity.revoke_app_password(address, &name).await {
                Ok(()) => {
                    record(format!("app password {name} revoked")).await;
                    overview(
                        context,
                        pages,
                        user,
                        Some("App password revoked; sessions it opened end now."),
                    )
                    .await
                }
                Err(error) => failed(super::user_error(&error)).await,
            }
        }
        "/account/certificates/issue" => {
            let registered = pages
                .identity
                .client_certs(address)
                .await
                .map_or(usize::MAX, |c| c.len());
            if registered >= MAX_CLIENT_CERTS {
                return failed(format!(
                    "You have {registered} certificates; ask an admin to remove old ones before issuing another."
                ))
                .await;
            }
            match pages.console.issue_client_certificate(address).await {
                Ok(issued) => {
                    record(format!("client certificate {} issued", issued.fingerprint)).await;
                    use base64::Engine;
                    render(
                        &IssuedPage {
                            chrome: Chrome::signed("Client certificate issued", user),
                            address: address.to_string(),
                            fingerprint: issued.fingerprint,
                            until: when(issued.not_after),
                            password: issued.password,
                            file_name: format!(
                                "{}.p12",
                                address
                                    .local_part()
                                    .chars()
                                    .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) {
                                        c
                                    } else {
                                        '_'
                                    })
                                    .collect::<String>()
                            ),
                            p12_base64: base64::engine::general_purpose::STANDARD.encode(&issued.p12),
                        },
                        StatusCode::OK,
                    )
                }
                Err(error) => {
                    tracing::error!(%error, "cannot issue a client certificate");
                    failed("Certificates cannot be issued here now; ask an admin.".to_string()).await
                }
            }
        }
        _ => views::message_page("Not found", "No such page.", StatusCode::NOT_FOUND),
    }
}

/// `POST /account/security-keys/add`: the authenticator's answer to the registration the
/// page asked for, checked (`crate::webauthn`), stored under the name given.
async fn add_security_key<F, Fut>(
    context: &WebContext,
    pages: &Pages,
    user: &SignedIn,
    port: u16,
    form: &Form,
    record: F,
) -> Answer
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use crate::webauthn::{self, Expected, MAX_CREDENTIAL_ID, MAX_PUBLIC_KEY, Registration};
    let failed = |text: &str| {
        overview_with(
            context,
            pages,
            user,
            None,
            Some(text.to_string()),
            StatusCode::BAD_REQUEST,
        )
    };
    if !matches!(
        pages.identity.mfa_status(&user.account.address).await,
        Ok(MfaStatus::Active { .. })
    ) {
        return failed("Turn the second factor on first: a key stands in for its code.").await;
    }
    let name = form.get("name").trim().to_string();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return failed("Give the key a name of 1 to 64 characters.").await;
    }
    let fields = (
        super::base64url_field(form, "credential_id", MAX_CREDENTIAL_ID),
        super::base64url_field(form, "client_data", 4096),
        super::base64url_field(form, "authenticator_data", 2048),
        super::base64url_field(form, "public_key", MAX_PUBLIC_KEY),
    );
    let (Some(credential_id), Some(client_data_json), Some(authenticator_data), Some(public_key)) = fields
    else {
        return failed("The key's answer did not arrive; try again (the page needs JavaScript for keys).")
            .await;
    };
    let challenge = webauthn::challenge(KEY_REGISTRATION, user.cookie());
    let expected = Expected {
        rp_id: context.hostname.as_str(),
        challenge: &challenge,
        ports: &[port],
    };
    let response = Registration {
        credential_id,
        client_data_json,
        authenticator_data,
        public_key,
    };
    let credential = match webauthn::verify_registration(&response, &expected) {
        Ok(credential) => credential,
        Err(error) => {
            tracing::info!(%error, "security key registration refused");
            return failed(&format!("The key was not added: {error}.")).await;
        }
    };
    let key = sealmail_store::SecurityKey {
        id: 0,
        account: user.account.id,
        credential_id: credential.credential_id,
        public_key: credential.public_key,
        name: name.clone(),
        sign_count: credential.sign_count,
        created_at: now_unix(),
        last_used_at: None,
    };
    match context.store.add_security_key(key).await {
        Ok(Some(_)) => {
            record(format!("security key {name} added")).await;
            overview(context, pages, user, Some("Security key added.")).await
        }
        Ok(None) => {
            failed(&format!(
                "Not added: the key is registered already, or the account has {} keys.",
                sealmail_store::MAX_SECURITY_KEYS
            ))
            .await
        }
        Err(error) => {
            tracing::error!(%error, "cannot store a security key");
            failed("Try again later.").await
        }
    }
}

/// The login form after a log-out, with the session cookie removed.
fn logged_out(message: &str) -> Answer {
    let mut response = super::login_page_with(Some(message), None, StatusCode::OK);
    response
        .headers_mut()
        .append(header::SET_COOKIE, session::clear_cookie(session::SESSION_COOKIE));
    response
}

/// The base32 secret of an otpauth URI, to type by hand.
fn secret_of(uri: &str) -> Option<String> {
    let query = uri.split_once('?')?.1;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("secret="))
        .map(str::to_string)
}

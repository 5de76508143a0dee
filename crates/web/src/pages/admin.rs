//! The admin console: domains and their DNS records, users, the queue, bans, security events,
//! certificates, and charts of what the server has seen. Every change an admin makes is a
//! security event (`admin_action`).

use hyper::StatusCode;

use sealmail_guard::kind;
use sealmail_identity::{MfaStatus, generate_password};
use sealmail_store::EventFilter;
use sealmail_types::clock::now_unix;
use sealmail_types::{Domain, EmailAddress};

use super::account::event_row;
use super::views::{
    self, AdminBans, AdminCertificates, AdminDomains, AdminEvents, AdminOverview, AdminQueue, AdminUsers,
    BanRow, Chrome, DomainRow, FindingRow, GradeView, QueueRow, Row, ShownOncePage, UserRow, render,
};
use super::{Answer, Form, Pages, SignedIn, Visit, when};
use crate::WebContext;

/// Events shown on the events page at most.
const EVENTS_SHOWN: u32 = 200;
/// Events shown under each ban at most.
const BAN_EVENTS_SHOWN: u32 = 20;
/// Bans shown at most (the newest); the CLI lists them all.
const BANS_SHOWN: usize = 100;
/// Queued messages shown at most.
const QUEUE_SHOWN: usize = 200;
/// How far back before a ban its events are looked for.
const BAN_CAUSE_WINDOW: i64 = 3600;
/// The largest part of a queued message's header shown.
const HEADER_SHOWN: usize = 16 * 1024;

/// What `domain dns --check` found for a domain: name, type and status of each record.
type DnsCheck = (Domain, Vec<(String, String, String)>);

/// A `GET` of an admin page.
pub async fn page(context: &WebContext, pages: &Pages, user: &SignedIn, path: &str, query: &str) -> Answer {
    let param = |name: &str| -> String {
        form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.chars().take(254).collect())
            .unwrap_or_default()
    };
    match path {
        "/admin" => overview(context, pages, user, &param("period")).await,
        "/admin/users" => users(context, pages, user, None, None).await,
        "/admin/queue" => queue(context, user, param("show").parse().ok(), None, None).await,
        "/admin/bans" => bans(context, user, None, None).await,
        "/admin/events" => {
            events(
                context,
                user,
                param("kind"),
                param("address"),
                param("account"),
                param("hours"),
            )
            .await
        }
        "/admin/domains" => domains(context, pages, user, None, None, None).await,
        "/admin/certificates" => render(
            &AdminCertificates {
                chrome: Chrome::signed("Certificates", user),
                status: pages.console.certificate_status().unwrap_or_else(|e| e),
            },
            StatusCode::OK,
        ),
        _ => views::message_page("Not found", "No such page.", StatusCode::NOT_FOUND),
    }
}

/// A form posted to `/admin/...`, its CSRF token already checked.
pub async fn action(
    context: &WebContext,
    pages: &Pages,
    visit: Visit,
    user: &SignedIn,
    path: &str,
    form: Form,
) -> Answer {
    let record = |detail: String| async move {
        pages
            .guard
            .change_made(
                kind::ADMIN_ACTION,
                visit.peer,
                &user.account.address.to_string(),
                detail,
            )
            .await;
    };
    // A session left open or stolen cannot hand out or remove credentials: those changes need
    // a login from the last few minutes.
    let sensitive = matches!(
        path,
        "/admin/users/add"
            | "/admin/users/password"
            | "/admin/users/mfa-off"
            | "/admin/users/remove"
            | "/admin/domains/add"
    );
    if sensitive && !super::recently_logged_in(user) {
        return views::signed_message_page(
            user,
            "Log in again",
            "Changes to accounts and domains need a login from the last 10 minutes: log out, log in again, and repeat the change.",
            StatusCode::FORBIDDEN,
        );
    }
    match path {
        "/admin/users/add" => {
            let Ok(address) = EmailAddress::parse(form.get("address").trim()) else {
                return users(context, pages, user, None, Some("That is not an email address.")).await;
            };
            let password = match generate_password() {
                Ok(password) => password,
                Err(error) => {
                    return users(context, pages, user, None, Some(&super::user_error(&error))).await;
                }
            };
            if let Err(error) = pages.identity.add_user(&address, &password).await {
                return users(context, pages, user, None, Some(&super::user_error(&error))).await;
            }
            let admin = form.get("admin") == "on";
            if admin && let Err(error) = context.store.set_admin(&address, true).await {
                return users(
                    context,
                    pages,
                    user,
                    None,
                    Some(&super::user_error(&error.into())),
                )
                .await;
            }
            record(format!(
                "added user {address}{}",
                if admin { " (admin)" } else { "" }
            ))
            .await;
            shown_once(
                user,
                "User added",
                &format!("The password of {address}:"),
                password.expose(),
            )
        }
        "/admin/users/password" => {
            let Ok(address) = EmailAddress::parse(form.get("address")) else {
                return users(context, pages, user, None, Some("No such user.")).await;
            };
            let password = match generate_password() {
                Ok(password) => password,
                Err(error) => {
                    return users(context, pages, user, None, Some(&super::user_error(&error))).await;
                }
            };
            if let Err(error) = pages.identity.set_password(&address, &password).await {
                return users(context, pages, user, None, Some(&super::user_error(&error))).await;
            }
            if let Ok(Some(account)) = context.store.account(&address).await {
                let _ = context.store.end_web_sessions(account.id, None).await;
            }
            record(format!("set a new password for {address}")).await;
            // The user sees it among their own events too.
            pages
                .guard
                .change_made(
                    kind::ACCOUNT_CHANGE,
                    visit.peer,
                    &address.to_string(),
                    format!("new password set by the admin {}", user.account.address),
                )
                .await;
            shown_once(
                user,
                "New password",
                &format!("The new password of {address}:"),
                password.expose(),
            )
        }
        "/admin/users/mfa-off" => {
            let Ok(address) = EmailAddress::parse(form.get("address")) else {
                return users(context, pages, user, None, Some("No such user.")).await;
            };
            match pages.identity.disable_mfa(&address).await {
                Ok(_) => {
                    record(format!("removed the second factor of {address}")).await;
                    pages
                        .guard
                        .change_made(
                            kind::ACCOUNT_CHANGE,
                            visit.peer,
                            &address.to_string(),
                            format!("second factor removed by the admin {}", user.account.address),
                        )
                        .await;
                    users(
                        context,
                        pages,
                        user,
                        Some(&format!("The second factor of {address} is off.")),
                        None,
                    )
                    .await
                }
                Err(error) => users(context, pages, user, None, Some(&super::user_error(&error))).await,
            }
        }
        "/admin/users/remove" => {
            let Ok(address) = EmailAddress::parse(form.get("address")) else {
                return users(context, pages, user, None, Some("No such user.")).await;
            };
            if form.get("confirm").trim() != address.to_string() {
                return users(
                    context,
                    pages,
                    user,
                    None,
                    Some("Type the address to confirm removing it."),
                )
                .await;
            }
            if address == user.account.address {
                return users(
                    context,
                    pages,
                    user,
                    None,
                    Some("You cannot remove yourself here."),
                )
                .await;
            }
            match context.store.remove_account(&address).await {
                Ok(()) => {
                    record(format!("removed user {address}")).await;
                    users(
                        context,
                        pages,
                        user,
                        Some(&format!("Removed {address} and all their mail.")),
                        None,
                    )
                    .await
                }
                Err(error) => {
                    users(
                        context,
                        pages,
                        user,
                        None,
                        Some(&super::user_error(&error.into())),
                    )
                    .await
                }
            }
        }
        "/admin/queue/retry" | "/admin/queue/delete" => {
            let Ok(id) = form.get("id").parse::<i64>() else {
                return queue(context, user, None, None, Some("No such message.")).await;
            };
            let retry = path.ends_with("retry");
            let done = if retry {
                context.store.retry_queued(Some(id)).await.map(|n| n > 0)
            } else {
                context.store.delete_queued(id).await
            };
            match done {
                Ok(true) => {
                    let what = if retry { "retried" } else { "deleted" };
                    record(format!("{what} queued message {id}")).await;
                    queue(context, user, None, Some(&format!("Message {id} {what}.")), None).await
                }
                Ok(false) => {
                    queue(
                        context,
                        user,
                        None,
                        None,
                        Some(&format!("Message {id} is not queued.")),
                    )
                    .await
                }
                Err(error) => queue(context, user, None, None, Some(&super::user_error(&error.into()))).await,
            }
        }
        "/admin/bans/unban" => {
            // A ban names an address, or an IPv6 /64 by its network address.
            let text = form.get("address");
            let Ok(ip) = text.split('/').next().unwrap_or("").parse::<std::net::IpAddr>() else {
                return bans(context, user, None, Some("That is not an address.")).await;
            };
            match pages.guard.unban(ip).await {
                Ok(lifted) => {
                    record(format!("lifted {lifted} ban(s) of {text}")).await;
                    bans(
                        context,
                        user,
                        Some(&format!("Lifted {lifted} ban(s) of {text}.")),
                        None,
                    )
                    .await
                }
                Err(error) => bans(context, user, None, Some(&super::user_error(&error.into()))).await,
            }
        }
        "/admin/domains/add" => {
            let Ok(domain) = Domain::parse(form.get("domain").trim()) else {
                return domains(
                    context,
                    pages,
                    user,
                    None,
                    None,
                    Some("That is not a domain name."),
                )
                .await;
            };
            match pages.console.add_domain(&domain).await {
                Ok(()) => {
                    record(format!("added domain {domain}")).await;
                    domains(
                        context,
                        pages,
                        user,
                        None,
                        Some(&format!("Added {domain}; publish its records.")),
                        None,
                    )
                    .await
                }
                Err(error) => domains(context, pages, user, None, None, Some(&error)).await,
            }
        }
        "/admin/domains/rotate-dkim" => {
            let Ok(domain) = Domain::parse(form.get("domain")) else {
                return domains(
                    context,
                    pages,
                    user,
                    None,
                    None,
                    Some("That is not a domain name."),
                )
                .await;
            };
            if !context.store.domain_exists(&domain).await.unwrap_or(false) {
                return domains(
                    context,
                    pages,
                    user,
                    None,
                    None,
                    Some("That domain is not served here."),
                )
                .await;
            }
            match pages.console.rotate_dkim(&domain).await {
                Ok(selectors) => {
                    record(format!("new DKIM keys for {domain}: {}", selectors.join(", "))).await;
                    let text = format!(
                        "New DKIM keys for {domain} (selectors {}): publish their records now; they sign from the next start. The old keys stay published until their files are deleted.",
                        selectors.join(", ")
                    );
                    domains(context, pages, user, None, Some(&text), None).await
                }
                Err(error) => domains(context, pages, user, None, None, Some(&error)).await,
            }
        }
        "/admin/domains/grade" => {
            let Ok(domain) = Domain::parse(form.get("domain")) else {
                return domains(
                    context,
                    pages,
                    user,
                    None,
                    None,
                    Some("That is not a domain name."),
                )
                .await;
            };
            if !context.store.domain_exists(&domain).await.unwrap_or(false) {
                return domains(
                    context,
                    pages,
                    user,
                    None,
                    None,
                    Some("That domain is not served here."),
                )
                .await;
            }
            match pages.console.check_now(&domain) {
                Ok(()) => {
                    // It makes the server connect out to the domain's servers: audited.
                    record(format!("started a security check of {domain}")).await;
                    let text = format!(
                        "Checking {domain}: the grade and findings below change when the check ends (a minute or two; reload the page)."
                    );
                    domains(context, pages, user, None, Some(&text), None).await
                }
                Err(error) => domains(context, pages, user, None, None, Some(&error)).await,
            }
        }
        "/admin/domains/check" => {
            let Ok(domain) = Domain::parse(form.get("domain")) else {
                return domains(
                    context,
                    pages,
                    user,
                    None,
                    None,
                    Some("That is not a domain name."),
                )
                .await;
            };
            match pages.console.check_dns(&domain).await {
                Ok(found) => domains(context, pages, user, Some((domain, found)), None, None).await,
                Err(error) => domains(context, pages, user, None, None, Some(&error)).await,
            }
        }
        _ => views::message_page("Not found", "No such page.", StatusCode::NOT_FOUND),
    }
}

fn shown_once(user: &SignedIn, title: &str, intro: &str, secret: &str) -> Answer {
    render(
        &ShownOncePage {
            chrome: Chrome::signed(title, user),
            intro: intro.to_string(),
            secrets: vec![secret.to_string()],
        },
        StatusCode::OK,
    )
}

fn status_of(error: Option<&str>) -> StatusCode {
    if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    }
}

async fn overview(context: &WebContext, pages: &Pages, user: &SignedIn, period: &str) -> Answer {
    let now = now_unix();
    let week = period == "7d";
    let count = |n: Result<usize, sealmail_store::StoreError>| n.map_or("?".to_string(), |n| n.to_string());
    let facts = vec![
        Row {
            cells: vec![
                "Domains".into(),
                count(context.store.list_domains().await.map(|d| d.len())),
            ],
        },
        Row {
            cells: vec![
                "Users".into(),
                count(context.store.list_accounts().await.map(|a| a.len())),
            ],
        },
        Row {
            cells: vec![
                "Queued messages".into(),
                count(context.store.queue().await.map(|q| q.len())),
            ],
        },
        Row {
            cells: vec![
                "Bans in force".into(),
                count(context.store.active_bans(now).await.map(|b| b.len())),
            ],
        },
    ];
    let _ = pages;
    render(
        &AdminOverview {
            chrome: Chrome::signed("Admin", user),
            facts,
            charts: crate::pages::charts(now, week),
            period: if week { "7 days" } else { "24 hours" }.to_string(),
        },
        StatusCode::OK,
    )
}

async fn users(
    context: &WebContext,
    pages: &Pages,
    user: &SignedIn,
    message: Option<&str>,
    error: Option<&str>,
) -> Answer {
    let admins = context.store.admins().await.unwrap_or_default();
    let mut rows = Vec::new();
    for account in context.store.list_accounts().await.unwrap_or_default() {
        let mfa = match pages.identity.mfa_status(&account.address).await {
            Ok(MfaStatus::Active { .. }) => "on",
            Ok(MfaStatus::Pending) => "set-up started",
            Ok(MfaStatus::Off) => "off",
            Err(_) => "?",
        };
        let app_passwords = pages
            .identity
            .app_passwords(&account.address)
            .await
            .map_or(0, |p| p.len());
        rows.push(UserRow {
            admin: admins.contains(&account.address),
            address: account.address.to_string(),
            mfa: mfa.to_string(),
            app_passwords,
        });
    }
    render(
        &AdminUsers {
            chrome: Chrome::signed("Users", user)
                .with_message(message)
                .with_error(error),
            csrf: user.csrf(),
            users: rows,
        },
        status_of(error),
    )
}

async fn queue(
    context: &WebContext,
    user: &SignedIn,
    show: Option<i64>,
    message: Option<&str>,
    error: Option<&str>,
) -> Answer {
    let entries = context
        .store
        .queue()
        .await
        .unwrap_or_default()
        .into_iter()
        .take(QUEUE_SHOWN)
        .map(|q| QueueRow {
            id: q.id,
            sender: q.sender,
            size: q.size,
            created: when(q.created_at),
            recipients: q
                .recipients
                .into_iter()
                .map(|r| Row {
                    cells: vec![
                        r.address,
                        r.status,
                        r.attempts.to_string(),
                        when(r.next_attempt_at),
                        r.last_error.unwrap_or_default(),
                    ],
                })
                .collect(),
        })
        .collect();
    let header = match show {
        Some(id) => match context.store.queued_content(id).await {
            Ok(content) => {
                let end = content
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .unwrap_or(content.len())
                    .min(HEADER_SHOWN);
                Some((id, String::from_utf8_lossy(&content[..end]).into_owned()))
            }
            Err(_) => None,
        },
        None => None,
    };
    render(
        &AdminQueue {
            chrome: Chrome::signed("Queue", user)
                .with_message(message)
                .with_error(error),
            csrf: user.csrf(),
            entries,
            header,
        },
        status_of(error),
    )
}

async fn bans(context: &WebContext, user: &SignedIn, message: Option<&str>, error: Option<&str>) -> Answer {
    let mut rows = Vec::new();
    let all = context.store.active_bans(now_unix()).await.unwrap_or_default();
    let hidden = all.len().saturating_sub(BANS_SHOWN);
    for ban in all.into_iter().take(BANS_SHOWN) {
        // Every ban is explainable: the events from its address in the hour before it. An
        // IPv4 ban names the address events record; an IPv6 ban names its /64, so its events
        // are picked out here.
        let single = !ban.address.contains('/');
        let filter = EventFilter {
            since: ban.created_at - BAN_CAUSE_WINDOW,
            until: Some(ban.created_at),
            address: single.then(|| ban.address.clone()),
            ..EventFilter::default()
        };
        let limit = if single { BAN_EVENTS_SHOWN } else { EVENTS_SHOWN };
        let causes: Vec<_> = context
            .store
            .recent_events(&filter, limit)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|event| {
                event
                    .address
                    .as_deref()
                    .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                    .is_some_and(|ip| sealmail_guard::ban_key(ip) == ban.address)
            })
            .take(BAN_EVENTS_SHOWN as usize)
            .map(event_row)
            .collect();
        rows.push(BanRow {
            address: ban.address,
            until: when(ban.until),
            level: ban.level,
            reason: ban.reason,
            events: causes,
        });
    }
    let more = (hidden > 0)
        .then(|| format!("{hidden} more bans are in force; `sealmail security bans list` lists them all."));
    let message = message.map(str::to_string).or(more);
    render(
        &AdminBans {
            chrome: Chrome::signed("Bans", user)
                .with_message(message.as_deref())
                .with_error(error),
            csrf: user.csrf(),
            bans: rows,
        },
        status_of(error),
    )
}

async fn events(
    context: &WebContext,
    user: &SignedIn,
    kind: String,
    address: String,
    account: String,
    hours: String,
) -> Answer {
    let hours = hours
        .parse::<i64>()
        .ok()
        .filter(|h| (1..=24 * 31).contains(h))
        .unwrap_or(24);
    let nonempty = |s: &String| (!s.is_empty()).then(|| s.clone());
    let filter = EventFilter {
        since: now_unix() - hours * 3600,
        kind: nonempty(&kind),
        address: nonempty(&address),
        account: nonempty(&account),
        until: None,
    };
    let rows = context
        .store
        .recent_events(&filter, EVENTS_SHOWN)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(event_row)
        .collect();
    render(
        &AdminEvents {
            chrome: Chrome::signed("Security events", user),
            kind,
            address,
            account,
            hours,
            events: rows,
        },
        StatusCode::OK,
    )
}

async fn domains(
    context: &WebContext,
    pages: &Pages,
    user: &SignedIn,
    checked: Option<DnsCheck>,
    message: Option<&str>,
    error: Option<&str>,
) -> Answer {
    let mut rows = Vec::new();
    let mut graded: std::collections::HashMap<String, sealmail_store::DomainCheck> = context
        .store
        .domain_checks()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.domain.clone(), c))
        .collect();
    for domain in context.store.list_domains().await.unwrap_or_default() {
        let records = pages.console.dns_records(&domain).await.unwrap_or_else(|e| e);
        let check = match &checked {
            Some((name, found)) if *name == domain => found
                .iter()
                .map(|(name, kind, status)| Row {
                    cells: vec![name.clone(), kind.clone(), status.clone()],
                })
                .collect(),
            _ => Vec::new(),
        };
        rows.push(DomainRow {
            name: domain.to_string(),
            records,
            check,
            graded: graded.remove(domain.as_str()).map(grade_view),
        });
    }
    render(
        &AdminDomains {
            chrome: Chrome::signed("Domains", user)
                .with_message(message)
                .with_error(error),
            csrf: user.csrf(),
            domains: rows,
        },
        status_of(error),
    )
}

/// The last daily check as the domains page shows it: the report's WARN and FAIL findings
/// (FAIL first) with their fixes, read by the names of docs/CHECK-JSON.md.
fn grade_view(check: sealmail_store::DomainCheck) -> GradeView {
    let report: serde_json::Value = serde_json::from_str(&check.report).unwrap_or_default();
    let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_string();
    let mut findings: Vec<FindingRow> = report["checks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|c| c["status"] == "FAIL" || c["status"] == "WARN")
        .map(|c| FindingRow {
            status: text(&c["status"]),
            id: text(&c["id"]),
            detail: text(&c["detail"]),
            fix: text(&c["fix"]),
        })
        .collect();
    findings.sort_by_key(|f| f.status != "FAIL");
    GradeView {
        grade: check.grade,
        score: check.score,
        when: when(check.checked_at),
        node: check.node,
        findings,
    }
}

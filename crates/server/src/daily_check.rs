//! The server's check of its own domains (issue 20): every served domain goes through the
//! same checks as `sealmail check DOMAIN` once per `[check] interval_secs` (a day), and the
//! grade is recorded in the store (`domain_checks`, shown by the admin console), shown on
//! `/metrics` (`sealmail_check_score`, `sealmail_check_grade`) and, when it is lower than the
//! last one, logged as a warning and recorded as a `check_grade_dropped` security event.
//!
//! What is looked at is what the world sees: the domain's MX hosts as published, on port 25;
//! submission and IMAP on our `hostname` (closed client ports are only noted); the MTA-STS
//! policy over HTTPS; the DKIM keys of the selectors we sign with. The ports are the standard
//! ones unless `[check] ports` says otherwise (a test installation, or one behind a port
//! forward that the server itself cannot take); certificates are checked against the system's
//! roots and `[delivery] trust_anchors` (a private CA the admin already trusts for delivery).
//!
//! Nodes sharing a store take turns through it: a node checks a domain only after claiming
//! it (`ReportStore::claim_domain_check`), which succeeds only when the last check is about
//! an interval old and no other node is running one; every node shows the recorded grades on
//! its own `/metrics`. The first round waits a random one to five minutes after start, so a
//! restart (or several nodes started together) does not check at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sealmail_check::{Grade, Report, Status};
use sealmail_store::{DomainCheck, Store};
use tokio_util::sync::CancellationToken;

/// The longest wait between two looks at which domains are due: the interval, at most an hour.
const MAX_WAKE: Duration = Duration::from_secs(3600);
/// The first round comes this long after start at least, and at most [`FIRST_MAX`] (both
/// capped at the interval, for tests).
const FIRST_MIN: Duration = Duration::from_secs(60);
const FIRST_MAX: Duration = Duration::from_secs(300);
/// How long one domain's check may take before it is abandoned; the checks are bounded
/// themselves (150 s per server, in parallel), this only keeps a stuck one from holding the
/// claim forever.
const CHECK_BUDGET: Duration = Duration::from_secs(20 * 60);
/// How long a claim holds: longer than [`CHECK_BUDGET`], so a running check keeps it.
const CLAIM_SECS: i64 = 30 * 60;
/// Failing checks named in a `check_grade_dropped` event at most.
const FAILURES_NAMED: usize = 20;

/// What the task needs, taken from the configuration at start.
pub struct DailyCheck {
    pub store: Arc<dyn Store>,
    pub guard: Arc<sealmail_guard::Guard>,
    pub dns: sealmail_dns::Dns,
    pub node: String,
    pub interval: Duration,
    /// Selectors, hosts, ports and roots; the selectors are filled in per domain.
    pub settings: sealmail_check::Settings,
    pub dkim_dir: PathBuf,
    /// One check at a time on this node, the daily rounds' and the admin console's alike.
    pub running: Arc<tokio::sync::Mutex<()>>,
}

impl DailyCheck {
    /// The task for `config`, `None` when `[check] daily = false`.
    pub fn from_config(
        config: &sealmail_config::Config,
        store: Arc<dyn Store>,
        guard: Arc<sealmail_guard::Guard>,
        dns: sealmail_dns::Dns,
    ) -> anyhow::Result<Option<DailyCheck>> {
        if !config.check.daily {
            return Ok(None);
        }
        let ports = match &config.check.ports {
            Some(text) => sealmail_check::servers::Ports::parse(text)
                .map_err(|e| crate::cli::usage(format!("check.ports: {e}")))?,
            None => sealmail_check::servers::Ports::default(),
        };
        Ok(Some(DailyCheck {
            store,
            guard,
            dns,
            node: config.server.node_name.clone(),
            interval: config.check.interval,
            settings: sealmail_check::Settings {
                dkim_selectors: Vec::new(),
                message: None,
                hosts: vec![config.hostname.to_string()],
                // Our own attacks would count toward our own bans; the admin runs them by hand.
                active: false,
                ports,
                ca_file: config.delivery.trust_anchors.clone(),
            },
            dkim_dir: config.data_dir.join(sealmail_mailauth::signing::DKIM_DIR),
            running: Arc::new(tokio::sync::Mutex::new(())),
        }))
    }

    /// Runs until `shutdown`: a first round a random while after start, then a look every
    /// interval (at most every hour) at which domains are due.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let wake = self.interval.min(MAX_WAKE);
        let first = first_delay(self.interval);
        tracing::info!(
            first_in_secs = first.as_secs(),
            interval_secs = self.interval.as_secs(),
            "daily check of the served domains scheduled"
        );
        let mut pause = first;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.round(wake) => {}
            }
            pause = wake;
        }
    }

    /// Checks every served domain that is due and this node could claim; shows every
    /// recorded grade on `/metrics`.
    async fn round(&self, wake: Duration) {
        let domains: Vec<String> = match self.store.list_domains().await {
            Ok(domains) => domains.iter().map(|d| d.to_string()).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "daily check: cannot list the domains; trying again later");
                return;
            }
        };
        let mut last: HashMap<String, DomainCheck> = match self.store.domain_checks().await {
            Ok(checks) => checks.into_iter().map(|c| (c.domain.clone(), c)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "daily check: cannot read the last results; trying again later");
                return;
            }
        };
        sealmail_metrics::keep_check_results(&domains);
        for domain in &domains {
            // Another node's result (or one from before a restart) shows here too.
            if let Some(check) = last.get(domain) {
                show(domain, check.score, Grade::parse(&check.grade));
            }
            // The turn first, then the claim: a claim must not age while a "Check now" of
            // another domain runs, or another node could claim the domain too.
            let _turn = self.running.lock().await;
            let now = sealmail_types::clock::now_unix();
            // Due when the last check is about an interval old: half a wake early rather than a
            // whole wake late, so the time of day stays put.
            let due_before = now - self.interval.as_secs() as i64 + (wake.as_secs() / 2) as i64;
            match self
                .store
                .claim_domain_check(domain, &self.node, due_before, now, now + CLAIM_SECS)
                .await
            {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(%domain, error = %e, "daily check: cannot claim the check");
                    continue;
                }
            }
            // Read again after claiming: a "Check now" may have recorded a newer result.
            let previous = match self.store.domain_checks().await {
                Ok(checks) => checks.into_iter().find(|c| &c.domain == domain),
                Err(_) => last.remove(domain),
            };
            self.check(domain, previous).await;
        }
    }

    /// The admin console's "Check now": checks `domain` in the background whatever its last
    /// check's age, unless a check is running on this node or another node is checking it.
    pub fn check_now(self: &Arc<Self>, domain: String) -> Result<(), String> {
        let turn = self
            .running
            .clone()
            .try_lock_owned()
            .map_err(|_| "A check is running already; its result shows here when it ends.".to_string())?;
        let this = self.clone();
        tokio::spawn(async move {
            let _turn = turn;
            let now = sealmail_types::clock::now_unix();
            match this
                .store
                .claim_domain_check(&domain, &this.node, i64::MAX, now, now + CLAIM_SECS)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(%domain, "check now: another node is checking the domain");
                    return;
                }
                Err(e) => {
                    tracing::warn!(%domain, error = %e, "check now: cannot claim the check");
                    return;
                }
            }
            let previous = match this.store.domain_checks().await {
                Ok(checks) => checks.into_iter().find(|c| c.domain == domain),
                Err(e) => {
                    tracing::warn!(%domain, error = %e, "check now: cannot read the last result");
                    None
                }
            };
            this.check(&domain, previous).await;
        });
        Ok(())
    }

    /// Checks `domain`, records the result and says whether the grade dropped since `previous`.
    async fn check(&self, domain: &str, previous: Option<DomainCheck>) {
        let mut settings = self.settings.clone();
        settings.dkim_selectors = sealmail_mailauth::signing::active_selectors(&self.dkim_dir, domain);
        let now = sealmail_types::clock::now_unix();
        let report = match tokio::time::timeout(
            CHECK_BUDGET,
            sealmail_check::check(&self.dns, domain, &settings, now),
        )
        .await
        {
            Ok(Ok(report)) => report,
            // Nothing recorded: the claim lapses and a later round tries again.
            Ok(Err(e)) => {
                tracing::warn!(%domain, error = %e, "daily check: the check could not be made");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    %domain,
                    budget_secs = CHECK_BUDGET.as_secs(),
                    "daily check: the check did not finish in time"
                );
                return;
            }
        };
        let recorded = DomainCheck {
            domain: domain.to_string(),
            checked_at: report.checked_at,
            grade: report.grade.letter().to_string(),
            score: i64::from(report.score),
            report: report.json(),
            node: self.node.clone(),
        };
        if let Err(e) = self.store.record_domain_check(recorded).await {
            tracing::warn!(%domain, error = %e, "daily check: the result could not be recorded");
        }
        show(domain, i64::from(report.score), Some(report.grade));
        let before = previous.as_ref().and_then(|p| Grade::parse(&p.grade));
        match before {
            // Grades order A first: a greater grade is a worse one.
            Some(before) if report.grade > before => {
                let detail = dropped(&report, before);
                tracing::warn!(
                    %domain,
                    from = before.letter(),
                    to = report.grade.letter(),
                    score = report.score,
                    %detail,
                    "daily check: the grade of a served domain dropped"
                );
                self.guard.check_grade_dropped(detail).await;
            }
            _ => tracing::info!(
                %domain,
                grade = report.grade.letter(),
                score = report.score,
                "daily check: domain checked"
            ),
        }
    }
}

/// Shows a domain's result on `/metrics`.
fn show(domain: &str, score: i64, grade: Option<Grade>) {
    let Some(grade) = grade else { return };
    let points = match grade {
        Grade::A => 4,
        Grade::B => 3,
        Grade::C => 2,
        Grade::D => 1,
        Grade::F => 0,
    };
    sealmail_metrics::set_check_result(domain, score.clamp(0, 100) as u32, points);
}

/// The detail of a `check_grade_dropped` event: the domain, both grades, the score, and the
/// ids of the failing checks (then the warnings), which say where to look.
fn dropped(report: &Report, before: Grade) -> String {
    let named = |status: Status| -> Vec<&str> {
        report
            .checks
            .iter()
            .filter(|c| c.status == status)
            .map(|c| c.id.as_str())
            .collect()
    };
    let (fails, warns) = (named(Status::Fail), named(Status::Warn));
    let list = |ids: &[&str]| {
        let mut text = ids
            .iter()
            .take(FAILURES_NAMED)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        if ids.len() > FAILURES_NAMED {
            text.push_str(&format!(" and {} more", ids.len() - FAILURES_NAMED));
        }
        if text.is_empty() { "none".to_string() } else { text }
    };
    format!(
        "domain {}: grade {} -> {} (score {}); fail: {}; warn: {}",
        report.domain,
        before.letter(),
        report.grade.letter(),
        report.score,
        list(&fails),
        list(&warns)
    )
}

/// A random time from [`FIRST_MIN`] to [`FIRST_MAX`], at most `interval`. The randomness is
/// std's per-process hash seed: a jitter needs no more.
fn first_delay(interval: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let spread = (FIRST_MAX - FIRST_MIN).as_secs().max(1);
    (FIRST_MIN + Duration::from_secs(random % spread)).min(interval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealmail_check::{Check, Pillar};

    #[test]
    fn a_drop_names_both_grades_and_the_failing_checks() {
        let report = Report::new(
            "example.org",
            0,
            vec![
                Check::new("dmarc", Pillar::Authentication, Status::Fail, "none"),
                Check::new("tls-rpt", Pillar::Encryption, Status::Warn, "none"),
                Check::new("mx", Pillar::ProtocolSupport, Status::Pass, "ok"),
            ],
        );
        assert_eq!(
            dropped(&report, Grade::A),
            "domain example.org: grade A -> B (score 81); fail: dmarc; warn: tls-rpt"
        );
    }

    #[test]
    fn the_first_round_waits_one_to_five_minutes_at_most_an_interval() {
        for _ in 0..50 {
            let first = first_delay(Duration::from_secs(86_400));
            assert!((FIRST_MIN..FIRST_MAX).contains(&first), "{first:?}");
        }
        assert_eq!(first_delay(Duration::from_secs(2)), Duration::from_secs(2));
    }
}

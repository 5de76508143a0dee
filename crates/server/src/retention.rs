//! The hourly clean-up: what the store keeps only for a while (expunge tombstones, TLS
//! results, expired MTA-STS policies, revocations of expired certificates, expired web
//! sessions, daily checks of domains no longer checked) is pruned by the rules of [`sealmail_store::Retention`].

use std::sync::Arc;
use std::time::Duration;

use sealmail_store::{Retention, Store};
use tokio_util::sync::CancellationToken;

const EVERY: Duration = Duration::from_secs(3600);

/// Prunes at start and then every hour until `shutdown`.
pub async fn run(store: Arc<dyn Store>, shutdown: CancellationToken) {
    loop {
        let now = sealmail_types::clock::now_unix();
        match store.prune(Retention::at(now)).await {
            Ok(pruned) => tracing::info!(
                tombstones = pruned.tombstones,
                tls_results = pruned.tls_results,
                tls_reports_sent = pruned.tls_reports_sent,
                mta_sts_policies = pruned.sts_policies,
                revoked_certs = pruned.revoked_certs,
                web_sessions = pruned.web_sessions,
                domain_checks = pruned.domain_checks,
                "retention: old rows pruned"
            ),
            Err(e) => tracing::warn!(error = %e, "retention: pruning failed; trying again in an hour"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

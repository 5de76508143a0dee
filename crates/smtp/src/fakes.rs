//! Fakes of what only an SMTP session depends on (inbound verdicts, DKIM signing); the
//! shared ones (logins, abuse reporting, a real store) are `sealmail_testkit::fakes`.

use std::sync::Mutex;

use sealmail_mailauth::inbound::{Arrival, Disposition, InboundPolicy, InboundVerdicts, Verdict};
use sealmail_mailauth::signing::{DkimError, MessageSigning};
pub use sealmail_testkit::fakes::*;
pub use sealmail_testkit::{TestResult, ctx};

/// Gives the configured disposition and records the content it was asked about.
pub struct FakeVerdicts {
    pub disposition: Disposition,
    pub from_domain: String,
    pub dmarc: &'static str,
    pub seen: Mutex<Vec<Vec<u8>>>,
}

impl FakeVerdicts {
    pub fn new(disposition: Disposition) -> FakeVerdicts {
        FakeVerdicts {
            disposition,
            from_domain: "b.test".into(),
            dmarc: "pass",
            seen: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait::async_trait]
impl InboundVerdicts for FakeVerdicts {
    async fn verdict(&self, _: Arrival<'_>, message: &[u8], _: &InboundPolicy) -> Verdict {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message.to_vec());
        Verdict {
            header: "Authentication-Results: mx.a.test; dmarc=pass (fake)\r\n".into(),
            disposition: self.disposition.clone(),
            dmarc: self.dmarc,
            from_domain: self.from_domain.clone(),
        }
    }
}

/// Signs for `a.test` with a marker field, recording what it signed; or fails.
#[derive(Default)]
pub struct FakeSigner {
    pub fail: bool,
    pub signed: Mutex<Vec<Vec<u8>>>,
}

impl MessageSigning for FakeSigner {
    fn signs_for(&self, domain: &str) -> bool {
        domain == "a.test"
    }

    fn sign(&self, _domain: &str, message: &[u8]) -> Result<Vec<u8>, DkimError> {
        if self.fail {
            return Err(DkimError::Sign("the fake refuses".into()));
        }
        self.signed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message.to_vec());
        Ok(b"DKIM-Signature: v=1; d=a.test; fake\r\n".to_vec())
    }
}

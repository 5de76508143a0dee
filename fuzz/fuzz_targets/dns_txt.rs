//! Fuzz target: DNS TXT records as the authentication code reads them: mail-auth's SPF, DKIM
//! key, DMARC, MTA-STS and TLS-RPT record parsers, and ours built on them: the TLS-RPT report
//! destinations (`sealmail_delivery::tls_rpt::destinations`) and the MTA-STS policy body
//! (`sealmail_delivery::mta_sts::Policy::parse`, fetched over HTTPS but as hostile).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::Dmarc;
use mail_auth::mta_sts::{MtaSts, TlsRpt};
use mail_auth::spf::Spf;
use sealmail_delivery::mta_sts::Policy;
use sealmail_delivery::tls_rpt::destinations;

fuzz_target!(|record: &[u8]| {
    let _ = Spf::parse(record);
    let _ = DomainKey::parse(record);
    let _ = Dmarc::parse(record);
    let _ = MtaSts::parse(record);
    let _ = TlsRpt::parse(record);
    if let Some(found) = destinations("example.org", record) {
        assert!(found.mail.len() + found.https.len() <= 5);
        for address in &found.mail {
            assert!(!address.contains(['\r', '\n', '<', '>', ',']));
        }
        for url in &found.https {
            assert!(url.starts_with("https://"));
        }
    }
    if let Ok(body) = std::str::from_utf8(record)
        && let Ok(policy) = Policy::parse("id", body)
    {
        for mx in &policy.mx {
            let _ = policy.allows(&mx.to_string());
        }
        let _ = policy.allows("mx.example.org");
    }
});

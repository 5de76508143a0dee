//! Fuzz target: our SPF evaluator (`sealmail_mailauth::spf`, RFC 7208) end to end: record
//! parsing, macro expansion and `check_host()` with include, redirect, exists, a, mx and ptr,
//! over an in-memory DNS whose TXT records come from the input. The first input byte chooses
//! the client address (IPv4, IPv6, IPv4-mapped); the rest is records separated by newlines:
//! the first is the checked domain's, a name's TXT is one of the others (by a hash of the name).
//!
//! Checked: it ends (the lookup limits bound the work however the records refer to each
//! other), never panics, and an explanation stays within its bound.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use sealmail_mailauth::spf::{Answer, SpfDns, check_host};

struct Zone {
    records: Vec<Vec<u8>>,
}

fn pick(name: &str, n: usize) -> usize {
    name.bytes()
        .fold(7usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b)))
        % n
}

impl SpfDns for Zone {
    async fn txt(&self, name: &str) -> Answer<Vec<u8>> {
        if name == "example.org" {
            return Ok(self.records.first().cloned().into_iter().collect());
        }
        if name.len() % 5 == 0 {
            return Ok(Vec::new());
        }
        Ok(vec![self.records[pick(name, self.records.len())].clone()])
    }
    async fn a(&self, name: &str) -> Answer<Ipv4Addr> {
        Ok(if name.len() % 3 == 0 {
            vec![Ipv4Addr::new(192, 0, 2, 1)]
        } else {
            Vec::new()
        })
    }
    async fn aaaa(&self, name: &str) -> Answer<Ipv6Addr> {
        Ok(if name.len() % 3 == 1 {
            vec![Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)]
        } else {
            Vec::new()
        })
    }
    async fn mx(&self, name: &str) -> Answer<String> {
        Ok((0..name.len() % 13).map(|i| format!("mx{i}.{name}")).collect())
    }
    async fn ptr(&self, _ip: IpAddr) -> Answer<String> {
        Ok(vec!["host.example.org".to_string(), "x.example.net".to_string()])
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&which, rest)) = input.split_first() else {
        return;
    };
    let records: Vec<Vec<u8>> = rest.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    let ip = match which % 3 {
        0 => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        1 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        _ => IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()),
    };
    let zone = Zone { records };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    let check = runtime.block_on(check_host(
        &zone,
        ip,
        "example.org",
        "user@example.org",
        "helo.example.org",
        "mx.example.net",
    ));
    if let Some(explanation) = &check.explanation {
        assert!(
            explanation.len() <= 1024,
            "explanation of {} bytes",
            explanation.len()
        );
    }
});

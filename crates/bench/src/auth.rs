//! `sealmail-bench auth`: the cost of sender authentication per message, in process, against
//! the physical floor of the same cryptography.
//!
//! Verification: `Authenticator::check_inbound` on a message signed by our Signer (Ed25519 and
//! RSA-2048), with SPF, DKIM keys and DMARC served by a local DNS server and the resolver's
//! cache warm: SPF for HELO and MAIL FROM, both DKIM signatures, ARC, DMARC, the header.
//! Signing: `Signer::sign` (both signatures). Floor: what any DKIM verifier (or signer) must
//! compute, with aws-lc-rs directly: SHA-256 over the body once (both signatures use
//! relaxed/relaxed and SHA-256, so they share the body hash), SHA-256 over ~200 bytes of signed
//! header fields per signature, one Ed25519 and one RSA-2048 verification (or signature).
//!
//! "Warm DNS cache" includes negative answers: the DMARC tree walk's NXDOMAIN for `_dmarc.test`
//! is cached for its SOA's time, as a resolver caches `_dmarc.com` on the Internet.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, RsaKeyPair};
use sealmail_config::DnsConfig;
use sealmail_dns::Dns;
use sealmail_mailauth::Authenticator;
use sealmail_mailauth::inbound::{Arrival, InboundPolicy};
use sealmail_mailauth::signing::{self, Signer};
use sealmail_testkit::dns::DnsServer;

fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: Alice <alice@bench.test>\r\nTo: bob@elsewhere.test\r\nSubject: benchmark\r\nDate: Sat, 28 Nov 2026 12:00:00 +0000\r\nMessage-ID: <b@bench.test>\r\n\r\n".to_vec();
    while m.len() < size {
        m.extend_from_slice(
            b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n",
        );
    }
    m
}

/// The hashing two DKIM signatures over the same body need: the body once, ~200 bytes of
/// header per signature.
fn hash_like_dkim(body: &[u8]) {
    std::hint::black_box(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body));
    for _ in 0..2 {
        std::hint::black_box(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &body[..200.min(body.len())],
        ));
    }
}

fn per_message(total: Duration, n: usize) -> f64 {
    total.as_secs_f64() * 1e6 / n as f64
}

pub async fn run(size: usize, iterations: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let selectors = signing::generate(dir.path(), "bench.test", "202611")?;
    let signer = Signer::load(dir.path(), &["bench.test".to_string()])?;
    let body = message(size);
    let server = DnsServer::start().await.map_err(anyhow::Error::msg)?;
    for key in signing::published_keys(dir.path(), "bench.test")? {
        server.add_txt(
            &format!("{}._domainkey.bench.test", key.selector),
            &key.txt_record(),
        );
    }
    server.add_txt("bench.test", "v=spf1 ip4:192.0.2.1 -all");
    server.add_txt("mail.bench.test", "v=spf1 ip4:192.0.2.1 -all");
    server.add_txt("_dmarc.bench.test", "v=DMARC1; p=reject");
    let dns = Dns::new(&DnsConfig {
        nameservers: vec![server.addr()],
        ..DnsConfig::default()
    })?;
    let authenticator = Authenticator::new(&dns, "mx.receiver.test");
    let policy = InboundPolicy::default();

    // Signing.
    let started = Instant::now();
    let mut signed = Vec::new();
    for _ in 0..iterations {
        signed = signer.sign("bench.test", &body)?;
    }
    let sign_cost = per_message(started.elapsed(), iterations);
    let mut message = signed;
    message.extend_from_slice(&body);

    // Verification, after one pass to warm the cache.
    let arrival = Arrival {
        client: IpAddr::from([192, 0, 2, 1]),
        helo: "mail.bench.test",
        mail_from: "alice@bench.test",
    };
    let first = authenticator.check_inbound(arrival, &message, &policy).await;
    anyhow::ensure!(
        first.header.matches("dkim=pass").count() == 2 && first.header.contains("dmarc=pass"),
        "the benchmark message does not verify: {}",
        first.header
    );
    let started = Instant::now();
    for _ in 0..iterations {
        let verdict = authenticator.check_inbound(arrival, &message, &policy).await;
        std::hint::black_box(verdict);
    }
    let verify_cost = per_message(started.elapsed(), iterations);

    // The floor: the same hashing and public-key operations, nothing else.
    let rng = SystemRandom::new();
    let ed = Ed25519KeyPair::generate()?;
    let rsa = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
    let ed_sig = ed.sign(digest.as_ref());
    let mut rsa_sig = vec![0u8; rsa.public_modulus_len()];
    rsa.sign(&signature::RSA_PKCS1_SHA256, &rng, digest.as_ref(), &mut rsa_sig)?;
    let ed_public = signature::UnparsedPublicKey::new(&signature::ED25519, ed.public_key().as_ref().to_vec());
    let rsa_public = signature::UnparsedPublicKey::new(
        &signature::RSA_PKCS1_2048_8192_SHA256,
        rsa.public_key().as_ref().to_vec(),
    );
    let started = Instant::now();
    for _ in 0..iterations {
        hash_like_dkim(&body);
        ed_public.verify(digest.as_ref(), ed_sig.as_ref())?;
        rsa_public.verify(digest.as_ref(), &rsa_sig)?;
    }
    let verify_floor = per_message(started.elapsed(), iterations);
    let started = Instant::now();
    for _ in 0..iterations {
        hash_like_dkim(&body);
        std::hint::black_box(ed.sign(digest.as_ref()));
        rsa.sign(&signature::RSA_PKCS1_SHA256, &rng, digest.as_ref(), &mut rsa_sig)?;
    }
    let sign_floor = per_message(started.elapsed(), iterations);

    println!(
        "selectors: {}; message {} bytes; {iterations} iterations",
        selectors.join(", "),
        body.len()
    );
    println!(
        "inbound verification (SPF x2, DKIM ed25519+rsa, ARC, DMARC, header; warm DNS cache): {verify_cost:.1} µs/msg; floor {verify_floor:.1} µs/msg; ratio {:.2}",
        verify_cost / verify_floor
    );
    println!(
        "DKIM signing (ed25519 + rsa-2048): {sign_cost:.1} µs/msg; floor {sign_floor:.1} µs/msg; ratio {:.2}",
        sign_cost / sign_floor
    );
    Ok(())
}

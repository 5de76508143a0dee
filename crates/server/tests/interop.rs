//! Independent clients against a real sealmail: Python's smtplib (standard library) drives
//! submission and MX sessions; this test then checks the store byte for byte.

mod common;

use common::{Instance, mailbox_contents};
use sealmail_testkit::{TestResult, ctx};

/// Checks that `stored` is exactly `sent` with only sealmail's own headers (Return-Path,
/// Authentication-Results, Received, and on submission DKIM-Signature, Message-ID and Date
/// when missing) in front.
fn assert_stored_exactly(stored: &[u8], sent: &[u8], what: &str) {
    assert!(
        stored.ends_with(sent),
        "{what}: stored {} bytes do not end with the {} bytes sent",
        stored.len(),
        sent.len()
    );
    let added = String::from_utf8_lossy(&stored[..stored.len() - sent.len()]).into_owned();
    for line in added.split_terminator("\r\n") {
        let ours = [
            "Return-Path: ",
            "Authentication-Results: ",
            "Received: ",
            "DKIM-Signature: ",
            "\t",
            "Message-ID: <",
            "Date: ",
        ];
        assert!(
            ours.iter().any(|p| line.starts_with(p)),
            "{what}: unexpected added line {line:?}"
        );
    }
}

#[tokio::test]
async fn python_smtplib_submits_and_delivers_and_the_store_holds_the_exact_bytes() -> TestResult {
    let instance = Instance::quickstart().await?;
    let out = ctx(tempfile::tempdir(), "tempdir")?;
    common::run_python_client("smtplib_client.py", &instance, out.path())?;

    let sent = |name: &str| std::fs::read(out.path().join(format!("{name}.eml"))).map_err(|e| e.to_string());
    let bob = mailbox_contents(&instance.data_dir(), "bob@example.test", "INBOX").await?;
    let alice = mailbox_contents(&instance.data_dir(), "alice@example.test", "INBOX").await?;
    assert_eq!(bob.len(), 2, "multipart + SMTPUTF8 message");
    assert_eq!(alice.len(), 2, "large + inbound message");
    assert_stored_exactly(&bob[0], &sent("multipart")?, "multipart 8-bit message");
    // Submitted by alice@example.test: signed by the quickstart's keys, Ed25519 and RSA.
    let signed = String::from_utf8_lossy(&bob[0]);
    assert!(
        signed.contains("DKIM-Signature: v=1; a=ed25519-sha256;")
            && signed.contains("DKIM-Signature: v=1; a=rsa-sha256;"),
        "{signed}"
    );
    assert_stored_exactly(&alice[0], &sent("large")?, "large message");
    assert_stored_exactly(&alice[1], &sent("inbound")?, "inbound message");
    let utf8 = String::from_utf8_lossy(&bob[1]);
    assert!(
        utf8.contains("From: Jörg <jörg@remote.test>") && utf8.contains("with UTF8SMTPS"),
        "{utf8}"
    );
    Ok(())
}

//! sealmail-acme against a real ACME server: Debian's pebble, started per test on loopback
//! ports with its own TLS certificate (made here), resolving names through the test DNS
//! server. Skipped, saying so, only when pebble is not installed.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use sealmail_acme::{Acme, AcmeSettings, Challenge, Challenges, ReloadFn, rollover};
use sealmail_config::CertificateFiles;
use sealmail_testkit::pebble::Pebble;
use sealmail_tls::{ACME_TLS_ALPN, CertResolver, CertSet};

type R<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const NAME: &str = "mail.sealmail.test";
const SECOND: &str = "imap.sealmail.test";

/// Aborts a spawned task when the test ends.
struct Task(tokio::task::JoinHandle<()>);
impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn client_config(roots: &[CertificateDer<'static>], alpn: &[&[u8]]) -> R<Arc<rustls::ClientConfig>> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone())?;
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(sealmail_tls::restricted_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(store)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The TLS listener of the test: the real server configuration over `CertResolver`, offering
/// `http/1.1` and `acme-tls/1` as the HTTPS listener does.
async fn tls_listener(port: u16, resolver: Arc<CertResolver>) -> R<Task> {
    let mut config = (*sealmail_tls::server_config(resolver)?).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    Ok(Task(tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.shutdown().await;
                }
            });
        }
    })))
}

/// The HTTP-01 responder of the test; answers wrong data while `wrong` is set.
async fn http_responder(port: u16, challenges: Arc<Challenges>, wrong: Arc<AtomicBool>) -> R<Task> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    Ok(Task(tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let challenges = challenges.clone();
            let wrong = wrong.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let path = text.split_whitespace().nth(1).unwrap_or("");
                let answer = challenges.http_answer_for_path(path);
                let response = match answer {
                    Some(_) if wrong.load(Ordering::SeqCst) => {
                        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nwrong".to_string()
                    }
                    Some(body) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                    }
                };
                let _ = tcp.write_all(response.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    })))
}

/// Writes over cert.pem a certificate for `key.pem` from 20 days ago to 5 days ahead: its two
/// thirds have passed, and it ends within the 14-day alarm.
fn install_due_certificate(data: &Path) -> R {
    let key_pem = std::fs::read_to_string(data.join("acme/key.pem"))?;
    let key = rcgen::KeyPair::from_pem(&key_pem)?;
    let mut params = rcgen::CertificateParams::new(names())?;
    let now = std::time::SystemTime::now();
    params.not_before = (now - Duration::from_secs(20 * 86_400)).into();
    params.not_after = (now + Duration::from_secs(5 * 86_400)).into();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "due for renewal");
    let due = params.self_signed(&key)?;
    std::fs::write(data.join("acme/cert.pem"), due.pem())?;
    Ok(())
}

/// A server's worth of pieces: a resolver with a boot certificate, the ACME client, the
/// challenge listeners, and a count of reloads.
struct Setup {
    pebble: Pebble,
    data: tempfile::TempDir,
    resolver: Arc<CertResolver>,
    challenges: Arc<Challenges>,
    reloads: Arc<AtomicUsize>,
    wrong_http: Arc<AtomicBool>,
    _tasks: Vec<Task>,
}

impl Setup {
    fn settings(&self, challenge: Challenge) -> AcmeSettings {
        let mut settings = AcmeSettings::new(self.pebble.directory(), self.data.path());
        settings.contact = vec!["mailto:postmaster@sealmail.test".to_string()];
        settings.ca_file = Some(self.pebble.api_ca.clone());
        settings.challenge = challenge;
        settings.order_timeout = Duration::from_secs(60);
        settings
    }

    fn acme(&self, settings: AcmeSettings) -> Acme {
        Acme::new(settings, self.challenges.clone(), self.reload())
    }

    fn reload(&self) -> ReloadFn {
        let inner = sealmail_acme::resolver_reload(
            self.resolver.clone(),
            vec![sealmail_acme::AcmePaths::new(self.data.path()).certificate_files()],
        );
        let reloads = self.reloads.clone();
        Arc::new(move || {
            inner()?;
            reloads.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }

    fn cert_pem(&self) -> R<Vec<u8>> {
        Ok(std::fs::read(self.data.path().join("acme/cert.pem"))?)
    }
}

async fn setup() -> R<Option<Setup>> {
    let ports = (sealmail_testkit::free_port(), sealmail_testkit::free_port());
    let Some(pebble) = Pebble::start(&[NAME, SECOND], ports.0, ports.1).await? else {
        return Ok(None);
    };
    let data = tempfile::tempdir()?;
    let boot = CertificateFiles {
        cert: data.path().join("boot.pem"),
        key: data.path().join("boot.key"),
    };
    sealmail_tls::selfsigned::generate(&[NAME.to_string()], &boot, 30)?;
    let resolver = CertResolver::new(CertSet::load(&[boot])?);
    let challenges = Challenges::new(Some(resolver.clone()));
    let wrong_http = Arc::new(AtomicBool::new(false));
    let tasks = vec![
        tls_listener(pebble.tls_port, resolver.clone()).await?,
        http_responder(pebble.http_port, challenges.clone(), wrong_http.clone()).await?,
    ];
    Ok(Some(Setup {
        pebble,
        data,
        resolver,
        challenges,
        reloads: Arc::new(AtomicUsize::new(0)),
        wrong_http,
        _tasks: tasks,
    }))
}

/// The leaf a client trusting only `root` is served for `name` by the test TLS listener.
async fn served_leaf(port: u16, root: &CertificateDer<'static>, name: &str) -> R<CertificateDer<'static>> {
    let connector =
        tokio_rustls::TlsConnector::from(client_config(std::slice::from_ref(root), &[b"http/1.1"])?);
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let tls = connector
        .connect(ServerName::try_from(name.to_string())?, tcp)
        .await?;
    let (_, conn) = tls.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate")?;
    Ok(leaf.clone().into_owned())
}

fn names() -> Vec<String> {
    vec![NAME.to_string()]
}

fn leaf_validity(pem: &[u8]) -> R<(i64, i64, String)> {
    use x509_parser::prelude::*;
    let leaf = CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or("empty chain")??;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())?;
    Ok((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
        cert.issuer().to_string(),
    ))
}

#[tokio::test]
async fn tls_alpn_01_obtains_a_certificate_the_listener_serves() -> R {
    let Some(s) = setup().await? else {
        return Ok(());
    };
    let acme = s.acme(s.settings(Challenge::TlsAlpn01));
    let got = match acme.obtain(&names()).await {
        Ok(got) => got,
        Err(e) => return Err(format!("{e}\npebble log:\n{}", s.pebble.log()).into()),
    };
    assert_eq!(got.names, names());
    assert!(!got.key_switched);
    assert_eq!(s.reloads.load(Ordering::SeqCst), 1);
    let (not_before, not_after, issuer) = leaf_validity(&s.cert_pem()?)?;
    eprintln!(
        "pebble issued a certificate valid for {} days, issuer {issuer}",
        (not_after - not_before) / 86_400
    );

    let directory = s.pebble.api_get(s.pebble.acme_port, "/dir").await?;
    eprintln!(
        "pebble's directory offers renewalInfo (ARI): {}",
        directory.contains("renewalInfo")
    );

    // A client trusting only pebble's root is served the new certificate for the name.
    let root = s.pebble.root().await?;
    let served = served_leaf(s.pebble.tls_port, &root, NAME).await?;
    let on_disk = CertificateDer::pem_slice_iter(&s.cert_pem()?)
        .next()
        .ok_or("empty chain")??;
    assert_eq!(served, on_disk);

    // Files: private key and account 0600; the key is the one the status reports.
    use std::os::unix::fs::PermissionsExt;
    let acme_dir = s.data.path().join("acme");
    for private in ["key.pem", "account.json"] {
        let mode = std::fs::metadata(acme_dir.join(private))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{private}");
    }
    let status = sealmail_acme::status(s.data.path())?;
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].names, names());
    assert_eq!(
        Some(status[0].key_spki_sha256.clone()),
        rollover::current_spki_sha256(s.data.path())?
    );
    assert_eq!(status[0].key_spki_sha256, got.key_spki_sha256);
    assert!(status[0].by_acme && status[0].next_renewal.is_some());
    // The challenge certificate is gone once the order ended.
    assert_eq!(s.challenges.http_len(), 0);
    Ok(())
}

#[tokio::test]
async fn http_01_obtains_a_certificate() -> R {
    let Some(s) = setup().await? else {
        return Ok(());
    };
    let acme = s.acme(s.settings(Challenge::Http01));
    // Two names, one certificate; names are taken in any case, with a final dot.
    let both = vec![NAME.to_string(), format!("{}.", SECOND.to_uppercase())];
    let got = match acme.obtain(&both).await {
        Ok(got) => got,
        Err(e) => return Err(format!("{e}\npebble log:\n{}", s.pebble.log()).into()),
    };
    assert_eq!(got.names, vec![NAME.to_string(), SECOND.to_string()]);
    assert_eq!(s.reloads.load(Ordering::SeqCst), 1);
    assert_eq!(s.challenges.http_len(), 0, "answers end with the order");
    let root = s.pebble.root().await?;
    let first = served_leaf(s.pebble.tls_port, &root, NAME).await?;
    let second = served_leaf(s.pebble.tls_port, &root, SECOND).await?;
    assert_eq!(first, second);
    let mut listed = sealmail_acme::status(s.data.path())?[0].names.clone();
    listed.sort();
    assert_eq!(listed, vec![SECOND.to_string(), NAME.to_string()]);
    Ok(())
}

#[tokio::test]
async fn renewals_keep_the_key_and_a_rollover_switches_it() -> R {
    let Some(s) = setup().await? else {
        return Ok(());
    };
    let acme = s.acme(s.settings(Challenge::Http01));
    let first = acme.obtain(&names()).await?;
    let first_pem = s.cert_pem()?;
    let renewed = acme.obtain(&names()).await?;
    assert_ne!(s.cert_pem()?, first_pem, "a new certificate");
    assert_eq!(
        renewed.key_spki_sha256, first.key_spki_sha256,
        "the same key (TLSA 3 1 1 stays)"
    );

    // Prepared, but not yet waited for: the renewal keeps the current key.
    let next = rollover::prepare(s.data.path())?;
    assert_ne!(next, first.key_spki_sha256);
    assert_eq!(rollover::next_spki_sha256(s.data.path())?, Some(next.clone()));
    let waiting = acme.obtain(&names()).await?;
    assert_eq!(waiting.key_spki_sha256, first.key_spki_sha256);
    assert!(!waiting.key_switched);
    assert!(rollover::pending(s.data.path())?.is_some());

    // Asked to switch: the new key is in service, next-key.pem is key.pem now.
    let switched = acme.switch_key(&names()).await?;
    assert!(switched.key_switched);
    assert_eq!(switched.key_spki_sha256, next);
    assert_eq!(rollover::current_spki_sha256(s.data.path())?, Some(next.clone()));
    assert_eq!(rollover::pending(s.data.path())?, None);
    let root = s.pebble.root().await?;
    let served = served_leaf(s.pebble.tls_port, &root, NAME).await?;
    let spki = {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(served.as_ref())?;
        sealmail_acme::spki_sha256_hex(cert.public_key().raw)
    };
    assert_eq!(spki, next, "the listener serves the new key");

    // Once a prepared key has waited rollover_wait, a plain renewal switches.
    let mut settings = s.settings(Challenge::Http01);
    settings.rollover_wait = Duration::ZERO;
    let acme = s.acme(settings);
    let third = rollover::prepare(s.data.path())?;
    let auto = acme.obtain(&names()).await?;
    assert!(auto.key_switched);
    assert_eq!(auto.key_spki_sha256, third);
    assert!(acme.switch_key(&names()).await.is_err(), "nothing pending");
    Ok(())
}

#[tokio::test]
async fn a_failing_challenge_leaves_the_certificate_and_says_why() -> R {
    let Some(s) = setup().await? else {
        return Ok(());
    };
    let acme = s.acme(s.settings(Challenge::Http01));
    acme.obtain(&names()).await?;
    let before = s.cert_pem()?;
    let reloads = s.reloads.load(Ordering::SeqCst);

    // The responder answers wrong data.
    s.wrong_http.store(true, Ordering::SeqCst);
    let e = acme
        .obtain(&names())
        .await
        .err()
        .ok_or("a wrong answer was accepted")?;
    let text = e.to_string();
    eprintln!("wrong answer: {text}");
    assert!(text.contains("challenge failed") && text.contains(NAME), "{text}");
    assert!(text.contains("wrong"), "pebble's reason is passed on: {text}");
    assert_eq!(s.cert_pem()?, before);
    s.wrong_http.store(false, Ordering::SeqCst);

    // A name the DNS does not know.
    let e = acme
        .obtain(&[NAME.to_string(), "nowhere.sealmail.test".to_string()])
        .await
        .err()
        .ok_or("an unresolvable name was accepted")?;
    let text = e.to_string();
    eprintln!("unresolvable name: {text}");
    assert!(text.contains("nowhere.sealmail.test"), "{text}");
    assert_eq!(s.cert_pem()?, before);

    // TLS-ALPN-01 for a name pointing at an address nobody listens on. (A name of its own:
    // the orders above may leave a valid authorization for NAME, which a CA may reuse.)
    let unreachable = "unreachable.sealmail.test";
    s.pebble.dns.add_a(unreachable, Ipv4Addr::new(127, 0, 0, 2));
    let e = s
        .acme(s.settings(Challenge::TlsAlpn01))
        .obtain(&[unreachable.to_string()])
        .await
        .err()
        .ok_or_else(|| {
            format!(
                "a challenge nobody answered passed; pebble log:\n{}",
                s.pebble.log()
            )
        })?;
    eprintln!("nobody listening: {e}");
    assert!(e.to_string().contains(unreachable), "{e}");
    assert!(e.to_string().contains("Failed to connect"), "{e}");
    assert_eq!(s.cert_pem()?, before);
    assert_eq!(
        s.reloads.load(Ordering::SeqCst),
        reloads,
        "no reload after a failure"
    );
    assert_eq!(s.challenges.http_len(), 0);
    Ok(())
}

#[tokio::test]
async fn the_renewal_loop_renews_a_due_certificate_with_the_same_key() -> R {
    let Some(s) = setup().await? else {
        return Ok(());
    };
    let acme = s.acme(s.settings(Challenge::Http01));
    let first = acme.obtain(&names()).await?;

    install_due_certificate(s.data.path())?;

    let shutdown = CancellationToken::new();
    let reloads = s.reloads.load(Ordering::SeqCst);
    let run = tokio::spawn(acme.run(names(), shutdown.clone()));
    let mut renewed = None;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let pem = s.cert_pem()?;
        let (_, _, issuer) = leaf_validity(&pem)?;
        if !issuer.contains("due for renewal") && s.reloads.load(Ordering::SeqCst) > reloads {
            renewed = Some(pem);
            break;
        }
    }
    let renewed = renewed.ok_or_else(|| format!("run did not renew; pebble log:\n{}", s.pebble.log()))?;
    let status = sealmail_acme::status(s.data.path())?;
    assert_eq!(status[0].key_spki_sha256, first.key_spki_sha256, "same key");
    assert!(status[0].next_renewal.is_some());
    // Renewed and not due: the loop sleeps until shutdown.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.cert_pem()?, renewed, "no renewal while not due");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), run).await??;
    Ok(())
}

#[tokio::test]
async fn a_renewal_failing_near_the_end_rings_the_alarm_and_keeps_the_certificate() -> R {
    let Some(s) = setup().await? else {
        return Ok(());
    };
    let acme = s.acme(s.settings(Challenge::Http01));
    acme.obtain(&names()).await?;
    install_due_certificate(s.data.path())?;
    let before = s.cert_pem()?;
    s.wrong_http.store(true, Ordering::SeqCst);
    let alarms = sealmail_acme::EXPIRY_ALARMS.load(Ordering::SeqCst);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(acme.run(names(), shutdown.clone()));
    let mut rang = false;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if sealmail_acme::EXPIRY_ALARMS.load(Ordering::SeqCst) > alarms {
            rang = true;
            break;
        }
    }
    assert!(rang, "no alarm; pebble log:\n{}", s.pebble.log());
    assert_eq!(s.cert_pem()?, before, "the old certificate stays in service");
    // Backing off (a minute first): it stops at shutdown.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), run).await??;
    Ok(())
}

#[tokio::test]
async fn the_renewal_loop_drops_a_failing_name_but_keeps_the_host_name() -> R {
    let Some(s) = setup().await? else {
        return Ok(());
    };
    let acme = s.acme(s.settings(Challenge::Http01));
    // The middle name is unknown to pebble's DNS: its challenge fails.
    let wanted = vec![
        NAME.to_string(),
        "nowhere.sealmail.test".to_string(),
        SECOND.to_string(),
    ];
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(acme.clone().run(wanted, shutdown.clone()));
    let mut issued = None;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.reloads.load(Ordering::SeqCst) > 0 {
            issued = Some(sealmail_acme::status(s.data.path())?);
            break;
        }
    }
    let status = issued.ok_or_else(|| format!("no certificate; pebble log:\n{}", s.pebble.log()))?;
    let mut listed = status.first().ok_or("no status")?.names.clone();
    listed.sort();
    assert_eq!(listed, vec![SECOND.to_string(), NAME.to_string()]);
    // The reduced certificate is not due at once: no further order.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.reloads.load(Ordering::SeqCst), 1);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), run).await??;

    // When the first name (the host name) fails, nothing is issued without it.
    let e = acme
        .obtain(&["nowhere.sealmail.test".to_string(), NAME.to_string()])
        .await
        .err()
        .ok_or("an unresolvable first name was accepted")?;
    assert!(e.to_string().contains("nowhere.sealmail.test"), "{e}");
    Ok(())
}

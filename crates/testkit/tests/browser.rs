//! The browser harness itself: a real headless Chromium fills and submits a form served on
//! loopback, shows the answer, keeps its cookie, and takes a screenshot.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, bail};
use sealmail_testkit::browser::Browser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const FORM: &str = "<!doctype html><title>form</title>\
    <form method=post action=/next><input id=who name=who><button id=go type=submit>Go</button></form>";

/// Answers HTTP/1.1 requests, one per connection: `GET /` the form, `POST /next` a page that
/// repeats the submitted field and sets an HttpOnly cookie, anything else 404.
async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (mut stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Reads the head and, for a POST, its body (Content-Length).
            let (head, body) = loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return anyhow::Ok(());
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(str::to_string)
                        })
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= length {
                        break (head.to_string(), body.to_string());
                    }
                }
            };
            let answer = if head.starts_with("GET / ") {
                ("200 OK", String::new(), FORM.to_string())
            } else if head.starts_with("POST /next ") {
                let who = body.strip_prefix("who=").unwrap_or("?").replace('+', " ");
                (
                    "200 OK",
                    "Set-Cookie: session=abc; Path=/; HttpOnly; SameSite=Strict\r\n".to_string(),
                    format!("<!doctype html><title>next</title><p id=hello>Hello, {who}!</p>"),
                )
            } else {
                ("404 Not Found", String::new(), String::new())
            };
            let (status, headers, body) = answer;
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes()).await?;
            stream.shutdown().await?;
            anyhow::Ok(())
        });
    }
}

#[tokio::test]
async fn fills_a_form_and_reads_the_answer() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let server = tokio::spawn(serve(listener));
    let browser = Browser::start_resolving(&[("www.example.test", IpAddr::V4(Ipv4Addr::LOCALHOST))]).await?;
    let outcome = async {
        // By a mapped name, as the web tests reach a server that routes by Host.
        browser.goto(&format!("http://www.example.test:{port}/")).await?;
        browser.fill("#who", "Alice Example").await?;
        browser.click("#go").await?;
        let hello = browser.text("#hello").await?;
        if hello != "Hello, Alice Example!" {
            bail!("next page says {hello:?}");
        }
        if !browser.page_source().await?.contains("id=\"hello\"") {
            bail!("page source without the answer");
        }
        let cookies = browser.cookies().await?;
        let session = cookies
            .iter()
            .find(|c| c.name == "session")
            .context("no session cookie")?;
        if session.value != "abc" || !session.http_only || session.same_site.as_deref() != Some("Strict") {
            bail!("cookie {session:?}");
        }
        let path = browser.screenshot("testkit-browser-form").await?;
        let png = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
            bail!("{} is not a PNG", path.display());
        }
        // Any name not mapped does not resolve: nothing beyond loopback.
        let _ = browser.goto("http://example.com/").await;
        if browser.page_source().await?.contains("Example Domain") {
            bail!("the browser reached the internet");
        }
        anyhow::Ok(())
    }
    .await;
    let closed = browser.close().await;
    server.abort();
    outcome?;
    closed
}

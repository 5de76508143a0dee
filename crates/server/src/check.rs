//! `sealmail check DOMAIN`: runs `sealmail-check` with the resolver of `--nameserver` or of the
//! configuration, prints the report, and fails below `--fail-under`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use sealmail_check::{Grade, Report};

use crate::cli::{CheckArgs, UsageError};

pub async fn run(config_path: &Path, args: CheckArgs) -> anyhow::Result<()> {
    let fail_under = match &args.fail_under {
        Some(text) => Some(
            Grade::parse(text)
                .ok_or_else(|| UsageError(format!("--fail-under {text}: give a grade, A, B, C, D or F")))?,
        ),
        None => None,
    };
    let domain = sealmail_types::Domain::parse(args.domain.trim_end_matches('.'))
        .map_err(|e| UsageError(format!("{}: not a domain name ({e})", args.domain)))?;
    let mut dns_config = if config_path.exists() {
        sealmail_config::Config::load(config_path)
            .with_context(|| format!("reading {}", config_path.display()))?
            .dns
    } else {
        sealmail_config::DnsConfig::default()
    };
    if !args.nameserver.is_empty() {
        dns_config.nameservers = args
            .nameserver
            .iter()
            .map(|text| nameserver(text))
            .collect::<Result<_, _>>()?;
    }
    let https_port = match &args.port {
        Some(text) => https_port(text)?,
        None => None,
    };
    let dns = sealmail_dns::Dns::new(&dns_config)?;
    let options = sealmail_check::dns::Options {
        dkim_selectors: args.dkim_selector.clone(),
        https_port,
        http: Some(
            sealmail_check::dns::https_client(&dns, args.ca_file.as_deref()).map_err(anyhow::Error::msg)?,
        ),
    };
    let checks = sealmail_check::dns::check_domain(&dns, domain.as_str(), &options).await;
    let report = Report::new(domain.as_str(), sealmail_types::clock::now_unix(), checks);
    if args.format == "json" {
        println!("{}", report.json());
    } else {
        print!("{}", report.text(std::io::stdout().is_terminal()));
    }
    if let Some(wanted) = fail_under
        && report.grade > wanted
    {
        anyhow::bail!(
            "grade {} is below --fail-under {}",
            report.grade.letter(),
            wanted.letter()
        );
    }
    Ok(())
}

fn nameserver(text: &str) -> Result<SocketAddr, UsageError> {
    text.parse::<SocketAddr>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| {
            UsageError(format!(
                "--nameserver {text}: give an IP address, optionally with :PORT"
            ))
        })
}

/// The `https` port of `--port NAME=PORT,...`; names this version does not check yet are
/// refused rather than ignored.
fn https_port(text: &str) -> Result<Option<u16>, UsageError> {
    let mut https = None;
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let (name, port) = pair
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--port {pair}: give NAME=PORT")))?;
        let port: u16 = port
            .parse()
            .map_err(|_| UsageError(format!("--port {pair}: {port} is not a port")))?;
        match name {
            "https" => https = Some(port),
            "smtp" | "submissions" | "submission" | "imaps" | "imap" => {
                return Err(UsageError(format!(
                    "--port {name}: this version does not connect to mail servers yet (docs/CHECK-JSON.md)"
                )));
            }
            other => return Err(UsageError(format!("--port {other}: not a port name"))),
        }
    }
    Ok(https)
}

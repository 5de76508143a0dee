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
    let dns = sealmail_dns::Dns::new(&dns_config)?;
    let checks = sealmail_check::dns::check_domain(&dns, domain.as_str(), &args.dkim_selector).await;
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

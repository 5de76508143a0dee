//! `sealmail check DOMAIN`: runs `sealmail-check` with the resolver of `--nameserver` or of the
//! configuration, prints the report, and fails below `--fail-under`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use sealmail_check::Grade;

use crate::cli::{CheckArgs, UsageError};

pub async fn run(config_path: &Path, args: CheckArgs) -> anyhow::Result<()> {
    // Refused before any lookup or connection: the probes try attacks, and an operator who
    // did not mean them against this server must not have sent any.
    if args.active && !args.i_run_this_server {
        return Err(UsageError(
            "--active tries attacks (open relaying, SMTP smuggling, STARTTLS injection, plaintext passwords) and is only for servers you run: add --i-run-this-server if you run this domain's servers".to_string(),
        )
        .into());
    }
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
    let ports = match &args.port {
        Some(text) => {
            sealmail_check::servers::Ports::parse(text).map_err(|e| UsageError(format!("--port {e}")))?
        }
        None => sealmail_check::servers::Ports::default(),
    };
    let message = match &args.message {
        Some(path) => Some(read_message(path)?),
        None => None,
    };
    let dns = sealmail_dns::Dns::new(&dns_config)?;
    let settings = sealmail_check::Settings {
        dkim_selectors: args.dkim_selector.clone(),
        message,
        hosts: args.host.clone(),
        active: args.active,
        ports,
        ca_file: args.ca_file.clone(),
    };
    let report = sealmail_check::check(
        &dns,
        domain.as_str(),
        &settings,
        sealmail_types::clock::now_unix(),
    )
    .await?;
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

/// The largest sample message read: headers are what matter, and mail servers refuse more.
const MAX_MESSAGE_BYTES: u64 = 64 << 20;

/// The sample message of `--message`: every problem with the file is a usage error.
fn read_message(path: &Path) -> Result<std::sync::Arc<[u8]>, UsageError> {
    use std::io::Read;
    let unreadable = |e: std::io::Error| UsageError(format!("--message {}: {e}", path.display()));
    let mut message = Vec::new();
    std::fs::File::open(path)
        .map_err(unreadable)?
        .take(MAX_MESSAGE_BYTES + 1)
        .read_to_end(&mut message)
        .map_err(unreadable)?;
    if message.len() as u64 > MAX_MESSAGE_BYTES {
        return Err(UsageError(format!(
            "--message {}: over {} MiB, not a message",
            path.display(),
            MAX_MESSAGE_BYTES >> 20
        )));
    }
    sealmail_check::dns::dkim_signers(&message)
        .map_err(|e| UsageError(format!("--message {}: {e}", path.display())))?;
    Ok(message.into())
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

//! The `sealmail` binary: parses the command line, sets up logging, and hands each command to
//! its module. No protocol logic lives here.

mod admin;
mod backup;
mod certs;
mod check;
mod cli;
mod console;
mod credentials;
mod daily_check;
mod migrate_store;
mod privileges;
mod quickstart;
mod retention;
mod serve;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Everything sealmail creates (store, keys, backups) is private unless made public on purpose.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sealmail: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli));
    // Sessions still running after the shutdown grace period are dropped here.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sealmail: {e:#}");
            match e.downcast_ref::<cli::UsageError>() {
                Some(_) => ExitCode::from(2),
                None => ExitCode::from(1),
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config_path = cli.config_path();
    match cli.command {
        Command::Serve => serve::serve(&config_path, cli.log_format).await,
        Command::Quickstart(args) => quickstart::quickstart(args, cli.log_format).await,
        command => {
            cli::init_logging(cli.log_format.unwrap_or_default());
            match command {
                Command::Init(args) => quickstart::init(&config_path, args).await,
                Command::Config(cli::ConfigCommand::Check) => admin::config_check(&config_path),
                Command::Domain(cmd) => admin::domain(&config_path, cmd).await,
                Command::Dkim(cmd) => admin::dkim(&config_path, cmd),
                Command::User(cmd) => admin::user(&config_path, cmd).await,
                Command::Ca(cmd) => credentials::ca(&config_path, cmd).await,
                Command::Cert(cmd) => certs::command(&config_path, cmd).await,
                Command::Security(cmd) => admin::security(&config_path, cmd).await,
                Command::Queue(command) => admin::queue(&config_path, command).await,
                Command::TlsReport { day, send } => admin::tls_report(&config_path, day, send).await,
                Command::Migrate { dry_run } => admin::migrate(&config_path, dry_run).await,
                Command::MigrateStore(args) => migrate_store::run(&config_path, args).await,
                Command::Check(args) => check::run(&config_path, args).await,
                Command::Backup { dir } => backup::backup(&config_path, &dir).await,
                Command::Restore { dir } => backup::restore(&config_path, &dir).await,
                Command::Serve | Command::Quickstart(_) => Ok(()),
            }
        }
    }
}

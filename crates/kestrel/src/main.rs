//! `kestrel`: a continuous eBPF profiler for Linux with bounded, explainable memory.

mod cli;
mod cmd;
mod logging;

use std::process::ExitCode;

use clap::Parser;

use kestrel::config;

use crate::cli::{Cli, Command};
use crate::cmd::{check, plan, record, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            // The chain says what failed and why; the root cause carries the fix.
            eprintln!("kestrel: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let config_file = config::config_path(cli.config.as_deref());
    match cli.command {
        Command::Plan(args) => {
            let config = load_config(config_file.as_deref(), &args.overrides())?;
            logging::init(&config, &cli.logging)?;
            plan::run(&config, &args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(args) => {
            let config = load_config(config_file.as_deref(), &cli::NoOverrides {})?;
            logging::init(&config, &cli.logging)?;
            check::run(&args)
        }
        Command::Config => {
            let config = load_config(config_file.as_deref(), &cli::NoOverrides {})?;
            print!("{}", toml::to_string_pretty(&config)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let config = load_config(config_file.as_deref(), &args.overrides())?;
            logging::init(&config, &cli.logging)?;
            run::run(&config)
        }
        Command::Record(args) => {
            let config = load_config(config_file.as_deref(), &args.overrides())?;
            logging::init(&config, &cli.logging)?;
            record::run(&config, &args)
        }
    }
}

/// The configuration, with the pointer to every key's documentation on failure.
fn load_config(
    file: Option<&std::path::Path>,
    overrides: &impl serde::Serialize,
) -> anyhow::Result<config::Config> {
    config::load(file, overrides).map_err(|e| {
        anyhow::anyhow!(
            "{e}\n  (see config.toml at the repository root for every key, its type and default)"
        )
    })
}

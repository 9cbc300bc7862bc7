//! `kestrel`: a continuous eBPF profiler for Linux with bounded, explainable memory.

mod check;
mod cli;
mod config;
mod logging;
mod plan_cmd;
mod privileges;
mod record;
mod run;
mod soak;
mod stats;
mod telemetry;
mod tiers;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            // The chain says what failed and why; the root cause carries the fix.
            eprintln!("kestrel: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config_file = config::config_path(cli.config.as_deref());
    match cli.command {
        Command::Plan(args) => {
            let config = config::load(config_file.as_deref(), &args.overrides())?;
            logging::init(&config, &cli.logging)?;
            plan_cmd::run(&config, &args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(args) => {
            let config = config::load(config_file.as_deref(), &cli::NoOverrides {})?;
            logging::init(&config, &cli.logging)?;
            check::run(&args)
        }
        Command::Config => {
            let config = config::load(config_file.as_deref(), &cli::NoOverrides {})?;
            print!("{}", toml::to_string_pretty(&config)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let config = config::load(config_file.as_deref(), &args.overrides())?;
            logging::init(&config, &cli.logging)?;
            run::run(&config)
        }
        Command::Soak(args) => soak::run(&args),
        Command::Record(args) => {
            let config = config::load(config_file.as_deref(), &args.overrides())?;
            logging::init(&config, &cli.logging)?;
            record::run(&config, &args)
        }
    }
}

//! The `eventgate` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{LogFormat, Settings};

#[derive(Debug, Parser)]
#[command(name = "eventgate", version, about = "A Kafka gateway that validates records against AsyncAPI documents")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// YAML config file; flags and EVENTGATE_* variables override its values.
        #[arg(long, env = "EVENTGATE_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Box<Settings>,
    },
    /// Check messages against an AsyncAPI document, offline, with the gateway's engine.
    Validate(crate::offline::ValidateArgs),
    /// Check AsyncAPI documents: parse, resolve references, compile every schema.
    Lint(crate::offline::LintArgs),
    /// Produce and consume a load through a broker or proxy and report throughput and latency.
    Bench(crate::bench::BenchArgs),
    /// A webhook that counts delivered CloudEvents and their latency, for measuring subscriptions.
    BenchSink(crate::bench_sink::SinkArgs),
    /// Attack a running eventgate as a hostile peer would and report what it made eventgate hold.
    Hostile(crate::hostile::HostileArgs),
    /// Read the mirror stream back: messages, distinct ids, duplicates, gaps per partition.
    Audit(crate::mirror::audit::AuditArgs),
    /// Apply subscription resources (Variables, Channels, Subscriptions) to a running eventgate.
    Apply(crate::subscriptions::apply::ApplyArgs),
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, settings } => {
            let file = match config.as_deref().map(Settings::from_file).transpose() {
                Ok(f) => f.unwrap_or_default(),
                Err(e) => return fail(&e),
            };
            let config = match settings.over(file).resolve() {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            crate::telemetry::init_logs(&config.log, config.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => return fail(&e),
            };
            match runtime.block_on(crate::server::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "eventgate failed");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Validate(args) => crate::offline::validate(args),
        Command::Lint(args) => crate::offline::lint(args),
        Command::Bench(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => return fail(&e),
            };
            print_json(runtime.block_on(crate::bench::run(args)))
        }
        Command::BenchSink(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => return fail(&e),
            };
            print_json(runtime.block_on(crate::bench_sink::run(args)))
        }
        Command::Hostile(args) => print_json(crate::hostile::run(&args)),
        Command::Audit(args) => {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => return fail(&e),
            };
            print_json(runtime.block_on(crate::mirror::audit::run(args)))
        }
        Command::Apply(args) => {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => return fail(&e),
            };
            runtime.block_on(crate::subscriptions::apply::run(args))
        }
    }
}

/// Prints a tool's result as one JSON line.
fn print_json<T: serde::Serialize, E: std::error::Error>(result: Result<T, E>) -> ExitCode {
    match result.map(|r| serde_json::to_string(&r)) {
        Ok(Ok(line)) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => fail(&e),
        Err(e) => fail(&e),
    }
}

fn fail(e: &dyn std::error::Error) -> ExitCode {
    crate::telemetry::init_logs("error", LogFormat::Text);
    eprintln!("eventgate: {e}");
    ExitCode::from(2)
}

//! `sink-clickhouse`: Kafka to ClickHouse in few, large inserts.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sink_clickhouse::Config;

/// Consumer groups that batch records from Kafka into few, large ClickHouse
/// inserts, and commit offsets only after ClickHouse confirmed.
///
/// `migrate` creates the database `context` (tables events, activity_tags,
/// dead_letters and the views events_latest, activity_latest) from the Avro
/// schemas, and adds columns for new signals; run it before `run` and after
/// every schema change. `run` consumes context.events.v1,
/// context.activity.v1 and context.deadletter.v1, each in its own consumer
/// group, with /healthz, /readyz and /metrics on 127.0.0.1:9102.
/// Configuration: --config FILE (TOML) with SINK_* environment overrides.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or update the database, tables and views (idempotent, additive).
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Consume the topics and insert into ClickHouse until SIGTERM.
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn settings(config: Option<PathBuf>) -> Result<sink_clickhouse::Settings, ExitCode> {
    Config::load(config.as_deref()).map_err(|problems| {
        eprintln!("sink-clickhouse: the configuration is incomplete:\n{problems}");
        ExitCode::from(2)
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    context_runtime::init_tracing();
    match cli.command {
        Command::Migrate { config } => {
            let s = match settings(config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            match sink_clickhouse::migrate::migrate(&s.clickhouse(false), &s.database).await {
                Ok(report) => {
                    for sql in &report.applied {
                        println!("applied: {}", sql.lines().next().unwrap_or_default());
                    }
                    for extra in &report.extra {
                        println!("kept column unknown to the schema: {extra}");
                    }
                    if report.applied.is_empty() {
                        println!("database `{}` is up to date", s.database);
                    }
                    if report.conflicts.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        for c in &report.conflicts {
                            eprintln!("conflict: {c}");
                        }
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!(
                        "sink-clickhouse migrate: ClickHouse at {} failed: {e}",
                        s.clickhouse_url
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config } => {
            let s = match settings(config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let metrics = context_runtime::install_metrics();
            let mut running = match sink_clickhouse::start(s, metrics).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("sink-clickhouse: cannot start: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("sink-clickhouse: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: flushing"); running.shutdown().await }
                _ = tokio::signal::ctrl_c() => { tracing::info!("interrupt: flushing"); running.shutdown().await }
                r = running.wait() => r,
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sink-clickhouse: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

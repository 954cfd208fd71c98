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
    #[command(flatten)]
    check: context_runtime::config::CheckConfigArg,
    #[command(subcommand)]
    command: Option<Command>,
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

/// The configuration, then telemetry (with the configuration's warnings).
fn settings(config: Option<PathBuf>) -> Result<Config, ExitCode> {
    let loaded = context_runtime::config::load_or_exit::<Config>("sink-clickhouse", config.as_deref())?;
    context_runtime::init_tracing();
    loaded.log_warnings();
    Ok(loaded.config)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(file) = cli.check.check_config {
        return context_runtime::config::check_file::<Config>(&file);
    }
    let Some(command) = cli.command else {
        eprintln!("sink-clickhouse: give a command (migrate, run) or --check-config FILE; see --help");
        return ExitCode::from(2);
    };
    match command {
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
                        context_runtime::config::redact_urls(&s.clickhouse_url)
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
            let mut shutdown = context_runtime::shutdown::Shutdown::on_signals();
            let result = tokio::select! {
                _ = shutdown.requested() => { tracing::info!("flushing"); running.shutdown().await }
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

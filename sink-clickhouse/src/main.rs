//! `sink-clickhouse`: Kafka to ClickHouse in few, large inserts.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sink_clickhouse::Config;

/// mimalloc: the sink frees whole batches of rows at once from several
/// threads; glibc's allocator spent a fifth of the sink's CPU consolidating
/// them and kept the freed memory per thread arena.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Consumer groups that batch records from Kafka into few, large ClickHouse
/// inserts, and commit offsets only after ClickHouse confirmed.
///
/// `migrate` creates the database `context` (tables events, activity_tags,
/// dead_letters, sink_ledger and the views events_latest, activity_latest) from the Avro
/// schemas, adds columns for new signals, and converts tables of an older
/// layout (keeping the old table as `<name>_before_<version>`); run it
/// before `run` and after every upgrade. `run` consumes context.events.v1,
/// context.activity.v1 and context.deadletter.v1, each in its own consumer
/// group, with /healthz, /readyz and /metrics on 127.0.0.1:9102.
/// `reconcile` proves from the ledger that every committed offset is stored.
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
    /// Create or update the database, tables and views (idempotent; converts
    /// a table of an older layout and keeps the old one).
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Consume the topics and insert into ClickHouse until SIGTERM.
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Prove that nothing was lost: read the ledger of what every insert
    /// covered (`sink_ledger`) against the topic and the group's committed
    /// offsets, and print per partition the offsets covered, the gaps
    /// (committed past and never stored: a loss; or already deleted by
    /// retention) and what is still pending. Exits 1 when a gap holds
    /// records. `--repair` reads such gaps from Kafka and stores them
    /// (idempotent by event id). See docs/runbooks/reconcile.md.
    ///
    /// Example: sink-clickhouse reconcile --config sink.toml --since 2026-12-01T00:00:00Z
    Reconcile {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The topic (default: the events topic).
        #[arg(long)]
        topic: Option<String>,
        /// The consumer group (default: the sink's group of that topic,
        /// such as sink-clickhouse-events).
        #[arg(long)]
        group: Option<String>,
        /// Only offsets from this time on (Kafka record time, RFC 3339);
        /// default: from the first offset the ledger knows.
        #[arg(long)]
        since: Option<String>,
        /// Store the records of gaps still in Kafka.
        #[arg(long)]
        repair: bool,
    },
    /// What was dead-lettered, and sending it again once the cause is fixed
    /// (docs/runbooks/dead-letters.md).
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
}

/// Which dead letters: all filters are optional and combine.
#[derive(clap::Args)]
struct Filter {
    /// TOML configuration (ClickHouse, Kafka, registry, topics); SINK_*
    /// variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Only this reason, such as signal_out_of_range or unknown_schema_id.
    #[arg(long)]
    reason: Option<String>,
    /// Only this source: ingest-gateway, stream-router, enrich-activity,
    /// sink-clickhouse.
    #[arg(long)]
    source: Option<String>,
    /// Dead-lettered at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Dead-lettered before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
}

#[derive(Subcommand)]
enum DeadLettersCommand {
    /// Count dead letters by source and reason, with the first and last time;
    /// a letter stored again by a retry counts once.
    List {
        #[command(flatten)]
        filter: Filter,
    },
    /// Send the chosen dead letters through the normal path again: gateway
    /// rejects are validated again and produced to the events topic when
    /// valid now; the others go back, bytes unchanged, to the topic they were
    /// read from, keyed by install as on the normal path. Events already
    /// stored are skipped (idempotent by app_id and event_id).
    ///
    /// Example: sink-clickhouse dead-letters redrive --reason unknown_schema_id --since 2026-11-26T00:00:00Z --dry-run
    Redrive {
        #[command(flatten)]
        filter: Filter,
        /// At most this many dead letters, oldest first.
        #[arg(long, default_value_t = 100_000)]
        limit: u64,
        /// Only say what would be sent (registers nothing, sends nothing).
        #[arg(long)]
        dry_run: bool,
        /// The gateway's configuration file, so that rejects are validated
        /// again with its limits (with INGEST_* overrides, as the gateway
        /// reads them); the gateway's defaults without it.
        #[arg(long, value_name = "FILE")]
        gateway_config: Option<std::path::PathBuf>,
    },
}

fn micros(flag: &str, t: &Option<String>) -> Result<Option<i64>, ExitCode> {
    t.as_deref()
        .map(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map(|t| (t.unix_timestamp_nanos() / 1000) as i64)
                .map_err(|e| {
                    eprintln!("sink-clickhouse: --{flag} `{s}` is not an RFC 3339 time: {e}");
                    ExitCode::from(2)
                })
        })
        .transpose()
}

fn selection(f: &Filter, limit: u64) -> Result<sink_clickhouse::redrive::Selection, ExitCode> {
    Ok(sink_clickhouse::redrive::Selection {
        reason: f.reason.clone(),
        source: f.source.clone(),
        since: micros("since", &f.since)?,
        until: micros("until", &f.until)?,
        limit,
    })
}

async fn dead_letters(command: DeadLettersCommand) -> ExitCode {
    let (filter, limit, dry_run, redrive, gateway_config) = match &command {
        DeadLettersCommand::List { filter } => (filter, 0, true, false, None),
        DeadLettersCommand::Redrive {
            filter,
            limit,
            dry_run,
            gateway_config,
        } => (filter, *limit, *dry_run, true, gateway_config.as_deref()),
    };
    let c = match settings(filter.config.clone()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let sel = match selection(filter, limit) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if !redrive {
        return match sink_clickhouse::redrive::list(&c, &sel).await {
            Ok(groups) if groups.is_empty() => {
                println!("no dead letters match");
                ExitCode::SUCCESS
            }
            Ok(groups) => {
                let time = |s: u32| context_runtime::clock::rfc3339(i64::from(s) * 1_000_000);
                println!("{:>8}  {:<18} {:<28} {:<27} last", "count", "source", "reason", "first");
                for g in groups {
                    println!(
                        "{:>8}  {:<18} {:<28} {:<27} {}",
                        g.count,
                        g.source,
                        g.reason,
                        time(g.first),
                        time(g.last)
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sink-clickhouse dead-letters list: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let gateway = match context_runtime::config::load::<ingest_gateway::Config>(gateway_config) {
        Ok(loaded) => loaded.config,
        Err(e) => {
            eprintln!("sink-clickhouse dead-letters redrive: the gateway's configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match sink_clickhouse::redrive::redrive(&c, &sel, dry_run, &gateway).await {
        Ok(outcome) => {
            println!("{}", outcome.summary(dry_run));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sink-clickhouse dead-letters redrive: {e:#}");
            ExitCode::FAILURE
        }
    }
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
        eprintln!("sink-clickhouse: give a command (migrate, run, reconcile, dead-letters) or --check-config FILE; see --help");
        return ExitCode::from(2);
    };
    match command {
        Command::DeadLetters { command } => dead_letters(command).await,
        Command::Reconcile {
            config,
            topic,
            group,
            since,
            repair,
        } => {
            let c = match settings(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let since_ms = match micros("since", &since) {
                Ok(t) => t.map(|us| us / 1000),
                Err(code) => return code,
            };
            let topic = topic.unwrap_or_else(|| c.events_topic.clone());
            let Some(group) = group.or_else(|| sink_clickhouse::reconcile::default_group(&c, &topic)) else {
                eprintln!("sink-clickhouse reconcile: {topic} is not one of the sink's topics; give --group");
                return ExitCode::from(2);
            };
            let req = sink_clickhouse::reconcile::Request {
                topic,
                group,
                since_ms,
                repair,
            };
            match sink_clickhouse::reconcile::reconcile(&c, &req).await {
                Ok(report) => {
                    print!("{}", report.text());
                    if report.losses() > 0 {
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => {
                    eprintln!("sink-clickhouse reconcile: {e:#}");
                    ExitCode::from(3)
                }
            }
        }
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
                    for (table, rows) in &report.kept {
                        println!(
                            "kept the table of the older layout as {table} ({rows} rows); \
                             drop it once the converted table serves you: DROP TABLE {table}"
                        );
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

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
/// dead_letters, sink_ledger, forget_log and the views events_latest, activity_latest) from the Avro
/// schemas, adds columns for new signals, and converts tables of an older
/// layout (keeping the old table as `<name>_before_<version>`); run it
/// before `run` and after every upgrade. `run` consumes context.events.v1,
/// context.activity.v1 and context.deadletter.v1, each in its own consumer
/// group, with /healthz, /readyz and /metrics on 127.0.0.1:9102.
/// `reconcile` proves from the ledger that every committed offset is stored.
/// `forget` erases an install's data and keeps it erased (docs/privacy.md).
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
    ///
    /// With --cluster NAME: the same schema on every server of the ClickHouse
    /// cluster NAME (remote_servers), all ON CLUSTER: Replicated tables
    /// `<table>_local` per shard, Distributed tables under the tables' names
    /// for reads, sharded by install; sink_ledger and forget_log replicated on
    /// every server. Every server must be up. See docs/scaling.md.
    ///
    /// Example: sink-clickhouse migrate --config sink.toml --cluster context
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The ClickHouse cluster (system.clusters) to make the schema on.
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
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
    /// Erase installs' data (a person's request to delete it): writes one
    /// request per install to the forget ledger (context.forget.v1, each
    /// acknowledged by every in-sync replica) and prints its request id.
    /// The running sink then deletes the install's rows from events,
    /// activity_tags and dead_letters and records the rows per table;
    /// every stage drops the install's records captured up to the request,
    /// also in replays and redrives. `forget status` shows each request.
    /// See docs/privacy.md.
    ///
    /// Examples:
    ///   sink-clickhouse forget --config sink.toml --app demo --install-id 8d0c…
    ///   sink-clickhouse forget --config sink.toml --app demo --file installs.txt --wait
    ///   sink-clickhouse forget status --config sink.toml [INSTALL_OR_REQUEST_ID]
    #[command(args_conflicts_with_subcommands = true, verbatim_doc_comment)]
    Forget {
        #[command(subcommand)]
        command: Option<ForgetCommand>,
        #[command(flatten)]
        ask: ForgetArgs,
    },
}

#[derive(clap::Args)]
struct ForgetArgs {
    /// TOML configuration (Kafka, ClickHouse, forget_topic); SINK_*
    /// variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The app whose installs are forgotten (the app_id of its API key).
    #[arg(long)]
    app: Option<String>,
    /// An install id (a UUID); repeat for several.
    #[arg(long = "install-id", value_name = "ID")]
    install_ids: Vec<String>,
    /// A file of installs: one per line, `INSTALL_ID` (of --app) or
    /// `APP_ID INSTALL_ID`; blank lines and `#` comments are skipped.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Who asks, recorded with the request (default: operator:$USER).
    #[arg(long)]
    by: Option<String>,
    /// Wait until the running sink erased every request, printing its status.
    #[arg(long)]
    wait: bool,
}

#[derive(Subcommand)]
enum ForgetCommand {
    /// Every request of the ledger (or those of one install or request id):
    /// requested, or done with the rows erased per table and when.
    Status {
        /// An install id or a request id.
        id: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// One JSON object per request instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// The (app, install) pairs of `forget`'s arguments, or what is wrong.
fn forget_targets(a: &ForgetArgs) -> Result<Vec<(String, uuid::Uuid)>, String> {
    let mut out = Vec::new();
    let parse = |app: &str, id: &str, at: &str| {
        uuid::Uuid::parse_str(id.trim())
            .map(|u| (app.to_owned(), u))
            .map_err(|e| format!("{at}: `{id}` is not an install id (a UUID): {e}"))
    };
    for id in &a.install_ids {
        let app = a.app.as_deref().ok_or("--install-id needs --app")?;
        out.push(parse(app, id, "--install-id")?);
    }
    if let Some(f) = &a.file {
        let text = std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let at = format!("{}:{}", f.display(), n + 1);
            let fields: Vec<&str> = line
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .collect();
            match fields.as_slice() {
                [id] => {
                    let app = a
                        .app
                        .as_deref()
                        .ok_or_else(|| format!("{at}: an install id alone needs --app"))?;
                    out.push(parse(app, id, &at)?);
                }
                [app, id] => out.push(parse(app, id, &at)?),
                _ => {
                    return Err(format!(
                        "{at}: expected `INSTALL_ID` or `APP_ID INSTALL_ID`, got `{line}`"
                    ))
                }
            }
        }
    }
    if out.is_empty() {
        return Err("name the installs: --app APP --install-id ID, or --file FILE (or `forget status`)".into());
    }
    Ok(out)
}

async fn forget(command: Option<ForgetCommand>, ask: ForgetArgs) -> ExitCode {
    if let Some(ForgetCommand::Status { id, config, json }) = command {
        let c = match settings(config) {
            Ok(c) => c,
            Err(code) => return code,
        };
        return match sink_clickhouse::forget::status(&c, id.as_deref()).await {
            Ok(list) if list.is_empty() && !json => {
                println!(
                    "no forget requests{}",
                    id.map(|i| format!(" for {i}")).unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Ok(list) => {
                for s in list {
                    if json {
                        println!("{}", serde_json::to_string(&s).unwrap_or_default());
                    } else {
                        println!("{}", s.line());
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sink-clickhouse forget status: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let targets = match forget_targets(&ask) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sink-clickhouse forget: {e}");
            return ExitCode::from(2);
        }
    };
    let c = match settings(ask.config.clone()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let by = ask.by.clone().unwrap_or_else(|| {
        format!(
            "operator:{}",
            std::env::var("USER").unwrap_or_else(|_| "unknown".into())
        )
    });
    let mut ids = Vec::new();
    for (app, install) in &targets {
        match sink_clickhouse::forget::request(&c, app, &[*install], &by).await {
            Ok(written) => {
                for r in written {
                    println!("requested {} app {} install {}", r.request_id, r.app_id, r.install_id);
                    ids.push(r.request_id.to_string());
                }
            }
            Err(e) => {
                eprintln!("sink-clickhouse forget: {e:#} (requests before this one were written)");
                return ExitCode::FAILURE;
            }
        }
    }
    if !ask.wait {
        eprintln!("the running sink erases them; see `sink-clickhouse forget status`");
        return ExitCode::SUCCESS;
    }
    let started = std::time::Instant::now();
    loop {
        match sink_clickhouse::forget::status(&c, None).await {
            Ok(list) => {
                let mine: Vec<_> = list
                    .iter()
                    .filter(|s| ids.contains(&s.request.request_id.to_string()))
                    .collect();
                let done = mine.iter().filter(|s| s.done.is_some()).count();
                if done == ids.len() {
                    for s in mine {
                        println!("{}", s.line());
                    }
                    return ExitCode::SUCCESS;
                }
                eprintln!(
                    "[forget] {done} of {} erased after {:.0} s",
                    ids.len(),
                    started.elapsed().as_secs_f64()
                );
            }
            Err(e) => eprintln!("[forget] status: {e:#}"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
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
        eprintln!("sink-clickhouse: give a command (migrate, run, reconcile, dead-letters, forget) or --check-config FILE; see --help");
        return ExitCode::from(2);
    };
    match command {
        Command::DeadLetters { command } => dead_letters(command).await,
        Command::Forget { command, ask } => forget(command, ask).await,
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
        Command::Migrate { config, cluster } => {
            let s = match settings(config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let client = s.clickhouse(false);
            let migrated = match &cluster {
                Some(cluster) => {
                    let each: Vec<clickhouse::Client> = s
                        .shards()
                        .iter()
                        .flatten()
                        .map(|url| s.clickhouse_at(url, false))
                        .collect();
                    sink_clickhouse::cluster::migrate(
                        &client,
                        &each,
                        &s.database,
                        cluster,
                        &s.clickhouse_user,
                        s.clickhouse_password.expose(),
                    )
                    .await
                }
                None => sink_clickhouse::migrate::migrate(&client, &s.database)
                    .await
                    .map_err(anyhow::Error::from),
            };
            match migrated {
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

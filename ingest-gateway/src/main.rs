//! `ingest-gateway`: the HTTPS batch endpoint for the mobile SDKs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ingest_gateway::auth::{hash_key, key_from_random};
use ingest_gateway::Config;

// The system allocator, not mimalloc: with mimalloc's defaults (arenas
// committed eagerly, freed pages purged late) the memory test's gzip bombs
// drove the gateway to 466 MiB against 139–172 MiB with glibc, over the
// documented bound; the sink, which frees whole batches, keeps mimalloc.

/// The HTTPS batch endpoint mobile SDKs send their events to.
///
/// `serve` (the default) answers `POST /v1/batch`: it authenticates the app by
/// API key, validates every event, encodes Avro with the registered schema id,
/// produces to Kafka (acks=all) and answers 200 only once Kafka acknowledged
/// every event. Everything else is safe to retry: 503 with Retry-After when
/// Kafka cannot take the batch (or its body is too slow, or the in-flight
/// budget is spent), 429 when the app is over its rate limit (events or
/// bytes per second), 409 when its batch_id was answered for another body.
/// Also serves /healthz, /readyz, /metrics and /openapi.json.
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
    /// Serve the API (default).
    Serve {
        /// TOML configuration file; INGEST_* variables override it (see
        /// docs/ingest-gateway.md for every key and its default).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Seconds between readiness turning 503 and the server stopping on
        /// SIGTERM, so load balancers stop sending first.
        #[arg(long, default_value_t = 2)]
        drain_seconds: u64,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new API key once, and the entry to add to the keys file
    /// (which stores only its hash).
    New {
        /// The app the key belongs to.
        #[arg(long)]
        app: String,
        /// Sustained events per second for this app.
        #[arg(long, default_value_t = 1000.0)]
        rate_limit: f64,
        /// Events allowed at once (default: 10 x the rate limit).
        #[arg(long)]
        burst: Option<f64>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(file) = cli.check.check_config {
        return context_runtime::config::check_file::<Config>(&file);
    }
    match cli.command.unwrap_or(Command::Serve {
        config: None,
        drain_seconds: 2,
    }) {
        Command::Keys {
            command: KeysCommand::New { app, rate_limit, burst },
        } => new_key(&app, rate_limit, burst),
        Command::Serve { config, drain_seconds } => serve(config, Duration::from_secs(drain_seconds)).await,
    }
}

fn new_key(app: &str, rate_limit: f64, burst: Option<f64>) -> ExitCode {
    let mut bytes = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut bytes) {
        eprintln!("no randomness available: {e}");
        return ExitCode::FAILURE;
    }
    let key = key_from_random(bytes);
    println!("API key for app `{app}` (shown once; give it to the app, keep no copy):\n\n  {key}\n");
    println!("Add this entry to the gateway's keys file:\n");
    println!(
        "[[keys]]\napp_id = \"{app}\"\nhash = \"{}\"\nenabled = true\nrate_limit_per_s = {rate_limit}",
        hash_key(&key)
    );
    if let Some(b) = burst {
        println!("burst = {b}");
    }
    ExitCode::SUCCESS
}

async fn serve(config: Option<PathBuf>, drain: Duration) -> ExitCode {
    let loaded = match context_runtime::config::load_or_exit::<Config>("ingest-gateway", config.as_deref()) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    context_runtime::init_tracing();
    loaded.log_warnings();
    let settings = loaded.config;
    let metrics = context_runtime::install_metrics();
    let running = match ingest_gateway::start(settings, metrics).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ingest-gateway: cannot start: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    context_runtime::shutdown::Shutdown::on_signals().requested().await;
    tracing::info!("draining");
    match running.shutdown(drain).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ingest-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

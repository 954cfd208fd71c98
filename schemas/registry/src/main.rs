//! `schema-registry`: the Confluent-compatible registry server, and the
//! `register` command that registers the repository's schemas.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use context_schemas::contract::SCHEMAS;
use schema_registry::{Config, RegistryClient, RegistryError};

/// Confluent-compatible Schema Registry with its state in the Kafka topic `_schemas`.
///
/// `serve` (the default) runs the REST API on 127.0.0.1:8081. Every change is
/// a record in `_schemas`; on start the registry reads the topic to its end
/// before /readyz turns ready, so a restarted or second replica serves the same
/// ids. `register` registers every schema of the repository under its
/// TopicNameStrategy subject (`<topic>-value`) and fails when a change is
/// incompatible with what is registered.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API (default).
    Serve {
        /// TOML file with listen, kafka_bootstrap, topic, default_compatibility,
        /// timeout; SCHEMA_REGISTRY_* variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Register the contract's schemas (schemas/avro/*.avsc, compiled in)
    /// with a registry; exit 1 with the reasons when one is incompatible.
    Register {
        /// Registry base URL.
        #[arg(long, env = "SCHEMA_REGISTRY_URL", default_value = "http://127.0.0.1:8081")]
        url: String,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Serve { config } => serve(config).await,
        Command::Register { url } => register(&url).await,
    }
}

async fn serve(config: Option<PathBuf>) -> ExitCode {
    let settings = match Config::load(config.as_deref()) {
        Ok(s) => s,
        Err(problems) => {
            eprintln!("schema-registry: the configuration is incomplete:\n{problems}");
            return ExitCode::from(2);
        }
    };
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| tracing::warn!(error = %e, "metrics disabled"))
        .ok();
    let running = match schema_registry::start(settings, metrics).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("schema-registry: cannot start: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match running.wait().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("schema-registry: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn register(url: &str) -> ExitCode {
    let client = match RegistryClient::new(url) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for schema in SCHEMAS {
        let subject = schema.subject();
        match client.register(&subject, schema.avsc).await {
            Ok(id) => println!("{subject}: id {id} ({})", schema.file),
            Err(RegistryError::Remote { code: 409, message, .. }) => {
                failed = true;
                eprintln!(
                    "{subject}: {} is INCOMPATIBLE with what is registered:\n  {message}",
                    schema.file
                );
            }
            Err(e) => {
                failed = true;
                eprintln!("{subject}: cannot register {}: {e}", schema.file);
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

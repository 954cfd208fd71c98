//! `schema-registry`: the Confluent-compatible registry server, and the
//! `register` command that registers the repository's schemas.

use std::path::{Path, PathBuf};
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
    #[command(flatten)]
    check: context_runtime::config::CheckConfigArg,
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
    /// Register the contract's schemas (schemas/avro/*.avsc) under their
    /// TopicNameStrategy subjects; exit 1 with the reasons when one is
    /// incompatible with what the registry holds.
    Register {
        /// Registry base URL.
        #[arg(long, env = "SCHEMA_REGISTRY_URL", default_value = "http://127.0.0.1:8081")]
        url: String,
        /// Folder of the .avsc files (default: the copies compiled into this binary).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// First register every committed version of each file, oldest first
        /// (from `git log`), so that the current file is checked against the
        /// whole history. Needs --dir inside a git checkout.
        #[arg(long, requires = "dir")]
        git_history: bool,
        /// Set this compatibility level on each subject before registering,
        /// such as FULL_TRANSITIVE.
        #[arg(long)]
        compatibility: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(file) = cli.check.check_config {
        return context_runtime::config::check_file::<Config>(&file);
    }
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Serve { config } => serve(config).await,
        Command::Register {
            url,
            dir,
            git_history,
            compatibility,
        } => {
            context_runtime::init_tracing();
            register(&url, dir.as_deref(), git_history, compatibility.as_deref()).await
        }
    }
}

async fn serve(config: Option<PathBuf>) -> ExitCode {
    let loaded = match context_runtime::config::load_or_exit::<Config>("schema-registry", config.as_deref()) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    context_runtime::init_tracing();
    loaded.log_warnings();
    let settings = loaded.config;
    let metrics = context_runtime::install_metrics();
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

/// The versions of one schema file to register, oldest first.
fn versions_of(file: &str, dir: Option<&Path>, git_history: bool) -> Result<Vec<(String, String)>, String> {
    let Some(dir) = dir else {
        let embedded = SCHEMAS.iter().find(|s| s.file == file).map(|s| s.avsc.to_owned());
        return Ok(embedded
            .map(|t| vec![("compiled-in".to_owned(), t)])
            .unwrap_or_default());
    };
    let path = dir.join(file);
    let current = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut versions = Vec::new();
    if git_history {
        let git = |args: &[&str]| -> Result<String, String> {
            let out = std::process::Command::new("git")
                .args(args)
                .current_dir(dir)
                .output()
                .map_err(|e| format!("cannot run git: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "git {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let commits = git(&["log", "--reverse", "--format=%h", "--", file])?;
        for commit in commits.lines() {
            let text = git(&["show", &format!("{commit}:./{file}")])?;
            if versions.last().map(|(_, t)| t) != Some(&text) {
                versions.push((format!("commit {commit}"), text));
            }
        }
    }
    if versions.last().map(|(_, t)| t) != Some(&current) {
        versions.push(("working tree".to_owned(), current));
    }
    Ok(versions)
}

async fn register(url: &str, dir: Option<&Path>, git_history: bool, compatibility: Option<&str>) -> ExitCode {
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
        if let Some(level) = compatibility {
            if let Err(e) = client.set_compatibility(&subject, level).await {
                eprintln!("{subject}: cannot set compatibility {level}: {e}");
                return ExitCode::FAILURE;
            }
        }
        let versions = match versions_of(schema.file, dir, git_history) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("{subject}: {e}");
                failed = true;
                continue;
            }
        };
        for (origin, text) in versions {
            match client.register(&subject, &text).await {
                Ok(id) => println!("{subject}: id {id} ({}, {origin})", schema.file),
                Err(RegistryError::Remote { code: 409, message, .. }) => {
                    failed = true;
                    eprintln!(
                        "{subject}: {} ({origin}) is INCOMPATIBLE with what is registered:\n  {message}",
                        schema.file
                    );
                    break;
                }
                Err(e) => {
                    failed = true;
                    eprintln!("{subject}: cannot register {} ({origin}): {e}", schema.file);
                    break;
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

//! `schema-registry`: the Confluent-compatible registry server, and the
//! `register` command that registers the repository's schemas.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use context_runtime::config::Secret;
use context_runtime::registry::RegistrySettings;
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
        /// TOML file with listen, topic, default_compatibility, timeout, the
        /// [kafka] table (bootstrap, security_protocol, sasl_*, ssl_*) and
        /// [auth] (users_file, anonymous); SCHEMA_REGISTRY_* variables
        /// override it (SCHEMA_REGISTRY_KAFKA_SASL_PASSWORD,
        /// SCHEMA_REGISTRY_AUTH_USERS_FILE). Without auth.users_file the
        /// registry is open to anyone who reaches it.
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
        /// User for HTTP basic authentication (setting compatibility needs
        /// the admin role, registering the write role).
        #[arg(long, env = "REGISTRY_USERNAME")]
        username: Option<String>,
        /// Its password (better given by the variable than on the command line).
        #[arg(long, env = "REGISTRY_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// PEM file of the CA(s) that sign an https:// registry's certificate.
        #[arg(long, env = "REGISTRY_CA_FILE")]
        ca_file: Option<PathBuf>,
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
    /// Print the users-file `password_hash` of a password read from stdin
    /// (one line), for `[[users]]` entries of the file `auth.users_file`
    /// names. Generate the password, e.g. `openssl rand -hex 24 | tee pw |
    /// schema-registry hash-password`.
    HashPassword,
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
            username,
            password,
            ca_file,
            dir,
            git_history,
            compatibility,
        } => {
            context_runtime::init_tracing();
            let settings = RegistrySettings {
                registry_url: url,
                registry_username: username,
                registry_password: Secret(password.unwrap_or_default()),
                registry_ca_file: ca_file,
                ..RegistrySettings::open("")
            };
            register(&settings, dir.as_deref(), git_history, compatibility.as_deref()).await
        }
        Command::HashPassword => {
            let mut line = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut line) {
                eprintln!("schema-registry hash-password: cannot read stdin: {e}");
                return ExitCode::from(2);
            }
            let password = line.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                eprintln!("schema-registry hash-password: give the password on stdin (one line, not empty)");
                return ExitCode::from(2);
            }
            match schema_registry::auth::hash_password(password) {
                Ok(hash) => {
                    println!("{hash}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("schema-registry hash-password: {e}");
                    ExitCode::FAILURE
                }
            }
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

async fn register(
    settings: &RegistrySettings,
    dir: Option<&Path>,
    git_history: bool,
    compatibility: Option<&str>,
) -> ExitCode {
    let problems = settings.check();
    if !problems.is_empty() {
        eprintln!("schema-registry register: {}", problems.join("; "));
        return ExitCode::from(2);
    }
    let client = match RegistryClient::connect(settings) {
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

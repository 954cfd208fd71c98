//! `stream-router`: rules that fan raw events out to derived topics.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stream_router::rules::Rules;
use stream_router::Config;

/// Routes the events of context.events.v1 to derived topics by the rules of a
/// file: the whole event or a projection of it (MotionWindow for the activity
/// tagger), to several targets at once, with deterministic sampling by
/// install, drops with a counted reason, and a default route. What cannot be
/// decoded or projected goes to context.deadletter.v1 with its original bytes,
/// and so does an output Kafka refuses for good (larger than its topic's
/// max.message.bytes or max_record_bytes, a policy, an ACL): reason
/// refused_by_kafka, its target in dl.target_topic; one that does not fit
/// the dead-letter topic either is kept as a stub of its first bytes.
///
/// Each batch's outputs and its input offsets are committed in one Kafka
/// transaction: consumers reading with isolation.level=read_committed see each
/// routed record exactly once, across crashes and restarts.
///
/// The rules file is re-read when it changes; a broken one keeps the rules in
/// force and logs why. Admin endpoints /healthz, /readyz, /metrics on
/// 127.0.0.1:9101. Configuration: --config FILE (TOML) with ROUTER_*
/// environment overrides (docs/stream-router.md).
///
/// Examples:
///   stream-router check-rules stream-router/rules.toml
///   stream-router --check-config router.toml
///   stream-router run --config router.toml
///   ROUTER_RULES_FILE=my-rules.toml ROUTER_CREATE_TOPICS=true stream-router run
#[derive(Parser)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    check: context_runtime::config::CheckConfigArg,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Route until SIGTERM (the open transaction is finished first).
    Run {
        /// TOML configuration; ROUTER_* variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a rules file without running: every problem, naming the rule
    /// and the field, then the targets it routes to.
    ///
    /// The format, with worked examples, is in docs/stream-router.md; the
    /// shipped default is stream-router/rules.toml.
    CheckRules {
        /// The rules file (TOML).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(path) = cli.check.check_config {
        return check_config(&path);
    }
    match cli.command {
        None => {
            eprintln!("stream-router: give a command (run, check-rules) or --check-config FILE; see --help");
            ExitCode::from(2)
        }
        Some(Command::CheckRules { file }) => match stream_router::service::load_rules(&file) {
            Ok(rules) => {
                print_rules(&rules);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("stream-router: {e}");
                ExitCode::from(1)
            }
        },
        Some(Command::Run { config }) => {
            let loaded = match Config::load(config.as_deref()) {
                Ok(loaded) => loaded,
                Err(problems) => {
                    eprintln!("stream-router: the configuration is invalid:\n{problems}");
                    return ExitCode::from(2);
                }
            };
            context_runtime::init_tracing();
            loaded.log_warnings();
            let settings = loaded.config;
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("stream-router: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(async move {
                let metrics = context_runtime::install_metrics();
                let shutdown = context_runtime::shutdown::Shutdown::on_signals();
                match stream_router::service::run(settings, metrics, shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "stream-router stopped");
                        eprintln!("stream-router: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let settings = match Config::load(Some(path)) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            loaded.config
        }
        Err(problems) => {
            eprintln!("stream-router: {} is invalid:\n{problems}", path.display());
            return ExitCode::from(2);
        }
    };
    match stream_router::service::load_rules(&settings.rules_file) {
        Ok(rules) => {
            println!("{}: valid", path.display());
            println!("{settings:#?}");
            print_rules(&rules);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stream-router: {e}");
            ExitCode::from(2)
        }
    }
}

fn print_rules(rules: &Rules) {
    println!("rules, in order: {}", rules.rule_names().collect::<Vec<_>>().join(", "));
    for t in rules.targets() {
        println!("target: {} <- {}", t.topic, t.projection.name());
    }
}

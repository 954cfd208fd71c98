//! `context-topics`: creates the platform's Kafka topics and keeps their
//! settings as declared (context_runtime::topics).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use context_runtime::kafka::{KafkaSettings, Property};
use context_runtime::topics::{self, Admin, Declaration, Mode, Overrides, TopicsError};

/// Creates the platform's Kafka topics (context.events.v1, context.motion.v1,
/// context.activity.v1, context.deadletter.v1, _schemas) with the partitions,
/// replication factor and configs (min.insync.replicas, retention.ms,
/// max.message.bytes, cleanup.policy) declared in
/// helm/context-pipeline/topics.toml, and puts a declared config back when it
/// differs. Idempotent: a second `apply` says "up to date".
///
/// Refused (exit 1), since only an operator can judge them: fewer partitions
/// than declared (adding them moves keys; --add-partitions adds them), a
/// replication factor below the declared one, a topic declared compacted
/// without compaction. More partitions or replicas than declared are fine.
///
/// The brokers are reached with the tools' variables: KAFKA_BOOTSTRAP
/// (127.0.0.1:9092 by default), KAFKA_SECURITY_PROTOCOL,
/// KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD,
/// KAFKA_SSL_CA_FILE, KAFKA_SSL_CERT_FILE, KAFKA_SSL_KEY_FILE,
/// KAFKA_SSL_KEY_PASSWORD. The user needs Create, Alter, AlterConfigs and
/// DescribeConfigs on the topics.
///
/// Exit codes: 0 everything matches or was fixed; 1 drift refused, or the
/// brokers refused or did not answer; 2 a wrong declaration or option.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create missing topics, set declared configs that differ, report drift.
    Apply {
        #[command(flatten)]
        select: Select,
        /// Add partitions to topics with fewer than declared (moves keys to
        /// other partitions: an install's records in flight lose their order).
        #[arg(long)]
        add_partitions: bool,
        /// Only say what would be done.
        #[arg(long)]
        dry_run: bool,
    },
    /// Compare only: exit 0 when every topic is as declared.
    Check {
        #[command(flatten)]
        select: Select,
    },
}

#[derive(Args)]
struct Select {
    /// The declaration (TOML, [[topic]] tables); the one compiled in from
    /// helm/context-pipeline/topics.toml without it.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Every topic's replication factor instead of the declared one, for a
    /// cluster of fewer brokers (the single-node stack: 1); caps
    /// min.insync.replicas at max(1, N - 1).
    #[arg(long, value_name = "N")]
    replication_factor: Option<i32>,
    /// A topic's partitions instead of the declared ones (repeatable), by its
    /// declared name: --partitions context.events.v1=4.
    #[arg(long = "partitions", value_name = "TOPIC=N")]
    partitions: Vec<String>,
    /// The name a declared topic has on this cluster (repeatable):
    /// --name context.events.v1=prod.events.
    #[arg(long = "name", value_name = "DECLARED=NAME")]
    names: Vec<String>,
    /// Leave a declared topic alone (repeatable), such as _schemas with an
    /// external schema registry.
    #[arg(long = "skip", value_name = "TOPIC")]
    skip: Vec<String>,
    /// Another librdkafka setting of the admin client (repeatable):
    /// --property socket.keepalive.enable=true.
    #[arg(long = "property", value_name = "KEY=VALUE")]
    properties: Vec<String>,
    /// How long one request to the brokers may take.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// The Kafka settings of the tools, with `--property` laid over them.
fn settings(properties: &[String]) -> Result<KafkaSettings, String> {
    let mut s = KafkaSettings::from_tool_env()?;
    for p in properties {
        let (key, value) = p
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .ok_or_else(|| format!("--property `{p}`: expected KEY=VALUE"))?;
        s.properties
            .insert(key.trim().to_owned(), Property(value.trim().to_owned()));
    }
    let problems = s.check("kafka");
    if problems.is_empty() {
        Ok(s)
    } else {
        Err(problems.join("; "))
    }
}

fn exit(e: &TopicsError) -> ExitCode {
    eprintln!("context-topics: {e}");
    ExitCode::from(if e.is_usage() { 2 } else { 1 })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (select, mode) = match cli.command {
        Command::Apply {
            select,
            add_partitions,
            dry_run,
        } => (
            select,
            Mode::Apply {
                dry_run,
                add_partitions,
            },
        ),
        Command::Check { select } => (select, Mode::Check),
    };
    let declared = match Declaration::load(select.file.as_deref()) {
        Ok(d) => d,
        Err(e) => return exit(&e),
    };
    let overrides = match Overrides::from_args(
        select.replication_factor,
        &select.partitions,
        &select.names,
        &select.skip,
    ) {
        Ok(o) => o,
        Err(e) => return exit(&e),
    };
    let specs = match declared.resolve(&overrides) {
        Ok(s) => s,
        Err(e) => return exit(&e),
    };
    let kafka = match settings(&select.properties) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("context-topics: the Kafka settings (KAFKA_* variables, --property): {e}");
            return ExitCode::from(2);
        }
    };
    // A wrong password or an unreachable broker as one clear error.
    let verify = {
        let kafka = kafka.clone();
        let wait = select.timeout;
        tokio::task::spawn_blocking(move || context_runtime::kafka::verify(&kafka, wait)).await
    };
    match verify {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("context-topics: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("context-topics: checking the brokers: {e}");
            return ExitCode::FAILURE;
        }
    }
    let admin = match Admin::connect(&kafka, select.timeout) {
        Ok(a) => a,
        Err(e) => return exit(&e),
    };
    let outcome = topics::run(&admin, &specs, mode).await;
    for line in &outcome.lines {
        println!("{line}");
    }
    if outcome.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

//! `enrich-activity`: train and evaluate the activity model.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use enrich_activity::config::Config;
use enrich_activity::dataset;
use enrich_activity::features::FeatureSpec;
use enrich_activity::model::{confusion_text, train, Model};

/// Activity tagging of motion windows (standing, walking, running…).
///
/// `train` fits a model on labelled windows and writes a versioned artifact;
/// `eval` measures a model on labelled windows. Data files are UEA/sktime
/// `.ts` files (like data/BasicMotions_TRAIN.ts, 10 Hz) or CSV files with the
/// header `window,label,rate_hz,acc_x,acc_y,acc_z,gyr_x,gyr_y,gyr_z`.
/// `serve` tags every window of context.motion.v1 into context.activity.v1;
/// `replay` re-tags a range of history with another model through its own
/// consumer group, resumable, with `--dry-run` to see the offset ranges first.
/// `--check-config FILE` validates a serve/replay configuration file (with
/// the ENRICH_* environment) and prints the settings, without starting.
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
    /// Train on labelled windows: prints k-fold accuracy per candidate and the
    /// confusion matrix, writes the chosen model.
    Train {
        /// Labelled data files (.ts or .csv).
        #[arg(long, required = true, num_args = 1..)]
        data: Vec<PathBuf>,
        /// Where to write the model artifact (JSON).
        #[arg(long)]
        out: PathBuf,
        /// Seed of the fold assignment; the same seed gives the same model.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Folds of the cross-validation.
        #[arg(long, default_value_t = 5)]
        folds: usize,
        /// Sample rate of the series in .ts files.
        #[arg(long, default_value_t = 10.0)]
        ts_rate_hz: f64,
    },
    /// Tag the motion windows of Kafka with the model, until SIGTERM; a changed
    /// model file is picked up without a restart.
    Serve {
        /// TOML file (motion_topic, activity_topic, group_id, admin_listen,
        /// model, max_batch, registry_url and credentials, the [kafka] table:
        /// bootstrap, security_protocol, sasl_*, ssl_*); ENRICH_* variables
        /// override it (ENRICH_KAFKA_SASL_PASSWORD). See docs/security.md.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The model artifact (overrides the file and ENRICH_MODEL).
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Re-tag history with a model version, beside the tags of other versions.
    Replay {
        /// The same file as `serve`'s; ENRICH_* variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The model to tag with (overrides the file and ENRICH_MODEL).
        #[arg(long)]
        model: Option<PathBuf>,
        /// earliest, latest, an RFC 3339 time, or partition:offset,...
        #[arg(long)]
        from: String,
        /// Where to stop (exclusive); default: the end of the topic at start.
        #[arg(long, default_value = "latest")]
        to: String,
        /// Only print the offset ranges and the record count.
        #[arg(long)]
        dry_run: bool,
        /// Consumer group (default enrich-activity-replay-<model_version>);
        /// running again with the same group resumes.
        #[arg(long)]
        group_id: Option<String>,
    },
    /// Evaluate a model: accuracy, per-class precision and recall, confusion matrix.
    Eval {
        #[arg(long, required = true, num_args = 1..)]
        data: Vec<PathBuf>,
        #[arg(long)]
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 10.0)]
        ts_rate_hz: f64,
    },
}

fn load(paths: &[PathBuf], rate: f64) -> Result<Vec<dataset::LabelledWindow>, String> {
    let mut all = Vec::new();
    for p in paths {
        all.extend(dataset::read(p, rate)?);
    }
    Ok(all)
}

fn run(command: Command) -> Result<(), String> {
    let spec = FeatureSpec::default();
    match command {
        Command::Serve { config, model } => {
            let loaded =
                Config::load(config.as_deref(), model).map_err(|e| format!("the configuration is invalid:\n{e}"))?;
            context_runtime::init_tracing();
            loaded.log_warnings();
            let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let metrics = context_runtime::install_metrics();
                // Ends on SIGTERM/SIGINT after the batch in flight, or at once on an error.
                let shutdown = context_runtime::shutdown::Shutdown::on_signals();
                enrich_activity::serve::run(loaded.config, metrics, shutdown)
                    .await
                    .map_err(|e| format!("{e:#}"))
            })?;
        }
        Command::Train {
            data,
            out,
            seed,
            folds,
            ts_rate_hz,
        } => {
            let windows = load(&data, ts_rate_hz)?;
            eprintln!(
                "training on {} windows, {} x stratified {folds}-fold cross-validation, seed {seed}",
                windows.len(),
                enrich_activity::model::CV_REPEATS
            );
            let (model, report) = train(&windows, &spec, seed, folds)?;
            println!(
                "{:<52} {:>9} {:>9} {:>14}",
                "candidate", "accuracy", "log-loss", "µs per window"
            );
            for (name, acc, loss, us) in &report.candidates {
                println!("{name:<52} {acc:>9.3} {loss:>9.4} {us:>14.1}");
            }
            println!(
                "\nchosen: {} (cross-validated accuracy {:.3}, log-loss {:.4}; ties go to the lower log-loss)\n",
                model.description, model.cv_accuracy, model.cv_log_loss
            );
            print!("{}", confusion_text(&model.labels, &report.confusion));
            std::fs::write(&out, model.to_json()).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
            println!("\nwrote {} (model_version {})", out.display(), model.model_version);
        }
        Command::Replay {
            config,
            model,
            from,
            to,
            dry_run,
            group_id,
        } => {
            let loaded =
                Config::load(config.as_deref(), model).map_err(|e| format!("the configuration is invalid:\n{e}"))?;
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            let c = loaded.config;
            let model = c.model_path().to_path_buf();
            use enrich_activity::replay::{self, Bound, ReplaySettings};
            let text = std::fs::read_to_string(&model).map_err(|e| format!("cannot read {}: {e}", model.display()))?;
            let version = Model::from_json(&text, &spec)
                .map_err(|e| format!("{}: {e}", model.display()))?
                .model_version;
            let settings = ReplaySettings {
                kafka: c.kafka,
                registry: c.registry,
                motion_topic: c.motion_topic,
                activity_topic: c.activity_topic,
                model_path: model,
                from: Bound::parse(&from)?,
                to: Bound::parse(&to)?,
                group_id,
                max_batch: c.max_batch,
                progress: true,
            };
            let plan = replay::plan(&settings, &version).map_err(|e| format!("{e:#}"))?;
            eprintln!("{}", plan.describe());
            if !dry_run {
                let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
                let started = std::time::Instant::now();
                let counts = runtime.block_on(async {
                    let shutdown = context_runtime::shutdown::Shutdown::on_signals();
                    let task = tokio::spawn(replay::run(settings, shutdown));
                    task.await.map_err(|e| e.to_string())?.map_err(|e| format!("{e:#}"))
                })?;
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "{} with {version} in {secs:.1} s ({:.0} events/s)",
                    counts.summary(),
                    counts.tagged as f64 / secs.max(1e-3)
                );
            }
        }
        Command::Eval {
            data,
            model,
            json,
            ts_rate_hz,
        } => {
            let text = std::fs::read_to_string(&model).map_err(|e| format!("cannot read {}: {e}", model.display()))?;
            let model = Model::from_json(&text, &spec).map_err(|e| format!("{}: {e}", model.display()))?;
            let eval = model.evaluate(&load(&data, ts_rate_hz)?, &spec);
            if json {
                println!("{}", serde_json::to_string_pretty(&eval).expect("serializes"));
            } else {
                println!(
                    "model {} ({}) on {} windows: accuracy {:.3}\n",
                    eval.model_version, eval.family, eval.windows, eval.accuracy
                );
                println!("{:<12} {:>9} {:>7}", "label", "precision", "recall");
                for (label, p, r) in &eval.per_class {
                    println!("{label:<12} {p:>9.3} {r:>7.3}");
                }
                println!();
                print!("{}", confusion_text(&eval.labels, &eval.confusion));
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(file) = cli.check.check_config {
        return context_runtime::config::check_file::<Config>(&file);
    }
    let Some(command) = cli.command else {
        eprintln!("enrich-activity: give a command (train, eval, serve, replay) or --check-config FILE; see --help");
        return ExitCode::from(2);
    };
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("enrich-activity: {e}");
            ExitCode::FAILURE
        }
    }
}

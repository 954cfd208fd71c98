//! `enrich-activity`: train and evaluate the activity model.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use enrich_activity::config::Config;
use enrich_activity::dataset;
use enrich_activity::features::FeatureSpec;
use enrich_activity::model::{confusion_table, confusion_text, train_with, Model, TrainOptions, TrainingRecord};

/// Activity tagging of motion windows (walking, sitting, standing, lying, unknown).
///
/// `train` fits a model on labelled windows and writes a versioned artifact;
/// `eval` measures a model on labelled windows. Data: a folder of phone
/// recordings (like data/hapt/train: one CSV a recording, cut into windows
/// the way the SDK sends them, each subject its own cross-validation group),
/// JSON lines (one window a line: {"id", "label", "sample_rate_hz",
/// "accelerometer": [[x,y,z],...], "gyroscope": [[x,y,z],...]}), UEA/sktime
/// `.ts` files (like data/BasicMotions_TRAIN.ts, 10 Hz) or CSV files with the
/// header `window,label,rate_hz,acc_x,acc_y,acc_z,gyr_x,gyr_y,gyr_z`.
/// Acceleration in g with gravity, Core Motion's sign; rotation rate in rad/s.
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
    /// Train on labelled windows: prints the cross-validated scores of every
    /// candidate (by subject when the data names subjects) and the confusion
    /// matrix, writes the chosen model.
    ///
    /// Example: enrich-activity train --data enrich-activity/data/hapt/train --out model.json
    Train {
        /// Labelled data: recordings folders, .jsonl, .ts or .csv files.
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
        /// Window lengths cut from recordings (seconds, comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "2.5,5,10")]
        window_seconds: Vec<f64>,
        /// Step between the windows cut from recordings (seconds).
        #[arg(long, default_value_t = 2.5)]
        hop_seconds: f64,
        /// Below this probability a window is unknown (stored in the model;
        /// `serve` and `replay` use it).
        #[arg(long, default_value_t = enrich_activity::serve::DEFAULT_MIN_CONFIDENCE)]
        min_confidence: f32,
        /// Do not add turned copies of the moving windows of recordings.
        #[arg(long)]
        no_rotation: bool,
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
    /// Evaluate a model: accuracy, macro-F1, per-class precision, recall and
    /// F1, the unknown share, calibration, accuracy per subject and the
    /// confusion matrix. Labels are compared in any case and by synonym
    /// (walking_upstairs is walking, laying is lying).
    ///
    /// Example: enrich-activity eval --data held-out.jsonl --model model.json --json
    Eval {
        /// Labelled data: .jsonl, recordings folders, .ts or .csv files.
        #[arg(long, required = true, num_args = 1..)]
        data: Vec<PathBuf>,
        #[arg(long)]
        model: PathBuf,
        /// Print one JSON object instead of text, with every window's
        /// {id, label, predicted, confidence} in `windows`.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 10.0)]
        ts_rate_hz: f64,
    },
}

fn load(paths: &[PathBuf], rate: f64, cut: &dataset::Cut) -> Result<Vec<dataset::LabelledWindow>, String> {
    let mut all = Vec::new();
    for p in paths {
        all.extend(dataset::read_with(p, rate, cut)?);
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
            window_seconds,
            hop_seconds,
            min_confidence,
            no_rotation,
        } => {
            if window_seconds.iter().any(|s| *s < spec.min_seconds) || hop_seconds <= 0.0 {
                return Err(format!(
                    "--window-seconds must be at least {} (the shortest window tagged) and --hop-seconds above 0",
                    spec.min_seconds
                ));
            }
            let cut = dataset::Cut {
                seconds: window_seconds.clone(),
                hop_seconds,
                transitions: false,
            };
            let windows = load(&data, ts_rate_hz, &cut)?;
            let mut groups: Vec<&str> = windows.iter().filter_map(|w| w.group.as_deref()).collect();
            groups.sort();
            groups.dedup();
            eprintln!(
                "training on {} windows{}, seed {seed}",
                windows.len(),
                if groups.is_empty() {
                    format!(
                        ", {} x stratified {folds}-fold cross-validation",
                        enrich_activity::model::CV_REPEATS
                    )
                } else {
                    format!(
                        " of {} subjects, {folds}-fold cross-validation by subject",
                        groups.len()
                    )
                }
            );
            let options = TrainOptions {
                seed,
                folds,
                rotate_moving: !no_rotation,
                min_confidence,
                training: TrainingRecord {
                    data: data.iter().map(|p| p.display().to_string()).collect(),
                    window_seconds,
                    hop_seconds,
                    ..TrainingRecord::default()
                },
            };
            let (model, report) = train_with(&windows, &spec, &options)?;
            println!(
                "{:<66} {:>8} {:>8} {:>6} {:>8} {:>7}",
                "candidate", "accuracy", "macro-F1", "ECE", "log-loss", "µs/win"
            );
            for c in &report.candidates {
                println!(
                    "{:<66} {:>8.3} {:>8.3} {:>6.3} {:>8.4} {:>7.1}",
                    c.name, c.accuracy, c.macro_f1, c.ece, c.log_loss, c.micros
                );
            }
            let cv = &model.cv;
            println!(
                "\nchosen: {} (cross-validated by {}, {} folds: accuracy {:.3}, macro-F1 {:.3}, ECE {:.3}, log-loss {:.4}{}; \
                 the best of {} candidates by macro-F1, then calibration)",
                model.description,
                cv.folds_by,
                cv.folds,
                cv.accuracy,
                cv.macro_f1,
                cv.ece,
                cv.log_loss,
                cv.worst_group_accuracy
                    .map(|a| format!(", worst subject {a:.3}"))
                    .unwrap_or_default(),
                cv.candidates
            );
            println!(
                "unknown gate: min_confidence {}, distance factor {} (held-out windows made unknown: {:.1} %)\n",
                model.gate.min_confidence,
                model.gate.factor,
                100.0 * cv.unknown_share
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
                min_confidence: c.min_confidence,
                forget_topic: c.forget_topic,
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
            let eval = model.evaluate(&load(&data, ts_rate_hz, &dataset::Cut::default())?, &spec);
            if json {
                println!("{}", serde_json::to_string(&eval).expect("serializes"));
            } else {
                println!(
                    "model {} ({}) on {} windows: accuracy {:.3}, macro-F1 {:.3}, unknown {:.1} %, ECE {:.3}\n",
                    eval.model_version,
                    eval.family,
                    eval.count,
                    eval.accuracy,
                    eval.macro_f1,
                    100.0 * eval.unknown_share,
                    eval.ece
                );
                println!(
                    "{:<12} {:>9} {:>7} {:>7} {:>8}",
                    "label", "precision", "recall", "F1", "windows"
                );
                for c in &eval.per_class {
                    println!(
                        "{:<12} {:>9.3} {:>7.3} {:>7.3} {:>8}",
                        c.label, c.precision, c.recall, c.f1, c.support
                    );
                }
                if !eval.per_group.is_empty() {
                    println!();
                    for (g, a) in &eval.per_group {
                        println!("{g:<12} accuracy {a:.3}");
                    }
                }
                println!();
                print!("{}", confusion_table(&eval.rows, &eval.columns, &eval.confusion));
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

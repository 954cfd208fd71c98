//! `devicesim`: a fleet of simulated iPhones for the ingest path, and the
//! check that everything it was told was stored.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use context_integration::fleet::{life, run, verify};
use context_runtime::shutdown::Shutdown;

/// A simulated fleet of iPhones running the context SDK.
///
/// `run` starts N devices. Each keeps an install id for its life (in
/// STATE/devices/<n>/device.json), makes sessions of events with every
/// signal (device facts fixed per install, battery draining, values drifting
/// slowly, as real ones do) and, for a share of events, a motion window taken
/// from a labelled recording. A session is written to the device's on-disk
/// queue before it is sent and deleted only on a 200; 429 and 503 are retried
/// after their Retry-After, other failures with exponential backoff, exactly
/// as the SDK contract says. Ctrl-C stops at once and leaves unsent batches
/// queued: the next `run` with the same --state sends them first.
///
/// `verify` reads what the devices were told (STATE/devices/*/acked.tsv) and
/// checks ClickHouse: every acknowledged event stored exactly once after
/// dedup, every rejected one dead-lettered, a tag (or a dead letter) for every
/// event with motion, empty queues, and how many tags equal the label.
///
///   devicesim run --key $(cat .stack/platform/api-key) --devices 8 --duration 60
///   devicesim run --sessions 0            # only send what is still queued
///   devicesim verify --wait 120
#[derive(Parser)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the fleet until its sessions are made and acknowledged.
    Run(RunArgs),
    /// Check ClickHouse against what the fleet was acknowledged.
    Verify(VerifyArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Gateway base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// API key (from `ingest-gateway keys new`; scripts/platform writes one
    /// to .stack/platform/api-key).
    #[arg(long, env = "CONTEXT_API_KEY")]
    key: String,
    /// The fleet's folder: devices, queues, acknowledgements.
    #[arg(long, default_value = ".stack/devicesim")]
    state: PathBuf,
    /// Devices (each sends one request at a time). Devices already in
    /// --state run too, so their queues drain.
    #[arg(long, default_value_t = 8)]
    devices: usize,
    /// New sessions per device; 0 only sends what is queued. By default 20,
    /// or no limit with --duration.
    #[arg(long)]
    sessions: Option<u64>,
    /// Stop making sessions after this many seconds, then drain the queues.
    #[arg(long)]
    duration: Option<u64>,
    /// Give up after this many seconds; unsent batches stay queued.
    #[arg(long, default_value_t = 900)]
    max_seconds: u64,
    /// Events per session: N or MIN-MAX.
    #[arg(long, default_value = "5-30", value_parser = parse_range)]
    events: (usize, usize),
    /// Share of events carrying a motion recording (0 to 1).
    #[arg(long, default_value_t = 0.3)]
    motion_share: f64,
    /// Labelled recordings for the motion windows: a folder of phone
    /// recordings (the default: UCI HAPT's, 50 Hz, cut into 10 s windows;
    /// the model's training data, so agreement is a smoke check), or a .ts
    /// (10 Hz), .csv or .jsonl file.
    #[arg(long, default_value = "enrich-activity/data/hapt/train")]
    recordings: PathBuf,
    /// Compress bodies with gzip.
    #[arg(long)]
    gzip: bool,
    /// Events per second over the whole fleet, sessions made on a schedule
    /// whatever the answers (open loop). Without it each device makes its
    /// next session when the previous one is acknowledged.
    #[arg(long)]
    rate: Option<f64>,
    /// Make all sessions before sending any (load measurements).
    #[arg(long)]
    pregenerate: bool,
    /// Batches a device keeps queued at most; it makes no new session while full.
    #[arg(long, default_value_t = 1000)]
    max_queued: usize,
    /// Seed of new installs (same seed, same devices and events); by
    /// default a new one each run. Devices already in --state keep theirs.
    #[arg(long)]
    seed: Option<u64>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(clap::Args)]
struct VerifyArgs {
    #[arg(long, default_value = ".stack/devicesim")]
    state: PathBuf,
    /// ClickHouse HTTP endpoint (`https://` with CLICKHOUSE_CA_FILE for a
    /// private CA); CLICKHOUSE_USER and CLICKHOUSE_PASSWORD sign in.
    #[arg(long, env = "CLICKHOUSE_URL", default_value = "http://127.0.0.1:8123")]
    clickhouse_url: String,
    #[arg(long, default_value = "context")]
    database: String,
    /// Seconds to wait for the pipeline to catch up.
    #[arg(long, default_value_t = 120)]
    wait: u64,
    /// Also write the verdict as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

fn parse_range(s: &str) -> Result<(usize, usize), String> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let lo: usize = lo.trim().parse().map_err(|_| format!("{s:?} is not N or MIN-MAX"))?;
    let hi: usize = hi.trim().parse().map_err(|_| format!("{s:?} is not N or MIN-MAX"))?;
    if lo == 0 || hi < lo {
        return Err(format!("{s:?}: need 1 <= MIN <= MAX"));
    }
    Ok((lo, hi))
}

fn write_json(path: &Option<PathBuf>, value: &impl serde::Serialize) -> Result<()> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_vec_pretty(value)?).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(a) => {
            if !(0.0..=1.0).contains(&a.motion_share) {
                bail!("--motion-share is a share between 0 and 1");
            }
            let recordings = if a.motion_share > 0.0 {
                life::recordings(&a.recordings).with_context(|| {
                    format!(
                        "reading the recordings (--recordings {}; run from the repository root)",
                        a.recordings.display()
                    )
                })?
            } else {
                Vec::new()
            };
            let state = a.state.clone();
            let shutdown = Shutdown::on_signals();
            let report = run::run(
                run::RunOptions {
                    url: a.url,
                    key: a.key.trim().to_owned(),
                    state: a.state,
                    devices: a.devices,
                    sessions: a.sessions.unwrap_or(if a.duration.is_some() { u64::MAX } else { 20 }),
                    duration: a.duration.map(Duration::from_secs),
                    max_time: Duration::from_secs(a.max_seconds),
                    events: a.events,
                    motion_share: a.motion_share,
                    gzip: a.gzip,
                    rate: a.rate,
                    pregenerate: a.pregenerate,
                    max_queued: a.max_queued.max(1),
                    seed: a.seed.unwrap_or_else(|| context_runtime::clock::now_micros() as u64),
                    recordings,
                },
                shutdown.clone(),
            )
            .await?;
            eprintln!();
            println!("{}", report.text());
            write_json(&a.report, &report)?;
            if report.batches_still_queued > 0 {
                bail!(
                    "{} batches are still queued under {}; `devicesim run --state {} --sessions 0` sends them",
                    report.batches_still_queued,
                    state.display(),
                    state.display()
                );
            }
            if report.batches_failed > 0 {
                bail!(
                    "{} batches were refused for good; their answers are in {}/devices/*/failed",
                    report.batches_failed,
                    state.display()
                );
            }
            Ok(())
        }
        Command::Verify(a) => {
            let verdict = verify::verify(&verify::VerifyOptions {
                state: a.state,
                clickhouse_url: a.clickhouse_url,
                database: a.database,
                wait: Duration::from_secs(a.wait),
            })
            .await?;
            println!("{}", verdict.text());
            write_json(&a.report, &verdict)?;
            if !verdict.complete() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

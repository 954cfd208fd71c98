//! The fleet: N devices, each making sessions into its on-disk queue and
//! sending the oldest queued batch until a 200, as the SDK contract says.

use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use context_runtime::backoff::Backoff;
use context_runtime::clock::now_micros;
use context_runtime::shutdown::Shutdown;
use ingest_gateway::sdk;
use serde::Serialize;

use super::life::{Install, Recording};
use super::queue::{write_synced, BatchMeta, Outcome, Queue};

/// What `devicesim run` does.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub url: String,
    pub key: String,
    /// The fleet's folder: one sub-folder per device under `devices/`.
    pub state: PathBuf,
    pub devices: usize,
    /// New sessions per device (0: only send what is queued).
    pub sessions: u64,
    /// Stop making new sessions after this long (then drain the queues).
    pub duration: Option<Duration>,
    /// Give up after this long, leaving what is unsent in the queues.
    pub max_time: Duration,
    /// Events per session, inclusive range.
    pub events: (usize, usize),
    /// Share of events that carry a motion recording.
    pub motion_share: f64,
    pub gzip: bool,
    /// Events per second over the whole fleet (open loop); `None`: each
    /// device makes its next session when the previous one is acknowledged.
    pub rate: Option<f64>,
    /// Make every session first, then start sending (load tests: the
    /// generator's CPU is not spent while measuring); with `rate`, the
    /// made sessions are sent on the rate's schedule.
    pub pregenerate: bool,
    /// Sessions a device keeps queued at most; it stops making new ones
    /// while its queue is full (an SDK caps its disk use the same way).
    pub max_queued: usize,
    pub seed: u64,
    pub recordings: Vec<Recording>,
}

impl RunOptions {
    /// Events in an average session of `events`.
    pub fn mean_events(&self) -> f64 {
        (self.events.0 + self.events.1) as f64 / 2.0
    }

    /// Sessions each device makes for the fleet to make about `events`.
    pub fn sessions_per_device(&self, events: f64) -> u64 {
        (events / self.devices.max(1) as f64 / self.mean_events()).ceil() as u64
    }
}

/// The numbers of a run, printed at the end and written as JSON.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub devices: usize,
    pub elapsed_s: f64,
    pub sessions_made: u64,
    pub events_made: u64,
    pub attempts: u64,
    pub batches_acknowledged: u64,
    pub events_acknowledged: u64,
    pub events_rejected: u64,
    pub retries: u64,
    /// Answers by HTTP status (0: no answer: connection refused, timeout).
    pub answers: BTreeMap<u16, u64>,
    pub batches_failed: u64,
    pub batches_still_queued: u64,
    pub events_per_s: f64,
    pub request_bytes: u64,
    /// Latency of the acknowledged attempts.
    pub latency_ms: Percentiles,
    /// From queueing to acknowledgement, retries included.
    pub queue_to_ack_ms: Percentiles,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(mut values: Vec<f64>) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        values.sort_by(f64::total_cmp);
        let at = |p: f64| values[((values.len() - 1) as f64 * p).round() as usize];
        Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

#[derive(Default)]
struct Stats {
    sessions: AtomicU64,
    events: AtomicU64,
    attempts: AtomicU64,
    batches: AtomicU64,
    acked: AtomicU64,
    rejected: AtomicU64,
    retries: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
    answers: Mutex<BTreeMap<u16, u64>>,
    latency: Mutex<Vec<f64>>,
    delay: Mutex<Vec<f64>>,
    /// The first request: rates count from here, not from the start of
    /// a pregenerated run.
    first_send: std::sync::OnceLock<Instant>,
}

/// The folder of device `index`.
pub fn device_dir(state: &Path, index: usize) -> PathBuf {
    state.join("devices").join(format!("{index:05}"))
}

/// The devices already in `state`, in order.
pub fn device_dirs(state: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(state.join("devices")) {
        Ok(list) => list
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join("device.json").exists())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", state.display())),
    };
    out.sort();
    Ok(out)
}

/// Loads device `index` of the fleet, or installs it.
fn install(dir: &Path, seed: u64) -> Result<Install> {
    let path = dir.join("device.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            let phone = Install::new(seed);
            write_synced(&path, &serde_json::to_vec_pretty(&phone)?)?;
            Ok(phone)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Runs the fleet until every device made its sessions and emptied its
/// queue, the time is up, or `shutdown` fires. Unsent batches stay queued.
/// Needs Tokio's multi-threaded runtime (the queue's synced writes use
/// `block_in_place`).
pub async fn run(opts: RunOptions, shutdown: Shutdown) -> Result<Report> {
    let opts = Arc::new(opts);
    let stats = Arc::new(Stats::default());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let started = Instant::now();
    let mut devices = Vec::new();
    // Devices already in the folder keep running (and draining) too.
    let count = opts.devices.max(device_dirs(&opts.state)?.len());
    let ready = Arc::new(tokio::sync::Barrier::new(count));
    for index in 0..count {
        let (opts, stats, client, shutdown, ready) = (
            opts.clone(),
            stats.clone(),
            client.clone(),
            shutdown.clone(),
            ready.clone(),
        );
        devices.push(tokio::spawn(async move {
            let result = device(index, count, &opts, &stats, &client, shutdown, &ready).await;
            result.with_context(|| format!("device {index}"))
        }));
    }
    let progress = tokio::spawn(progress(stats.clone(), started, count));
    let mut first_error = None;
    for d in devices {
        if let Err(e) = d.await? {
            first_error.get_or_insert(e);
        }
    }
    progress.abort();
    if let Some(e) = first_error {
        return Err(e);
    }
    let mut queued = 0;
    for dir in device_dirs(&opts.state)? {
        queued += Queue::open(&dir)?.pending()?.len() as u64;
    }
    let elapsed = stats
        .first_send
        .get()
        .copied()
        .unwrap_or(started)
        .elapsed()
        .as_secs_f64();
    let acked = stats.acked.load(Relaxed) + stats.rejected.load(Relaxed);
    let latency = std::mem::take(&mut *stats.latency.lock().unwrap());
    let delay = std::mem::take(&mut *stats.delay.lock().unwrap());
    let answers = stats.answers.lock().unwrap().clone();
    Ok(Report {
        devices: count,
        elapsed_s: elapsed,
        sessions_made: stats.sessions.load(Relaxed),
        events_made: stats.events.load(Relaxed),
        attempts: stats.attempts.load(Relaxed),
        batches_acknowledged: stats.batches.load(Relaxed),
        events_acknowledged: acked,
        events_rejected: stats.rejected.load(Relaxed),
        retries: stats.retries.load(Relaxed),
        answers,
        batches_failed: stats.failed.load(Relaxed),
        batches_still_queued: queued,
        events_per_s: acked as f64 / elapsed.max(1e-9),
        request_bytes: stats.bytes.load(Relaxed),
        latency_ms: Percentiles::of(latency),
        queue_to_ack_ms: Percentiles::of(delay),
    })
}

async fn sleep_or_stop(until: Instant, shutdown: &mut Shutdown) {
    tokio::select! {
        _ = tokio::time::sleep_until(until.into()) => {}
        _ = shutdown.requested() => {}
    }
}

async fn device(
    index: usize,
    count: usize,
    opts: &RunOptions,
    stats: &Stats,
    client: &reqwest::Client,
    mut shutdown: Shutdown,
    ready: &tokio::sync::Barrier,
) -> Result<()> {
    let dir = device_dir(&opts.state, index);
    let opened = install(&dir, opts.seed.wrapping_mul(1_000_003).wrapping_add(index as u64))
        .and_then(|phone| Ok((phone, Queue::open(&dir)?)));
    let (mut phone, queue) = match opened {
        Ok(p) => p,
        Err(e) => {
            // The others wait for every device before sending.
            if opts.pregenerate {
                ready.wait().await;
            }
            return Err(e);
        }
    };
    let started = Instant::now();
    let deadline = started + opts.max_time;
    let stop_making = opts.duration.map(|d| started + d);
    let interval = opts
        .rate
        .map(|r| Duration::from_secs_f64(opts.mean_events() * count as f64 / r.max(1e-3)));
    // Spread the devices' first sessions over one interval.
    let mut next_session = started + interval.map_or(Duration::ZERO, |i| i.mul_f64(index as f64 / count as f64));
    let mut made = 0;
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    let mut not_before: Option<Instant> = None;
    let make = |phone: &mut Install| -> Result<()> {
        let n = opts.events.0
            + (phone.seed.wrapping_add(phone.sessions) % (opts.events.1 - opts.events.0 + 1) as u64) as usize;
        let now = now_micros();
        let (events, labels) = phone.session(now, n, opts.motion_share, &opts.recordings);
        // The session number is the queue's sequence: saved first, so a
        // crash can never make two sessions share it.
        write_synced(&dir.join("device.json"), &serde_json::to_vec_pretty(&phone)?)?;
        let json = sdk::batch_json(&events, phone.device_time(now))
            .to_string()
            .into_bytes();
        let body = if opts.gzip { gzip(&json)? } else { json };
        let meta = BatchMeta {
            gzip: opts.gzip,
            events: events
                .iter()
                .zip(labels)
                .map(|(e, l)| (e.event_id.to_string(), l.unwrap_or_default()))
                .collect(),
            queued_at_us: now,
        };
        queue.push(phone.sessions, &body, &meta)?;
        stats.sessions.fetch_add(1, Relaxed);
        stats.events.fetch_add(n as u64, Relaxed);
        Ok(())
    };
    if opts.pregenerate {
        let mut made_all = Ok(());
        while made < opts.sessions && !shutdown.is_requested() {
            if let Err(e) = tokio::task::block_in_place(|| make(&mut phone)) {
                made_all = Err(e);
                break;
            }
            made += 1;
        }
        ready.wait().await;
        made_all?;
        // Pregenerated sessions are sent on the rate's schedule from here.
        if let Some(i) = interval {
            next_session = Instant::now() + i.mul_f64(index as f64 / count as f64);
        }
    }
    let mut pending = queue.pending()?;
    loop {
        let now = Instant::now();
        if shutdown.is_requested() || now >= deadline {
            return Ok(());
        }
        let making = made < opts.sessions && stop_making.is_none_or(|s| now < s);
        let due = match interval {
            Some(_) => now >= next_session,
            None => pending.is_empty(),
        };
        if making && due && pending.len() < opts.max_queued {
            tokio::task::block_in_place(|| make(&mut phone))?;
            made += 1;
            if let Some(i) = interval {
                next_session += i;
            }
            pending = queue.pending()?;
            continue;
        }
        let Some(&seq) = pending.first() else {
            if !making {
                return Ok(());
            }
            sleep_or_stop(next_session.min(deadline), &mut shutdown).await;
            continue;
        };
        if let Some(t) = not_before.filter(|t| *t > now) {
            let wake = if making && interval.is_some() {
                t.min(next_session)
            } else {
                t
            };
            sleep_or_stop(wake.min(deadline), &mut shutdown).await;
            continue;
        }
        not_before = None;
        if let (true, Some(i)) = (opts.pregenerate, interval) {
            if now < next_session {
                sleep_or_stop(next_session.min(deadline), &mut shutdown).await;
                continue;
            }
            next_session += i;
        }
        let (body, meta) = queue.load(seq)?;
        let mut req = client
            .post(format!("{}/v1/batch", opts.url.trim_end_matches('/')))
            .header("Authorization", format!("Bearer {}", opts.key))
            .header("Content-Type", "application/json")
            // The time of this attempt on the device's clock; the body is
            // resent unchanged.
            .header("X-Sent-At", sdk::rfc3339(phone.device_time(now_micros())));
        if meta.gzip {
            req = req.header("Content-Encoding", "gzip");
        }
        stats.first_send.get_or_init(Instant::now);
        stats.attempts.fetch_add(1, Relaxed);
        stats.bytes.fetch_add(body.len() as u64, Relaxed);
        let t = Instant::now();
        let (status, retry_after, text) = match req.body(body).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get("Retry-After")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                (status, retry_after, resp.text().await.unwrap_or_default())
            }
            Err(e) => (0, None, e.to_string()),
        };
        *stats.answers.lock().unwrap().entry(status).or_default() += 1;
        match status {
            200 => {
                let rejected: HashSet<usize> = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| {
                        v["rejected"].as_array().map(|list| {
                            list.iter()
                                .filter_map(|r| r["index"].as_u64().map(|i| i as usize))
                                .collect()
                        })
                    })
                    .unwrap_or_default();
                let outcomes: Vec<(&str, Outcome, &str)> = meta
                    .events
                    .iter()
                    .enumerate()
                    .map(|(i, (id, label))| {
                        let o = if rejected.contains(&i) {
                            Outcome::Rejected
                        } else {
                            Outcome::Ok
                        };
                        (id.as_str(), o, label.as_str())
                    })
                    .collect();
                // Synced writes: off the async workers, so that one
                // device's fsync does not stall another's request.
                tokio::task::block_in_place(|| queue.acknowledge(seq, &outcomes))?;
                stats.batches.fetch_add(1, Relaxed);
                stats
                    .acked
                    .fetch_add((meta.events.len() - rejected.len()) as u64, Relaxed);
                stats.rejected.fetch_add(rejected.len() as u64, Relaxed);
                stats.latency.lock().unwrap().push(t.elapsed().as_secs_f64() * 1e3);
                stats
                    .delay
                    .lock()
                    .unwrap()
                    .push((now_micros() - meta.queued_at_us) as f64 / 1e3);
                backoff.reset();
                pending.remove(0);
            }
            400..=499 if status != 429 && status != 408 => {
                eprintln!(
                    "[devicesim] device {index}: batch {seq} refused for good ({status}): {text}; kept in {}",
                    dir.join("failed").display()
                );
                tokio::task::block_in_place(|| queue.fail(seq, &format!("{status} {text}")))?;
                stats.failed.fetch_add(1, Relaxed);
                pending.remove(0);
            }
            _ => {
                // 429 and 503 say when to come back; without that, back off.
                stats.retries.fetch_add(1, Relaxed);
                let wait = match retry_after {
                    Some(s) => Duration::from_secs(s).mul_f64(1.0 + 0.1 * (index % 10) as f64 / 10.0),
                    None => backoff.next_wait(),
                };
                not_before = Some(Instant::now() + wait);
            }
        }
    }
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes)?;
    Ok(enc.finish()?)
}

async fn progress(stats: Arc<Stats>, started: Instant, devices: usize) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(10)
    };
    loop {
        tokio::time::sleep(every).await;
        let s = stats
            .first_send
            .get()
            .copied()
            .unwrap_or(started)
            .elapsed()
            .as_secs_f64()
            .max(1e-3);
        let acked = stats.acked.load(Relaxed) + stats.rejected.load(Relaxed);
        let line = format!(
            "[devicesim] {s:6.1} s  {devices} devices  sessions {}  acknowledged {} batches / {acked} events  retries {}  {:.0} events/s",
            stats.sessions.load(Relaxed),
            stats.batches.load(Relaxed),
            stats.retries.load(Relaxed),
            acked as f64 / s
        );
        if tty {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
    }
}

impl Report {
    /// The human-readable summary.
    pub fn text(&self) -> String {
        let p = |p: &Percentiles| {
            format!(
                "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                p.p50, p.p90, p.p99, p.max
            )
        };
        format!(
            "devicesim: {} devices, {:.1} s\n\
             sessions made {}, events made {}\n\
             acknowledged {} batches, {} events ({} rejected to dead letters), {:.0} events/s, {:.1} MB/s of bodies\n\
             attempts {}, retries {}, answers by status {:?}\n\
             latency of acknowledged requests: {}\n\
             queued to acknowledged: {}\n\
             batches refused for good: {}, still queued: {}",
            self.devices,
            self.elapsed_s,
            self.sessions_made,
            self.events_made,
            self.batches_acknowledged,
            self.events_acknowledged,
            self.events_rejected,
            self.events_per_s,
            self.request_bytes as f64 / 1e6 / self.elapsed_s.max(1e-9),
            self.attempts,
            self.retries,
            self.answers,
            p(&self.latency_ms),
            p(&self.queue_to_ack_ms),
            self.batches_failed,
            self.batches_still_queued,
        )
    }
}

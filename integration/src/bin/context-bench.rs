//! `context-bench`: the load benchmark of the whole platform, with each
//! stage's ceiling measured in the same run, written as a report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use context_integration::fleet::life::{self, Install};
use context_integration::fleet::queue::{Outcome, Queue};
use context_integration::fleet::run::{self, device_dirs, Report, RunOptions};
use context_integration::measure::{cpu_seconds, memory_mib, produce_all, reset_peak_memory};
use context_runtime::shutdown::Shutdown;
use context_schemas::{AvroRecord, ContextEvent};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Message};
use serde_json::{json, Value};

/// The load benchmark: the platform end to end against its ceilings.
///
/// Runs against the platform `scripts/platform up` started (release builds;
/// `scripts/bench` does both). In one run, so that the machine's noise
/// cancels out of every ratio:
///
///   1. the fleet (devicesim's devices, sessions made beforehand) sends as
///      fast as it is acknowledged: events/s through the gateway, the time
///      until ClickHouse holds all of them and their tags (end to end), and
///      each process's CPU seconds per 1,000 events and peak memory;
///   2. the fleet at 50 % of that rate (sessions made beforehand, sent on
///      schedule): the gateway's latency percentiles;
///   3. the gateway alone (router, tagger and sink paused with SIGSTOP);
///   4. the ceilings, with the same Avro bytes: a plain rdkafka producer
///      with the gateway's producer settings, a plain consumer of that topic,
///      `clickhouse-client` inserting the same rows as Native;
///   5. sink-clickhouse alone draining that topic into a scratch database,
///      then ClickHouse's bytes on disk per event from system.parts.
///
/// Writes <out>/<date>.json and <out>/<date>.md, ending with a capacity
/// table derived from the measured CPU seconds per 1,000 events.
///
///   scripts/bench                      # platform up, build, run
///   context-bench --events 60000 --out docs/benchmarks
#[derive(Parser)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// Events the fleet sends at full load (and the ceilings' record count).
    #[arg(long, default_value_t = 150_000)]
    events: u64,
    /// Simulated devices (requests in flight).
    #[arg(long, default_value_t = 16)]
    devices: usize,
    /// Seconds of the 50 % load phase.
    #[arg(long, default_value_t = 20)]
    half_seconds: u64,
    /// Compress request bodies with gzip.
    #[arg(long)]
    gzip: bool,
    /// Folder of the report files.
    #[arg(long, default_value = "docs/benchmarks")]
    out: PathBuf,
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    registry_url: String,
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    clickhouse_url: String,
    /// Where scripts/platform keeps its pids, configs and key.
    #[arg(long, default_value = ".stack/platform")]
    platform_dir: PathBuf,
    /// Where scripts/stack keeps the broker's and ClickHouse's pids.
    #[arg(long, default_value = ".stack")]
    stack_dir: PathBuf,
    /// Measure nothing: write the Markdown report of an earlier run's JSON
    /// (next to it, same name) and print it.
    #[arg(long, value_name = "JSON")]
    render: Option<PathBuf>,
}

const SERVICES: [&str; 6] = ["gateway", "router", "enrich", "sink", "broker", "clickhouse"];

fn read_pid(path: &Path) -> Result<u32> {
    std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (is the platform up? scripts/platform up)", path.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{} holds no pid", path.display()))
}

fn cpu_snapshot(pids: &BTreeMap<&'static str, u32>) -> BTreeMap<&'static str, f64> {
    pids.iter().map(|(s, p)| (*s, cpu_seconds(*p).unwrap_or(0.0))).collect()
}

async fn ch(client: &reqwest::Client, url: &str, sql: &str) -> Result<String> {
    let resp = client.post(url).body(sql.to_owned()).send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("ClickHouse: {sql}: {status}: {}", text.trim());
    }
    Ok(text.trim().to_owned())
}

async fn ch_number(client: &reqwest::Client, url: &str, sql: &str) -> Result<f64> {
    let text = ch(client, url, sql).await?;
    text.parse()
        .with_context(|| format!("ClickHouse answered {text:?} to {sql}"))
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = Command::new("uname")
        .arg("-sr")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory_gib": (mem_gib * 10.0).round() / 10.0,
        "kernel": kernel,
        "kafka": "Apache Kafka (scripts/stack, one KRaft node)",
        "clickhouse": Command::new("clickhouse-client").arg("--version").output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().trim_end_matches('.').to_owned()).unwrap_or_default(),
    })
}

/// Waits until ClickHouse holds every event the fleet in `state` was told
/// was accepted and a tag for each of those with motion (counted from the
/// devices' acknowledgement logs); the time it took. Polled once a second,
/// on rows received since `since_us` only.
async fn drained(client: &reqwest::Client, url: &str, state: &Path, since_us: i64) -> Result<f64> {
    let started = Instant::now();
    let mut ids = Vec::new();
    let (mut events, mut motion) = (0.0, 0.0);
    for dir in device_dirs(state)? {
        let phone: Install = serde_json::from_slice(&std::fs::read(dir.join("device.json"))?)?;
        ids.push(format!("'{}'", phone.install_id));
        for (_, outcome, label) in Queue::open(&dir)?.acknowledged()? {
            if outcome == Outcome::Ok {
                events += 1.0;
                motion += f64::from(u8::from(!label.is_empty()));
            }
        }
    }
    let ids = ids.join(",");
    loop {
        let stored = ch_number(
            client,
            url,
            &format!(
                "SELECT uniqExact(event_id) FROM context.events WHERE received_at_us >= {since_us} AND toString(install_id) IN ({ids})"
            ),
        )
        .await?;
        let tags = ch_number(
            client,
            url,
            &format!(
                "SELECT uniqExact(event_id) FROM context.activity_tags WHERE tagged_at_us >= {since_us} AND toString(install_id) IN ({ids})"
            ),
        )
        .await?;
        if stored >= events && tags >= motion {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("after 10 minutes ClickHouse holds {stored} of {events} events and {tags} of {motion} tags");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn fleet_options(cli: &Cli, key: &str, state: PathBuf, recordings: &[life::Recording]) -> RunOptions {
    RunOptions {
        url: cli.url.clone(),
        key: key.to_owned(),
        state,
        devices: cli.devices,
        sessions: 0,
        duration: None,
        max_time: Duration::from_secs(1800),
        events: (5, 20),
        motion_share: 0.3,
        gzip: cli.gzip,
        rate: None,
        pregenerate: false,
        max_queued: 1000,
        seed: context_runtime::clock::now_micros() as u64,
        recordings: recordings.to_vec(),
    }
}

fn report_json(r: &Report) -> Value {
    serde_json::to_value(r).unwrap_or(Value::Null)
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(json) = &cli.render {
        let r: Value =
            serde_json::from_slice(&std::fs::read(json).with_context(|| format!("reading {}", json.display()))?)?;
        let md = markdown(&r);
        std::fs::write(json.with_extension("md"), &md)?;
        println!("{md}");
        return Ok(());
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let key = std::fs::read_to_string(cli.platform_dir.join("api-key"))
        .context("reading the platform's API key (scripts/platform up writes it)")?;
    let key = key.trim();
    let mut pids = BTreeMap::new();
    for s in ["gateway", "router", "enrich", "sink"] {
        pids.insert(s, read_pid(&cli.platform_dir.join(format!("{s}.pid")))?);
    }
    pids.insert("broker", read_pid(&cli.stack_dir.join("kafka/pid"))?);
    pids.insert("clickhouse", read_pid(&cli.stack_dir.join("clickhouse/pid"))?);
    let recordings = life::recordings(Path::new("enrich-activity/data/hapt/train"))?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(300)).build()?;
    let scratch = PathBuf::from(".stack/bench").join(&run_id);
    let date = time::OffsetDateTime::now_utc().date().to_string();

    // 1. Full load: sessions made first, then sent as fast as acknowledged.
    eprintln!(
        "[bench] 1/5 full load: {} events from {} devices",
        cli.events, cli.devices
    );
    let mut opts = fleet_options(&cli, key, scratch.join("full"), &recordings);
    let per_device = opts.sessions_per_device(cli.events as f64);
    opts.sessions = per_device;
    opts.pregenerate = true;
    let bench_start_us = context_runtime::clock::now_micros();
    for p in pids.values() {
        reset_peak_memory(*p);
    }
    let before = cpu_snapshot(&pids);
    let full = run::run(opts, Shutdown::new().1).await?;
    if full.batches_still_queued > 0 || full.batches_failed > 0 {
        bail!("the full-load fleet did not finish:\n{}", full.text());
    }
    let acked = (full.events_acknowledged - full.events_rejected) as f64;
    let drain = drained(&http, &cli.clickhouse_url, &scratch.join("full"), bench_start_us).await?;
    let after = cpu_snapshot(&pids);
    let end_to_end_s = full.elapsed_s + drain;
    let cpu_per_1000: BTreeMap<&str, f64> = SERVICES
        .iter()
        .map(|s| (*s, (after[s] - before[s]) / acked * 1000.0))
        .collect();
    let memory: BTreeMap<&str, (f64, f64)> = SERVICES
        .iter()
        .map(|s| (*s, memory_mib(pids[s]).unwrap_or((0.0, 0.0))))
        .collect();
    eprintln!("{}", full.text());

    // 2. Half load, open loop, for the latency percentiles.
    let half_rate = full.events_per_s * 0.5;
    eprintln!(
        "[bench] 2/5 half load: {half_rate:.0} events/s for {} s",
        cli.half_seconds
    );
    let mut opts = fleet_options(&cli, key, scratch.join("half"), &recordings);
    opts.sessions = opts.sessions_per_device(half_rate * cli.half_seconds as f64);
    opts.rate = Some(half_rate);
    opts.pregenerate = true;
    let half = run::run(opts, Shutdown::new().1).await?;
    eprintln!("{}", half.text());

    // 3. The gateway alone: the consumers paused, so the stage is compared
    // with the plain producer on the same footing.
    eprintln!("[bench] 3/5 the gateway alone (router, tagger and sink paused with SIGSTOP)");
    let paused = ["router", "enrich", "sink"];
    let signal = |sig: &str| {
        for s in paused {
            let _ = Command::new("kill").args([sig, &pids[s].to_string()]).status();
        }
    };
    signal("-STOP");
    let mut opts = fleet_options(&cli, key, scratch.join("alone"), &recordings);
    opts.sessions = per_device.div_ceil(2);
    opts.pregenerate = true;
    let gateway_before = cpu_seconds(pids["gateway"]).unwrap_or(0.0);
    let alone = run::run(opts, Shutdown::new().1).await;
    let gateway_cpu = cpu_seconds(pids["gateway"]).unwrap_or(0.0) - gateway_before;
    signal("-CONT");
    let alone = alone?;
    eprintln!("{}", alone.text());
    // The consumers catch up before the ceilings are timed on the same cores.
    for phase in ["half", "alone"] {
        drained(&http, &cli.clickhouse_url, &scratch.join(phase), bench_start_us).await?;
    }

    // 4. Ceilings with the same Avro bytes.
    eprintln!("[bench] 4/5 ceilings: plain producer, plain consumer, clickhouse-client");
    let schema_id = register(&http, &cli.registry_url).await?;
    let mut records = Vec::with_capacity(cli.events as usize);
    let mut avro_bytes = 0usize;
    let mut seed = 1u64;
    while records.len() < cli.events as usize {
        let mut phone = Install::new(seed ^ 0xBE7C);
        seed += 1;
        for _ in 0..20 {
            let (events, _) = phone.session(context_runtime::clock::now_micros(), 12, 0.3, &recordings);
            for mut e in events {
                e.app_id = "bench".into();
                let wire = e.to_wire(schema_id)?;
                avro_bytes += wire.len();
                records.push((e.install_id.to_string(), wire));
            }
        }
    }
    records.truncate(cli.events as usize);
    let n = records.len() as f64;
    let topic = format!("bench.events.{run_id}");
    context_integration::create_topic(&topic, 4).await?;
    for t in ["activity", "deadletter"] {
        context_integration::create_topic(&format!("bench.{t}.{run_id}"), 1).await?;
    }
    // The gateway's own producer settings.
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &cli.bootstrap);
    for (key, value) in ingest_gateway::config::PRODUCER_SETTINGS {
        config.set(*key, *value);
    }
    for (key, value) in ingest_gateway::config::PRODUCER_DEFAULTS {
        config.set(*key, *value);
    }
    let producer: FutureProducer = config.create()?;
    let produce_s = produce_all(&producer, &topic, &records).await?.as_secs_f64();
    drop(records);
    let consume_s = consume_all(&cli.bootstrap, &topic, n as usize)?;
    eprintln!(
        "[bench] producer {:.0}/s, consumer {:.0}/s",
        n / produce_s,
        n / consume_s
    );

    // 5. The sink alone on that topic, into a scratch database.
    eprintln!("[bench] 5/5 sink-clickhouse alone, then clickhouse-client with the same rows");
    let db = format!("bench_{run_id}");
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let sink_env = |cmd: &mut Command| {
        cmd.env("SINK_DATABASE", &db)
            .env("SINK_EVENTS_TOPIC", &topic)
            .env("SINK_ACTIVITY_TOPIC", format!("bench.activity.{run_id}"))
            .env("SINK_DEADLETTER_TOPIC", format!("bench.deadletter.{run_id}"))
            .env("SINK_GROUP_PREFIX", format!("bench-{run_id}"))
            .env("SINK_ADMIN_LISTEN", "127.0.0.1:9122")
            .arg("--config")
            .arg(cli.platform_dir.join("sink.toml"));
    };
    let mut migrate = Command::new(bin_dir.join("sink-clickhouse"));
    migrate.arg("migrate");
    sink_env(&mut migrate);
    let out = migrate.output().context("running sink-clickhouse migrate")?;
    if !out.status.success() {
        bail!("sink-clickhouse migrate: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut sink = Command::new(bin_dir.join("sink-clickhouse"));
    sink.arg("run");
    sink_env(&mut sink);
    let sink_started = Instant::now();
    let mut sink = sink
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(scratch.join("sink.log"))?)
        .spawn()
        .context("starting sink-clickhouse")?;
    let sink_cpu_before = cpu_seconds(sink.id()).unwrap_or(0.0);
    let mut first: Option<(Instant, f64)> = None;
    let rows = loop {
        let rows = ch_number(&http, &cli.clickhouse_url, &format!("SELECT count() FROM {db}.events")).await?;
        if rows > 0.0 && first.is_none() {
            first = Some((Instant::now(), rows));
        }
        if rows >= n {
            break rows;
        }
        if sink_started.elapsed() > Duration::from_secs(900) {
            bail!(
                "the sink stored {rows} of {n} rows in 15 minutes; see {}",
                scratch.join("sink.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Timed from its first insert when that left work to time; otherwise
    // (everything in one insert) from its start, group join included.
    let sink_rate = match first {
        Some((at, done)) if done < rows => (rows - done) / at.elapsed().as_secs_f64().max(1e-3),
        _ => rows / sink_started.elapsed().as_secs_f64(),
    };
    let sink_cpu = cpu_seconds(sink.id()).unwrap_or(0.0) - sink_cpu_before;
    let sink_mem = memory_mib(sink.id()).unwrap_or((0.0, 0.0));
    let _ = Command::new("kill").args(["-TERM", &sink.id().to_string()]).status();
    let _ = sink.wait();

    let native = scratch.join("rows.native");
    let body = http
        .post(&cli.clickhouse_url)
        .body(format!("SELECT * FROM {db}.events FORMAT Native"))
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    std::fs::write(&native, &body)?;
    ch(
        &http,
        &cli.clickhouse_url,
        &format!("CREATE TABLE {db}.events_copy AS {db}.events"),
    )
    .await?;
    let t = Instant::now();
    let status = Command::new("clickhouse-client")
        .args(["--query", &format!("INSERT INTO {db}.events_copy FORMAT Native")])
        .stdin(std::fs::File::open(&native)?)
        .status()
        .context("running clickhouse-client")?;
    let insert_s = t.elapsed().as_secs_f64();
    if !status.success() {
        bail!("clickhouse-client insert failed");
    }
    ch(&http, &cli.clickhouse_url, &format!("OPTIMIZE TABLE {db}.events FINAL")).await?;
    let parts = ch(
        &http,
        &cli.clickhouse_url,
        &format!(
            "SELECT sum(rows), sum(bytes_on_disk), sum(data_uncompressed_bytes) FROM system.parts \
             WHERE database = '{db}' AND table = 'events' AND active FORMAT TSV"
        ),
    )
    .await?;
    let p: Vec<f64> = parts.split('\t').filter_map(|v| v.parse().ok()).collect();
    let (part_rows, on_disk, uncompressed) = (
        p.first().copied().unwrap_or(1.0),
        p.get(1).copied().unwrap_or(0.0),
        p.get(2).copied().unwrap_or(0.0),
    );
    ch(&http, &cli.clickhouse_url, &format!("DROP DATABASE {db}"))
        .await
        .ok();
    std::fs::remove_file(&native).ok();

    let ceilings = json!({
        "producer_events_per_s": n / produce_s,
        "consumer_events_per_s": n / consume_s,
        "clickhouse_client_rows_per_s": rows / insert_s,
        "avro_bytes_per_event": avro_bytes as f64 / n,
    });
    let result = json!({
        "date": date,
        "machine": machine(),
        "settings": {"events": cli.events, "devices": cli.devices, "gzip": cli.gzip, "motion_share": 0.3, "events_per_session": "5-20"},
        "full_load": report_json(&full),
        "half_load": report_json(&half),
        "gateway_alone": {"fleet": report_json(&alone), "cpu_seconds_per_1000_events": gateway_cpu / alone.events_acknowledged.max(1) as f64 * 1000.0},
        "end_to_end": {"seconds": end_to_end_s, "events_per_s": acked / end_to_end_s, "drain_after_last_ack_s": drain},
        "cpu_seconds_per_1000_events": cpu_per_1000,
        "memory_mib": memory.iter().map(|(s, (rss, peak))| (*s, json!({"rss": rss, "peak": peak}))).collect::<BTreeMap<_, _>>(),
        "ceilings": ceilings,
        "sink_alone": {"rows_per_s": sink_rate, "cpu_seconds_per_1000_rows": sink_cpu / rows * 1000.0, "peak_mib": sink_mem.1},
        "ratios": {
            "gateway_alone_vs_plain_producer": alone.events_per_s / (n / produce_s),
            "platform_full_load_vs_plain_producer": full.events_per_s / (n / produce_s),
            "sink_vs_min_consumer_clickhouse_client": sink_rate / (n / consume_s).min(rows / insert_s),
            "end_to_end_vs_plain_producer": (acked / end_to_end_s) / (n / produce_s),
        },
        "clickhouse_storage": {
            "rows": part_rows,
            "bytes_on_disk_per_event": on_disk / part_rows.max(1.0),
            "uncompressed_bytes_per_event": uncompressed / part_rows.max(1.0),
            "compression_ratio": uncompressed / on_disk.max(1.0),
        },
    });
    std::fs::create_dir_all(&cli.out)?;
    let json_path = cli.out.join(format!("{date}.json"));
    let md_path = cli.out.join(format!("{date}.md"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&result)?)?;
    std::fs::write(&md_path, markdown(&result))?;
    std::fs::remove_dir_all(&scratch).ok();
    println!("{}", markdown(&result));
    eprintln!("[bench] wrote {} and {}", md_path.display(), json_path.display());
    Ok(())
}

async fn register(http: &reqwest::Client, registry: &str) -> Result<u32> {
    let answer: Value = http
        .post(format!("{registry}/subjects/context.events.v1-value/versions"))
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .json(&json!({ "schema": <ContextEvent as AvroRecord>::AVSC }))
        .send()
        .await
        .with_context(|| format!("registering ContextEvent at {registry}"))?
        .error_for_status()?
        .json()
        .await?;
    answer["id"]
        .as_u64()
        .and_then(|id| u32::try_from(id).ok())
        .with_context(|| format!("the registry answered {answer} without an id"))
}

/// A plain consumer reading `n` records of `topic` from the start.
fn consume_all(bootstrap: &str, topic: &str, n: usize) -> Result<f64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-plain-{}", uuid::Uuid::new_v4().simple()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut seen = 0;
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen < n {
        if Instant::now() > deadline {
            bail!("the plain consumer read {seen} of {n} records in 10 minutes");
        }
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            let m = m?;
            started.get_or_insert_with(Instant::now);
            std::hint::black_box(m.payload().map(<[u8]>::len));
            seen += 1;
        }
    }
    Ok(started.map_or(0.0, |s| s.elapsed().as_secs_f64()).max(1e-9))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// The report as Markdown, with the capacity table at its end.
fn markdown(r: &Value) -> String {
    let m = &r["machine"];
    let full = &r["full_load"];
    let half = &r["half_load"];
    let c = &r["ceilings"];
    let ratio = &r["ratios"];
    let mut s = format!(
        "# Benchmark {}\n\n\
         Machine: {} cores ({}), {} GiB, {}; {}; {}. Load generator, services, broker and ClickHouse share these cores.\n\
         Fleet: {} simulated devices, sessions of 5–20 events, 30 % with a 10 s motion recording; bodies {}.\n\
         Rerun: `scripts/bench` (writes `docs/benchmarks/<date>.md` and `.json`).\n\n",
        r["date"].as_str().unwrap_or(""),
        m["cores"],
        m["cpu"].as_str().unwrap_or(""),
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or(""),
        m["kafka"].as_str().unwrap_or(""),
        m["clickhouse"].as_str().unwrap_or(""),
        r["settings"]["devices"],
        if r["settings"]["gzip"].as_bool() == Some(true) { "gzip" } else { "uncompressed JSON" },
    );
    s += "## Throughput and ceilings (same run)\n\n| stage | measured | ceiling | ratio |\n| --- | ---: | ---: | ---: |\n";
    s += &format!(
        "| gateway alone, HTTP → Kafka (acks=all; router, tagger, sink paused) | {:.0} events/s, {:.3} CPU s per 1,000 | plain rdkafka producer, same Avro bytes and settings: {:.0}/s | {:.2} |\n",
        f(&r["gateway_alone"]["fleet"]["events_per_s"]),
        f(&r["gateway_alone"]["cpu_seconds_per_1000_events"]),
        f(&c["producer_events_per_s"]),
        f(&ratio["gateway_alone_vs_plain_producer"])
    );
    s += &format!(
        "| whole platform at full load, HTTP → Kafka while every consumer runs | {:.0} events/s | plain producer | {:.2} |\n",
        f(&full["events_per_s"]),
        f(&ratio["platform_full_load_vs_plain_producer"])
    );
    s += &format!(
        "| sink-clickhouse alone, topic → ClickHouse (timed from its first insert) | {:.0} rows/s, peak RSS {:.0} MiB | min(plain consumer {:.0}/s, clickhouse-client Native insert {:.0}/s) | {:.2} |\n",
        f(&r["sink_alone"]["rows_per_s"]),
        f(&r["sink_alone"]["peak_mib"]),
        f(&c["consumer_events_per_s"]),
        f(&c["clickhouse_client_rows_per_s"]),
        f(&ratio["sink_vs_min_consumer_clickhouse_client"])
    );
    s += &format!(
        "| end to end, first request → all rows and tags in ClickHouse | {:.0} events/s | plain producer | {:.2} |\n\n",
        f(&r["end_to_end"]["events_per_s"]),
        f(&ratio["end_to_end_vs_plain_producer"])
    );
    s += &format!(
        "Average Avro event: {:.0} bytes. Gateway latency at 100 % load: p50 {:.1} ms, p99 {:.1} ms; at 50 % ({:.0} events/s): p50 {:.1} ms, p99 {:.1} ms.\n\n",
        f(&c["avro_bytes_per_event"]),
        f(&full["latency_ms"]["p50"]),
        f(&full["latency_ms"]["p99"]),
        f(&half["events_per_s"]),
        f(&half["latency_ms"]["p50"]),
        f(&half["latency_ms"]["p99"]),
    );
    s += "## CPU and memory per process (full-load phase; peak RSS since the run's start)\n\n| process | CPU s per 1,000 events | RSS MiB | peak RSS MiB |\n| --- | ---: | ---: | ---: |\n";
    for p in SERVICES {
        s += &format!(
            "| {p} | {:.3} | {:.0} | {:.0} |\n",
            f(&r["cpu_seconds_per_1000_events"][p]),
            f(&r["memory_mib"][p]["rss"]),
            f(&r["memory_mib"][p]["peak"])
        );
    }
    let st = &r["clickhouse_storage"];
    s += &format!(
        "\n## ClickHouse storage\n\n{:.0} bytes on disk per event after merges ({:.0} uncompressed, {:.2}x), measured on {:.0} fleet events in `system.parts`. \
         At 40M events/day that is {:.1} GB/day, {:.2} TB/year.\n\n",
        f(&st["bytes_on_disk_per_event"]),
        f(&st["uncompressed_bytes_per_event"]),
        f(&st["compression_ratio"]),
        f(&st["rows"]),
        f(&st["bytes_on_disk_per_event"]) * 40e6 / 1e9,
        f(&st["bytes_on_disk_per_event"]) * 40e6 * 365.0 / 1e12,
    );
    s += &capacity(r);
    s
}

/// The memory a service may need whatever this run measured: the bounds of
/// docs/helm.md from the default settings (the gateway's bytes in flight plus
/// its producer queue, the sink's three batches), 256 MiB otherwise.
fn memory_bound_mib(service: &str) -> f64 {
    match service {
        // 3 × max_in_flight_bytes 192 MiB + queue_max_kbytes 256 MiB + ~100 MiB
        "gateway" => 932.0,
        // 3 sources × (batch.max_bytes 256 MiB of records and rows + 32 MiB
        // fetched ahead) + ~100 MiB
        "sink" => 964.0,
        // a batch of max_batch events in and out, plus librdkafka's buffers
        "router" | "enrich" => 512.0,
        _ => 256.0,
    }
}

/// Cores, replicas and memory per service for three loads, from the
/// measured CPU seconds per 1,000 events, at 60 % target utilisation.
fn capacity(r: &Value) -> String {
    let mut s = String::from(
        "## Capacity\n\nDerived from the CPU seconds per 1,000 events above: cores = events/s ÷ 1,000 × CPU s per 1,000 ÷ 0.6 \
         (60 % target utilisation, headroom for bursts and rebalances); replicas of 1 core each, at least 2 for availability; \
         memory per replica = 1.5 × the measured peak, and at least the bound hostile load can reach (docs/helm.md: \
         the gateway's 3 × `max_in_flight_bytes` + producer queue + 100 MiB = 932 MiB, the sink's 3 × (`batch.max_bytes` + 32 MiB fetched ahead) + 100 MiB = 964 MiB, \
         512 MiB for the router and the tagger with their default batches). The tagger's cost assumes 30 % of events carry motion, as here. \
         Partitions of `context.events.v1` ≥ 2 × the largest consumer group (sink, router) so a replica can join without a \
         reshuffle of everything; `context.motion.v1` ≥ 2 × tagger replicas.\n\n\
         | load | service | cores | replicas | memory per replica |\n| --- | --- | ---: | ---: | ---: |\n",
    );
    let loads = [
        (463.0, "40M/day average (463/s)"),
        (4630.0, "10x peak (4.6k/s)"),
        (46300.0, "seed's 100x (46k/s)"),
    ];
    for (rate, name) in loads {
        let mut most = 1.0f64;
        let mut tagger = 1.0f64;
        for p in SERVICES {
            let cpu = f(&r["cpu_seconds_per_1000_events"][p]);
            let cores = rate / 1000.0 * cpu / 0.6;
            let replicas = cores.ceil().max(2.0);
            if p == "sink" || p == "router" {
                most = most.max(replicas);
            }
            if p == "enrich" {
                tagger = replicas;
            }
            // The sink's peak draining a backlog alone counts too: its
            // batches are full then.
            let peak = if p == "sink" {
                f(&r["memory_mib"][p]["peak"]).max(f(&r["sink_alone"]["peak_mib"]))
            } else {
                f(&r["memory_mib"][p]["peak"])
            };
            let mem = (peak * 1.5).max(memory_bound_mib(p));
            s += &format!(
                "| {name} | {p} | {cores:.2} | {replicas:.0} | {:.0} MiB |\n",
                (mem / 64.0).ceil() * 64.0
            );
        }
        s += &format!(
            "| {name} | topics | | | `context.events.v1` {} partitions, `context.motion.v1` {} |\n",
            (most * 2.0).max(6.0),
            (tagger * 2.0).max(2.0)
        );
    }
    s += "\nThe broker and ClickHouse rows are one local node each; in production they are sized by their own operators, \
          with replication factor 3 (`min.insync.replicas` 2) for the topics, which roughly triples the broker's network and disk work.\n";
    s
}

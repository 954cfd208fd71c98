//! `context-forget-bench`: what forgetting a device costs, measured (not a
//! test; `scripts/bench-forget` runs it on the local stack).
//!
//! 1. **Erasure.** A database of its own (`bench_forget`, dropped and made
//!    again with the sink's schema) is filled server-side with `--events`
//!    events of `--installs` installs over 90 days (three monthly
//!    partitions) and a quarter as many activity tags. Then `--erase`
//!    requests are erased one after the other by the sink's own code (the
//!    `ALTER TABLE … DELETE` mutations, waiting for `system.mutations`), as
//!    the running sink does: seconds per request, the rows erased, the
//!    table's size.
//! 2. **Filters.** The check every stage makes per record (the install and
//!    its capture time against the ledger) with an empty ledger and with
//!    `--forgotten` requests, next to what the stage does with the record
//!    anyway (decoding its Avro body), in the same run: nanoseconds per
//!    record, CPU milliseconds per 1,000 records and their ratio. Also the
//!    resident memory the ledger's requests take per install.
//! 3. **Loading the ledger.** `--forgotten` requests are written to a topic
//!    of their own (`bench.forget.<run>`) and read back whole as a stage
//!    does at its start: seconds.
//!
//! Example: context-forget-bench --events 3000000 --installs 60000 --erase 5 --forgotten 100000

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use context_runtime::forget::{Forgotten, Request, Writer};
use context_schemas::sample::{self, SampleOptions};
use context_schemas::{AvroRecord, ContextEvent};
use uuid::Uuid;

#[derive(Parser)]
#[command(
    version,
    about = "What forgetting a device costs: erasure on a large table, the filters, the ledger's load"
)]
struct Cli {
    /// Events in the erasure's table.
    #[arg(long, default_value_t = 3_000_000)]
    events: u64,
    /// Installs the events belong to (events / installs each).
    #[arg(long, default_value_t = 60_000)]
    installs: u64,
    /// Requests erased one after the other.
    #[arg(long, default_value_t = 5)]
    erase: u64,
    /// Requests in the ledger for the filter and load measurements.
    #[arg(long, default_value_t = 100_000)]
    forgotten: u64,
    /// Records checked per filter measurement.
    #[arg(long, default_value_t = 5_000_000)]
    lookups: u64,
    /// Skip the erasure (no ClickHouse needed).
    #[arg(long)]
    no_erasure: bool,
    /// Skip the ledger's load (no Kafka needed).
    #[arg(long)]
    no_load: bool,
}

const DB: &str = "bench_forget";
const APP: &str = "bench-app";

/// Install `k`'s id, as the fill's SQL makes it.
fn install(k: u64) -> Uuid {
    Uuid::parse_str(&format!("00000000-0000-4000-8000-{k:012}")).expect("a UUID")
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

async fn erasure(cli: &Cli) -> Result<()> {
    // Uncompressed, as the sink's migrate and erasure talk to ClickHouse.
    let ch = context_integration::clickhouse_settings().clickhouse(false);
    println!(
        "== erasure: {} events of {} installs in `{DB}`",
        cli.events, cli.installs
    );
    ch.query(&format!("DROP DATABASE IF EXISTS {DB}")).execute().await?;
    ch.query(&format!("CREATE DATABASE {DB}")).execute().await?;
    sink_clickhouse::migrate::migrate(&ch, DB)
        .await
        .context("the sink's schema")?;
    let started = Instant::now();
    let base = context_runtime::clock::now_micros() / 1_000_000;
    let day = 86_400u64;
    let install_sql = |installs: u64| {
        format!("toUUID(concat('00000000-0000-4000-8000-', substring(toString(1000000000000 + number % {installs}), 2, 12)))")
    };
    let chunk = 1_000_000u64;
    let mut done = 0;
    while done < cli.events {
        let n = chunk.min(cli.events - done);
        ch.query(&format!(
            "INSERT INTO {DB}.events (app_id, install_id, event_id, session_id, timestamp_us, client_time) \
             SELECT '{APP}', {install}, toUUID(concat('00000000-0000-4000-9000-', substring(toString(1000000000000 + number), 2, 12))), \
             {install}, ({base} - (number * 7919) % ({day} * 90)) * 1000000, toDateTime({base} - (number * 7919) % ({day} * 90)) \
             FROM numbers({done}, {n})",
            install = install_sql(cli.installs),
        ))
        .execute()
        .await?;
        done += n;
        eprintln!("filled {done}/{} events", cli.events);
    }
    let tags = cli.events / 4;
    ch.query(&format!(
        "INSERT INTO {DB}.activity_tags (event_id, model_version, app_id, install_id, timestamp_us, event_time, activity, confidence) \
         SELECT toUUID(concat('00000000-0000-4000-9000-', substring(toString(1000000000000 + number), 2, 12))), 'bench', '{APP}', {install}, \
         ({base} - (number * 7919) % ({day} * 90)) * 1000000, toDateTime({base} - (number * 7919) % ({day} * 90)), 'walking', 0.9 \
         FROM numbers({tags})",
        install = install_sql(cli.installs),
    ))
    .execute()
    .await?;
    let fill = started.elapsed();
    let size = |table: &'static str| {
        let ch = ch.clone();
        async move {
            ch.query("SELECT sum(rows), sum(bytes_on_disk), count() FROM system.parts WHERE database = ? AND table = ? AND active")
                .bind(DB)
                .bind(table)
                .fetch_one::<(u64, u64, u64)>()
                .await
        }
    };
    let (rows, bytes, parts) = size("events").await?;
    println!(
        "filled in {:.1} s: events {rows} rows, {:.1} MB on disk in {parts} parts; activity_tags {tags} rows",
        fill.as_secs_f64(),
        bytes as f64 / 1e6
    );
    // The ceiling's reference: rewriting the whole events table once (a
    // mutation rewrites every part holding one of the install's rows, and
    // an install's rows are in every part).
    ch.query(&format!("CREATE TABLE {DB}.events_copy AS {DB}.events"))
        .execute()
        .await?;
    let started = Instant::now();
    ch.query(&format!("INSERT INTO {DB}.events_copy SELECT * FROM {DB}.events"))
        .execute()
        .await?;
    let rewrite = started.elapsed().as_secs_f64();
    ch.query(&format!("DROP TABLE {DB}.events_copy")).execute().await?;
    println!("reference: copying the whole events table takes {rewrite:.2} s");
    let mut seconds = Vec::new();
    for k in 0..cli.erase {
        let r = Request::new(APP, install(k * 7 + 1), "bench");
        let started = Instant::now();
        let erased = sink_clickhouse::forget::erase(&ch, DB, &r).await?;
        let took = started.elapsed().as_secs_f64();
        seconds.push(took);
        println!(
            "request {}: erased events {} rows, activity_tags {} rows, dead_letters {} rows in {took:.2} s",
            k + 1,
            erased[0],
            erased[1],
            erased[2]
        );
    }
    seconds.sort_by(f64::total_cmp);
    if let Some(median) = seconds.get(seconds.len() / 2) {
        let (rows, bytes, parts) = size("events").await?;
        println!(
            "erasure: median {median:.2} s per request ({:.1} × copying the events table; min {:.2}, max {:.2}) on {rows} rows, {:.1} MB, {parts} parts; requests are erased one after the other",
            median / rewrite,
            seconds[0],
            seconds[seconds.len() - 1],
            bytes as f64 / 1e6
        );
    }
    ch.query(&format!("DROP DATABASE {DB}")).execute().await?;
    Ok(())
}

/// Seconds `f` took run `n` times (a busy loop on one core: its CPU time,
/// read from the clock, which resolves finer than /proc's ticks), and how
/// many times it said yes.
fn timed(n: u64, mut f: impl FnMut(u64) -> bool) -> (f64, u64) {
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    let mut hits = 0;
    for i in 0..n {
        hits += u64::from(black_box(f(i)));
    }
    let (cpu, wall) = (cpu_seconds() - cpu, wall.elapsed().as_secs_f64());
    if wall > 0.5 && cpu < wall * 0.8 {
        eprintln!("note: the loop had {cpu:.2} s of CPU in {wall:.2} s (the machine is busy)");
    }
    (wall.max(1e-9), hits)
}

fn filters(cli: &Cli) {
    println!("== filters: {} records per measurement", cli.lookups);
    // Records of 10,000 installs; with the ledger full, 1 in 100 records is
    // of a forgotten install.
    let pool: Vec<(Uuid, String)> = (0..10_000u64)
        .map(|k| {
            let id = install(if k % 100 == 0 { k } else { 10_000_000 + k });
            (id, id.to_string())
        })
        .collect();
    let now = context_runtime::clock::now_micros();
    let check = |ledger: &Forgotten, i: u64| {
        let (id, _) = &pool[(i % pool.len() as u64) as usize];
        ledger.drops(Some(APP), id, Some(now - 1_000_000))
    };
    let check_key = |ledger: &Forgotten, i: u64| {
        let (_, key) = &pool[(i % pool.len() as u64) as usize];
        ledger.drops_key(Some(APP), Some(key.as_bytes()), Some(now - 1_000_000))
    };
    let empty = Forgotten::empty();
    let rss_before = rss_bytes();
    let full = Forgotten::empty();
    for k in 0..cli.forgotten {
        full.insert(Request::new(APP, install(k), "bench"));
    }
    let rss_per = rss_bytes().saturating_sub(rss_before) as f64 / cli.forgotten.max(1) as f64;

    // What the stage does with every record anyway: decode its Avro body.
    let body = sample::event(1, &SampleOptions::default())
        .encode()
        .expect("an Avro body");
    let (decode_cpu, _) = timed(cli.lookups / 20, |_| ContextEvent::decode(black_box(&body)).is_ok());
    let decode_per_1000 = decode_cpu / (cli.lookups / 20) as f64 * 1000.0 * 1000.0;
    println!(
        "reference: decoding one event's Avro body ({} bytes): {:.3} ms CPU per 1,000 records",
        body.len(),
        decode_per_1000
    );
    for (name, ledger) in [("empty ledger", &empty), ("ledger of requests", &full)] {
        let (cpu, hits) = timed(cli.lookups, |i| check(ledger, i));
        let (cpu_key, _) = timed(cli.lookups, |i| check_key(ledger, i));
        let per = |c: f64| c / cli.lookups as f64 * 1000.0 * 1000.0;
        println!(
            "{name} ({} installs): by id {:.4} ms per 1,000 records ({:.1} ns each, {:.2} % of the decode), by key text {:.4} ms ({:.2} %); {hits} records dropped",
            ledger.len(),
            per(cpu),
            cpu / cli.lookups as f64 * 1e9,
            per(cpu) / decode_per_1000 * 100.0,
            per(cpu_key),
            per(cpu_key) / decode_per_1000 * 100.0,
        );
    }
    println!(
        "memory: {:.0} bytes resident per forgotten install ({} requests: {:.1} MB)",
        rss_per,
        cli.forgotten,
        rss_per * cli.forgotten as f64 / 1e6
    );
}

async fn load(cli: &Cli) -> Result<()> {
    let topic = format!("bench.forget.{}", &Uuid::new_v4().simple().to_string()[..10]);
    println!("== ledger load: {} requests in `{topic}`", cli.forgotten);
    context_integration::create_topic(&topic, 1).await?;
    let kafka = context_integration::kafka_settings();
    let writer = std::sync::Arc::new(Writer::new(&kafka, &topic)?);
    let started = Instant::now();
    let mut k = 0;
    while k < cli.forgotten {
        let n = 2_000.min(cli.forgotten - k);
        let sends: Vec<_> = (k..k + n)
            .map(|k| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.send(&Request::new(APP, install(k), "bench")).await })
            })
            .collect();
        for send in sends {
            send.await?.map_err(|e| anyhow::anyhow!(e))?;
        }
        k += n;
    }
    println!(
        "written in {:.1} s ({:.0} requests/s, acks=all)",
        started.elapsed().as_secs_f64(),
        cli.forgotten as f64 / started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let ledger = context_runtime::forget::follow_configured(&kafka, &topic).await?;
    println!(
        "loaded {} installs in {:.2} s, as a stage does before its first record",
        ledger.len(),
        started.elapsed().as_secs_f64()
    );
    let admin: rdkafka::admin::AdminClient<_> = context_integration::base_config().create()?;
    let _ = admin
        .delete_topics(
            &[&topic],
            &rdkafka::admin::AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if !cli.no_erasure {
        erasure(&cli).await?;
    }
    filters(&cli);
    if !cli.no_load {
        load(&cli).await?;
    }
    Ok(())
}

//! `context-load`: a simulated device fleet and load generator.
//!
//! `http` posts realistic session batches to the gateway from many simulated
//! devices at once and reports events/s and latency percentiles. `kafka`
//! produces the same Avro bytes straight to Kafka with a plain rdkafka
//! producer (acks=all, zstd): the ceiling the gateway is compared with.
//! Every run is bounded by a request count and a time limit, and targets one
//! URL or broker on this machine.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use context_schemas::sample::{self, SampleOptions};
use context_schemas::{AvroRecord, ContextEvent};
use ingest_gateway::sdk;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

/// A simulated device fleet and load generator for the ingest path.
///
/// `http` sends realistic sessions (every signal, 2 s of 50 Hz motion per
/// event) to the gateway from concurrent devices that retry until acknowledged,
/// as the SDK does, and prints events/s, p50/p99 latency and answers by status.
/// `kafka` produces the same Avro bytes with a plain rdkafka producer, the
/// ceiling to compare with. Both stop after their count or time limit.
///
///   context-load http --key $KEY --devices 8 --batches 200 --events 50 [--gzip]
///   context-load kafka --topic load.events.v1 --records 20000
#[derive(Parser)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Post session batches to the gateway from `--devices` concurrent devices.
    Http {
        /// Gateway base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// API key (from `ingest-gateway keys new`).
        #[arg(long, env = "CONTEXT_API_KEY")]
        key: String,
        /// Concurrent devices (requests in flight).
        #[arg(long, default_value_t = 8)]
        devices: usize,
        /// Batches to send in total.
        #[arg(long, default_value_t = 200)]
        batches: usize,
        /// Events per batch (one session).
        #[arg(long, default_value_t = 50)]
        events: usize,
        /// Seconds of motion per event at 50 Hz.
        #[arg(long, default_value_t = 2.0)]
        motion_seconds: f64,
        /// Compress bodies with gzip.
        #[arg(long)]
        gzip: bool,
        /// Stop after this many seconds even if batches remain.
        #[arg(long, default_value_t = 300)]
        max_seconds: u64,
        /// Seed of the simulated fleet (different seeds, different events).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Produce the same Avro events straight to Kafka (the ceiling).
    Kafka {
        #[arg(long, default_value = "127.0.0.1:9092")]
        bootstrap: String,
        #[arg(long, default_value = "context.events.v1")]
        topic: String,
        /// Records to send.
        #[arg(long, default_value_t = 10_000)]
        records: usize,
        #[arg(long, default_value_t = 2.0)]
        motion_seconds: f64,
        /// Schema id to put in the wire format. By default the record's schema
        /// (ContextEvent, or MotionWindow with --motion) is registered under
        /// `<topic>-value` at --registry-url and its id is used.
        #[arg(long)]
        schema_id: Option<u32>,
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        registry_url: String,
        /// Send each event's MotionWindow (for context.motion.v1) instead of the event.
        #[arg(long)]
        motion: bool,
    },
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

fn events(seed: u64, n: usize, motion_seconds: f64, app: &str) -> Vec<ContextEvent> {
    let now = now_micros();
    let list = (0..n as u64)
        .map(|i| {
            sample::event(
                seed.wrapping_mul(1_000_003).wrapping_add(i),
                &SampleOptions {
                    timestamp: now,
                    motion_seconds,
                    app_id: app.into(),
                    ..SampleOptions::default()
                },
            )
        })
        .collect();
    sdk::as_session(list, now)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[allow(clippy::too_many_arguments)]
async fn http(
    url: String,
    key: String,
    devices: usize,
    batches: usize,
    per_batch: usize,
    motion_seconds: f64,
    gzip: bool,
    max_seconds: u64,
    seed: u64,
) -> Result<()> {
    eprintln!("preparing {batches} batches of {per_batch} events...");
    let bodies: Vec<Vec<u8>> = (0..batches)
        .map(|b| {
            let list = events(seed * 1_000_000 + b as u64, per_batch, motion_seconds, "load");
            let json = sdk::batch_json(&list, now_micros()).to_string().into_bytes();
            if gzip {
                use std::io::Write;
                let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(&json).expect("in-memory gzip");
                enc.finish().expect("in-memory gzip")
            } else {
                json
            }
        })
        .collect();
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let deadline = Instant::now() + Duration::from_secs(max_seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..devices {
        let (bodies, next, client, url, key) = (bodies.clone(), next.clone(), client.clone(), url.clone(), key.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= bodies.len() || Instant::now() > deadline {
                    break;
                }
                // A device retries its batch until it is acknowledged, as the SDK does.
                loop {
                    let mut req = client
                        .post(format!("{url}/v1/batch"))
                        .header("Authorization", format!("Bearer {key}"))
                        .header("Content-Type", "application/json")
                        // The time of this attempt: the body is resent unchanged.
                        .header("X-Sent-At", sdk::rfc3339(context_runtime::clock::now_micros()))
                        .body(bodies[i].clone());
                    if gzip {
                        req = req.header("Content-Encoding", "gzip");
                    }
                    let t = Instant::now();
                    let status = match req.send().await {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    *statuses.entry(status).or_default() += 1;
                    if status == 200 {
                        latencies.push(t.elapsed());
                        break;
                    }
                    if Instant::now() > deadline || (400..500).contains(&status) && status != 429 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            (latencies, statuses)
        }));
    }
    let mut latencies = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for w in workers {
        let (l, s) = w.await?;
        latencies.extend(l);
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let ok = latencies.len();
    println!(
        "http: {ok} batches acknowledged ({} events) in {elapsed:.2} s",
        ok * per_batch
    );
    println!(
        "http: {:.0} events/s, {:.1} batches/s, {:.1} MB/s of request bodies",
        (ok * per_batch) as f64 / elapsed,
        ok as f64 / elapsed,
        bytes as f64 / 1e6 / elapsed
    );
    println!(
        "http: latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!("http: answers by status {statuses:?}");
    if ok < bodies.len() {
        bail!(
            "{} of {} batches were not acknowledged",
            bodies.len() - ok,
            bodies.len()
        );
    }
    Ok(())
}

async fn kafka(
    bootstrap: String,
    topic: String,
    records: usize,
    motion_seconds: f64,
    schema_id: Option<u32>,
    registry_url: String,
    motion: bool,
) -> Result<()> {
    let schema_id = match schema_id {
        Some(id) => id,
        None => {
            let avsc = if motion {
                <context_schemas::MotionWindow as context_schemas::AvroRecord>::AVSC
            } else {
                <ContextEvent as context_schemas::AvroRecord>::AVSC
            };
            let answer: serde_json::Value = reqwest::Client::new()
                .post(format!("{registry_url}/subjects/{topic}-value/versions"))
                .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                .json(&serde_json::json!({ "schema": avsc }))
                .send()
                .await
                .with_context(|| format!("registering the schema at {registry_url}"))?
                .error_for_status()
                .with_context(|| format!("registering the schema of {topic}-value"))?
                .json()
                .await?;
            let id = answer["id"]
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .with_context(|| format!("the registry answered {answer} without an id"))?;
            eprintln!("schema of {topic}-value has id {id}");
            id
        }
    };
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("compression.type", "zstd")
        .set("linger.ms", "5")
        .create()
        .context("creating the producer")?;
    eprintln!("preparing {records} records...");
    let payloads: Vec<(String, Vec<u8>)> = (0..records)
        .map(|i| {
            let e = &events(7_000_000 + i as u64, 1, motion_seconds, "load")[0];
            let payload = if motion {
                context_schemas::MotionWindow::from_event(e)
                    .expect("sample events carry motion")
                    .to_wire(schema_id)
            } else {
                e.to_wire(schema_id)
            };
            (e.install_id.to_string(), payload.expect("encode"))
        })
        .collect();
    let bytes: usize = payloads.iter().map(|(_, p)| p.len()).sum();
    let elapsed = context_integration::measure::produce_all(&producer, &topic, &payloads).await?;
    let elapsed = elapsed.as_secs_f64();
    println!(
        "kafka: {records} records ({:.1} KB each) acknowledged in {elapsed:.2} s",
        bytes as f64 / records as f64 / 1e3
    );
    println!(
        "kafka: {:.0} records/s, {:.1} MB/s",
        records as f64 / elapsed,
        bytes as f64 / 1e6 / elapsed
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Http {
            url,
            key,
            devices,
            batches,
            events,
            motion_seconds,
            gzip,
            max_seconds,
            seed,
        } => {
            http(
                url,
                key,
                devices,
                batches,
                events,
                motion_seconds,
                gzip,
                max_seconds,
                seed,
            )
            .await
        }
        Command::Kafka {
            bootstrap,
            topic,
            records,
            motion_seconds,
            schema_id,
            registry_url,
            motion,
        } => {
            kafka(
                bootstrap,
                topic,
                records,
                motion_seconds,
                schema_id,
                registry_url,
                motion,
            )
            .await
        }
    }
}

//! The gateway's CPU path for a realistic batch: 50 events, every signal set,
//! 2 s of 50 Hz motion per event: decompress (or not), parse, validate,
//! Avro-encode. Reported as events per second.

use std::time::Duration;

use context_schemas::sample::{self, SampleOptions};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ingest_gateway::batch::Encoding;
use ingest_gateway::pipeline::prepare;
use ingest_gateway::validate::Validator;
use ingest_gateway::{sdk, Limits};

const EVENTS: usize = 50;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn bench(c: &mut Criterion) {
    let now = now();
    let events = (0..EVENTS as u64)
        .map(|i| {
            sample::event(
                i,
                &SampleOptions {
                    timestamp: now,
                    ..SampleOptions::default()
                },
            )
        })
        .collect();
    let events = sdk::as_session(events, now);
    let json = sdk::batch_json(&events, now).to_string().into_bytes();
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&json).unwrap();
        e.finish().unwrap()
    };
    let zst = zstd::encode_all(&json[..], 3).unwrap();
    let validator = Validator::new(
        Limits::default(),
        Duration::from_secs(3600),
        Duration::from_secs(86400 * 30),
    );
    eprintln!(
        "batch of {EVENTS} events: {} bytes JSON, {} gzip, {} zstd",
        json.len(),
        gz.len(),
        zst.len()
    );

    let mut group = c.benchmark_group("gateway_batch_50_events");
    group.throughput(Throughput::Elements(EVENTS as u64));
    for (name, body, encoding) in [
        ("identity", &json, Encoding::Identity),
        ("gzip", &gz, Encoding::Gzip),
        ("zstd", &zst, Encoding::Zstd),
    ] {
        group.bench_with_input(BenchmarkId::new("parse_validate_encode", name), body, |b, body| {
            b.iter(|| {
                let p = prepare(body, encoding, "bench-app", now, None, &validator, 1).unwrap();
                assert_eq!(p.accepted.len(), EVENTS);
                p
            })
        });
        // The ceiling in the same group: decompressing the same bytes and
        // merely parsing them with serde_json into IgnoredAny (#16's goal 1
        // is the full path at least this fast).
        group.bench_with_input(
            BenchmarkId::new("ceiling_decompress_ignored_any", name),
            body,
            |b, body| {
                b.iter(|| {
                    let json = ingest_gateway::batch::decompress(body, encoding, 1 << 30).unwrap();
                    serde_json::from_slice::<serde::de::IgnoredAny>(&json).unwrap()
                })
            },
        );
    }
    group.finish();

    // The generic (serde) path's stages on their own, where a body goes
    // when the one-pass reader gives up on it (an escape, a rejected event).
    let mut stages = c.benchmark_group("gateway_stages_50_events");
    stages.throughput(Throughput::Elements(EVENTS as u64));
    let batch = ingest_gateway::batch::parse_batch(&json, &Limits::default()).unwrap();
    let env = ingest_gateway::validate::Envelope::from_batch(&batch, "bench-app", now, None).unwrap();
    stages.bench_function("parse_envelope", |b| {
        b.iter(|| {
            ingest_gateway::batch::parse_batch(&json, &Limits::default())
                .unwrap()
                .events
                .len()
        })
    });
    stages.bench_function("validate_events", |b| {
        b.iter(|| {
            batch
                .events
                .iter()
                .map(|raw| validator.event(&env, raw).unwrap().unknown_signals)
                .sum::<usize>()
        })
    });
    let valid: Vec<_> = batch
        .events
        .iter()
        .map(|raw| validator.event(&env, raw).unwrap().event)
        .collect();
    stages.bench_function("avro_encode", |b| {
        b.iter(|| {
            valid
                .iter()
                .map(|e| context_schemas::AvroRecord::to_wire(e, 1).unwrap().len())
                .sum::<usize>()
        })
    });
    stages.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Routed events/s against the local broker, beside the ceiling: a plain
//! consume-and-produce of the same records (an rdkafka consumer copying each
//! record to another topic, acks=all, no transactions, no decoding).
//!
//! ```text
//! cargo run --release -p stream-router --example throughput -- [RECORDS] [MOTION_SHARE]
//! ```
//!
//! Produces RECORDS realistic events (default 20,000; every signal set, 2 s of
//! 50 Hz motion on MOTION_SHARE of them, default 1.0: about 3.8 KB each), then
//! times both from their start (group join included) until a `read_committed`
//! reader has seen every output. The router runs in this process with the shipped rules, exactly
//! once; `ROUTER_*` variables change its settings (`ROUTER_MAX_BATCH`...).
//! Needs `scripts/stack up`.

use std::time::{Duration, Instant};

use context_integration::{create_topic, producer, unique};
use context_schemas::sample::{self, SampleOptions};
use context_schemas::{AvroRecord, ContextEvent};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use schema_registry::RegistryClient;

fn registry_url() -> String {
    std::env::var("SCHEMA_REGISTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into())
}

fn reader(topic: &str) -> StreamConsumer {
    let c: StreamConsumer = context_integration::base_config()
        .set("group.id", unique("bench_reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

/// Seconds from `start` to the `n`th record of `topic`.
async fn time_outputs(topic: &str, n: usize, start: Instant) -> f64 {
    let r = reader(topic);
    let mut seen = 0;
    while seen < n {
        match tokio::time::timeout(Duration::from_secs(120), r.recv()).await {
            Err(_) => panic!("only {seen} of {n} records arrived in {topic}"),
            Ok(Err(e)) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(e)) => panic!("{e}"),
            Ok(Ok(_)) => seen += 1,
        }
    }
    start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        context_runtime::init_tracing();
    }
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map_or(20_000, |a| a.parse().expect("RECORDS is a number"));
    let share: f64 = args
        .get(2)
        .map_or(1.0, |a| a.parse().expect("MOTION_SHARE is a number"));
    let source = unique("bench_route_src");
    create_topic(&source, 4).await.unwrap();
    let registry = RegistryClient::new(&registry_url()).unwrap();
    let id = registry
        .register(&format!("{source}-value"), ContextEvent::AVSC)
        .await
        .unwrap();
    let p = producer().unwrap();
    let (mut bytes, mut with_motion, mut pending) = (0usize, 0usize, Vec::new());
    for i in 0..n {
        let motion = (i as f64 * share).floor() != ((i + 1) as f64 * share).floor();
        let opts = SampleOptions {
            motion_seconds: if motion { 2.0 } else { 0.0 },
            ..SampleOptions::default()
        };
        let e = sample::event(i as u64, &opts);
        with_motion += usize::from(e.motion.is_some());
        let payload = e.to_wire(id).unwrap();
        bytes += payload.len();
        let key = e.install_id.to_string();
        pending.push(
            p.send_result(FutureRecord::to(&source).key(&key).payload(&payload))
                .map_err(|(e, _)| e)
                .unwrap(),
        );
        if pending.len() >= 5_000 {
            for d in pending.drain(..) {
                d.await.unwrap().map_err(|(e, _)| e).unwrap();
            }
        }
    }
    for d in pending {
        d.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    println!(
        "{n} events in {source}, {:.0} bytes each, {with_motion} with motion",
        bytes as f64 / n as f64
    );

    // The ceiling: copy every record as it is, consume → produce → commit.
    let copy = unique("bench_route_copy");
    create_topic(&copy, 2).await.unwrap();
    let start = Instant::now();
    let copier = {
        let (source, copy) = (source.clone(), copy.clone());
        tokio::spawn(async move {
            let c: StreamConsumer = context_integration::base_config()
                .set("group.id", unique("bench_copy"))
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "true")
                .create()
                .unwrap();
            c.subscribe(&[&source]).unwrap();
            let out: FutureProducer = context_integration::base_config()
                .set("acks", "all")
                .set("enable.idempotence", "true")
                .set("compression.type", "zstd")
                .set("linger.ms", "5")
                .create()
                .unwrap();
            loop {
                let m = c.recv().await.unwrap();
                let mut r = FutureRecord::to(&copy).payload(m.payload().unwrap_or_default());
                if let Some(k) = m.key() {
                    r = r.key(k);
                }
                // Delivery reports are not awaited one by one: the ceiling.
                let _ = out.send_result(r);
            }
        })
    };
    let ceiling = time_outputs(&copy, n, start).await;
    copier.abort();

    // The router with the shipped rules.
    let target = unique("bench_route_motion");
    let rules = std::env::temp_dir().join(format!("{}.toml", unique("bench_rules")));
    std::fs::write(
        &rules,
        include_str!("../rules.toml").replace("context.motion.v1", &target),
    )
    .unwrap();
    let (stop, stopped) = context_runtime::shutdown::Shutdown::new();
    // ROUTER_MAX_BATCH, ROUTER_LINGER... apply as they do to the service.
    let from_env = stream_router::Config::load(None).unwrap().config;
    let c = stream_router::Config {
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        kafka: context_integration::kafka_settings(),
        registry: context_runtime::registry::RegistrySettings::open(registry_url()),
        source_topic: source.clone(),
        group_id: unique("bench_router"),
        rules_file: rules,
        transactional_id: unique("bench_router_txn"),
        create_topics: true,
        new_topic_partitions: 2,
        ..from_env
    };
    let start = Instant::now();
    let router = tokio::spawn(stream_router::service::run(c, None, stopped));
    let routed = time_outputs(&target, with_motion, start).await;
    stop.fire();
    router.await.unwrap().unwrap();

    let ceiling_rate = n as f64 / ceiling;
    let router_rate = n as f64 / routed;
    println!("plain consume-and-produce (ceiling): {ceiling_rate:.0} records/s ({ceiling:.2} s)");
    println!("stream-router, shipped rules, exactly once: {router_rate:.0} events/s ({routed:.2} s)");
    println!("ratio: {:.2}", router_rate / ceiling_rate);
}

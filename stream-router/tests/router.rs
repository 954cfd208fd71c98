//! stream-router against the real broker and registry: routing, fan-out,
//! projection, sampling, drops and dead letters give exactly the expected
//! records in each target; `kill -9` mid-stream and a restart leave every
//! target, read `read_committed`, with each expected record exactly once; a
//! broken rules file refuses the start naming the rule; a changed rules file
//! is picked up without a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use context_integration::{create_topic, kafka_bootstrap, producer, unique};
use context_schemas::sample::{self, SampleOptions};
use context_schemas::{AvroRecord, ContextEvent, MotionWindow};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;
use schema_registry::RegistryClient;
use stream_router::rules::sample_bucket;

fn registry_url() -> String {
    std::env::var("SCHEMA_REGISTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into())
}

/// Names of one test's topics and files.
struct Setup {
    source: String,
    motion: String,
    all: String,
    low: String,
    dead: String,
    group: String,
    rules: PathBuf,
}

impl Setup {
    async fn new(tag: &str) -> Setup {
        let s = Setup {
            source: unique(&format!("it_rt_{tag}_src")),
            motion: unique(&format!("it_rt_{tag}_motion")),
            all: unique(&format!("it_rt_{tag}_all")),
            low: unique(&format!("it_rt_{tag}_low")),
            dead: unique(&format!("it_rt_{tag}_dead")),
            group: unique(&format!("it_rt_{tag}_group")),
            rules: std::env::temp_dir().join(format!("{}.toml", unique("rules"))),
        };
        create_topic(&s.source, 3).await.unwrap();
        s
    }

    /// Every event with motion as a MotionWindow; every event of app-a whole;
    /// low battery on wifi or cellular, sampled at 50 % of installs; app
    /// `internal` dropped before anything else.
    fn write_rules(&self) {
        let text = format!(
            r#"
[[rules]]
name = "internal"
when = [{{ field = "app_id", op = "==", value = "internal" }}]
drop = "internal traffic"

[[rules]]
name = "motion"
when = [{{ field = "motion", op = "present" }}]
to = [{{ topic = "{motion}", project = "MotionWindow" }}]

[[rules]]
name = "app-a"
when = [{{ field = "app_id", op = "in", value = ["app-a"] }}]
to = [{{ topic = "{all}" }}]

[[rules]]
name = "low-battery"
when = [
  {{ field = "battery_level", op = "<", value = 0.2 }},
  {{ field = "network_type", op = "in", value = ["wifi", "cellular"] }},
]
sample_percent = 50
to = [{{ topic = "{low}" }}, {{ topic = "{all}" }}]
"#,
            motion = self.motion,
            all = self.all,
            low = self.low
        );
        std::fs::write(&self.rules, text).unwrap();
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ROUTER_KAFKA_BOOTSTRAP", kafka_bootstrap()),
            ("ROUTER_REGISTRY_URL", registry_url()),
            ("ROUTER_SOURCE_TOPIC", self.source.clone()),
            ("ROUTER_DEADLETTER_TOPIC", self.dead.clone()),
            ("ROUTER_GROUP_ID", self.group.clone()),
            ("ROUTER_RULES_FILE", self.rules.display().to_string()),
            ("ROUTER_CREATE_TOPICS", "true".into()),
            ("ROUTER_ADMIN_LISTEN", "127.0.0.1:0".into()),
            ("ROUTER_TRANSACTIONAL_ID", format!("{}-txn", self.group)),
            ("ROUTER_MAX_BATCH", "50".into()),
            // A record naming an unknown schema id holds its partition for
            // this long before it is dead-lettered (default 10 minutes).
            ("ROUTER_REGISTRY_UNKNOWN_ID_PATIENCE", "3s".into()),
            ("RUST_LOG", "info".into()),
        ]
    }

    fn spawn(&self) -> Child {
        self.spawn_with(&[])
    }

    fn spawn_with(&self, extra: &[(&str, &str)]) -> Child {
        let log = std::fs::File::create(std::env::temp_dir().join(format!("{}.log", unique("router")))).unwrap();
        Command::new(env!("CARGO_BIN_EXE_stream-router"))
            .arg("run")
            .envs(self.env())
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start stream-router")
    }
}

/// Events of every kind the rules tell apart, and what each target must get.
struct Expected {
    events: Vec<ContextEvent>,
    motion: BTreeSet<String>,
    all: BTreeSet<String>,
    low: BTreeSet<String>,
}

fn events(n: u64) -> Expected {
    let mut out = Expected {
        events: Vec::new(),
        motion: BTreeSet::new(),
        all: BTreeSet::new(),
        low: BTreeSet::new(),
    };
    for i in 0..n {
        let app = ["app-a", "app-b", "internal"][(i % 3) as usize];
        let opts = SampleOptions {
            app_id: app.into(),
            motion_seconds: if i % 2 == 0 { 1.0 } else { 0.0 },
            ..SampleOptions::default()
        };
        let mut e = sample::event(50_000 + i, &opts);
        let battery = if i % 4 < 2 { 0.1 } else { 0.9 };
        e.signals
            .set("battery_level", context_schemas::SignalValue::Double(battery))
            .unwrap();
        let network = ["wifi", "cellular", "none"][(i % 5 % 3) as usize];
        e.signals
            .set("network_type", context_schemas::SignalValue::String(network.into()))
            .unwrap();
        let id = e.event_id.to_string();
        if app != "internal" {
            if e.motion.is_some() {
                out.motion.insert(id.clone());
            }
            if app == "app-a" {
                out.all.insert(id.clone());
            }
            if battery < 0.2 && network != "none" && sample_bucket(e.install_id.as_bytes()) < 5_000 {
                out.low.insert(id.clone());
                out.all.insert(id.clone());
            }
        }
        out.events.push(e);
    }
    out
}

async fn produce(topic: &str, events: &[ContextEvent]) {
    let registry = RegistryClient::new(&registry_url()).unwrap();
    let id = registry
        .register(&format!("{topic}-value"), ContextEvent::AVSC)
        .await
        .unwrap();
    let producer = producer().unwrap();
    let mut pending = Vec::new();
    for e in events {
        let payload = e.to_wire(id).unwrap();
        let key = e.install_id.to_string();
        pending.push(
            producer
                .send_result(FutureRecord::to(topic).key(&key).payload(&payload))
                .map_err(|(e, _)| e)
                .unwrap(),
        );
    }
    for p in pending {
        p.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// Every record of `topic` a `read_committed` consumer sees within `wait`
/// of quiet: the event id of each (records may repeat: they are counted).
async fn read_committed(topic: &str, motion: bool, expect: usize) -> BTreeMap<String, usize> {
    let consumer: StreamConsumer = context_integration::base_config()
        .set("group.id", unique("it_rt_reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let registry = RegistryClient::new(&registry_url()).unwrap();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        // Once the expected count is reached, wait a little longer for repeats.
        let quiet = if seen.values().sum::<usize>() >= expect {
            Duration::from_secs(3)
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match tokio::time::timeout(quiet, consumer.recv()).await {
            Err(_) => break,
            // The router creates its targets when it starts: until then, wait.
            Ok(Err(e)) if is_unknown_topic(&e) => tokio::time::sleep(Duration::from_millis(200)).await,
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Ok(Ok(m)) => {
                let payload = m.payload().unwrap_or_default();
                let id = if motion {
                    registry.decode::<MotionWindow>(payload).await.unwrap().1.event_id
                } else {
                    registry.decode::<ContextEvent>(payload).await.unwrap().1.event_id
                };
                *seen.entry(id.to_string()).or_default() += 1;
            }
        }
    }
    seen
}

fn is_unknown_topic(e: &rdkafka::error::KafkaError) -> bool {
    e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)
}

/// The first record of `consumer` within `wait`, past "unknown topic" errors.
async fn first_record(consumer: &StreamConsumer, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .expect("a record in time")
        {
            Ok(_) => return,
            Err(e) if is_unknown_topic(&e) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => panic!("{e}"),
        }
    }
}

fn exactly_once(topic: &str, seen: &BTreeMap<String, usize>, expected: &BTreeSet<String>) {
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "{topic}: records repeated: {repeated:?}");
    let got: BTreeSet<String> = seen.keys().cloned().collect();
    let missing: Vec<_> = expected.difference(&got).collect();
    let extra: Vec<_> = got.difference(expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{topic}: missing {missing:?}, unexpected {extra:?}"
    );
}

/// Each of the rules' three targets holds exactly its expected records.
async fn every_target_exactly_once(setup: &Setup, expected: &Expected) {
    for (topic, motion, ids) in [
        (&setup.motion, true, &expected.motion),
        (&setup.all, false, &expected.all),
        (&setup.low, false, &expected.low),
    ] {
        exactly_once(topic, &read_committed(topic, motion, ids.len()).await, ids);
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_route_fan_out_project_sample_and_drop_exactly() {
    let setup = Setup::new("rules").await;
    setup.write_rules();
    let expected = events(60);
    produce(&setup.source, &expected.events).await;
    // Records that cannot be routed: not the wire format, an unknown schema id.
    let producer = producer().unwrap();
    for payload in [
        b"not avro at all".to_vec(),
        context_schemas::wire::frame(999_999_999, b"\x02"),
    ] {
        producer
            .send(
                FutureRecord::to(&setup.source).key("k").payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    let _router = Killed(setup.spawn());
    every_target_exactly_once(&setup, &expected).await;
    assert!(!expected.low.is_empty() && expected.low.len() < expected.all.len());

    // The two bad records are dead letters with their bytes and origin.
    let consumer: StreamConsumer = context_integration::base_config()
        .set("group.id", unique("it_rt_dead"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[&setup.dead]).unwrap();
    let mut reasons = BTreeSet::new();
    let mut letters = Vec::new();
    while letters.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .expect("a dead letter")
        {
            Ok(m) => letters.push(m.detach()),
            Err(e) if is_unknown_topic(&e) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => panic!("{e}"),
        }
    }
    for m in &letters {
        let header = |k: &str| {
            m.headers()
                .and_then(|h| h.iter().find(|h| h.key == k))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header("dl.source").as_deref(), Some("stream-router"));
        assert_eq!(header("dl.source_topic").as_deref(), Some(setup.source.as_str()));
        assert!(header("dl.source_offset").is_some() && header("dl.source_partition").is_some());
        let payload = m.payload().unwrap().to_vec();
        assert!(payload == b"not avro at all" || payload.starts_with(&[0, 0x3b, 0x9a, 0xc9, 0xff]));
        reasons.insert(header("dl.reason").unwrap());
    }
    assert_eq!(
        reasons,
        BTreeSet::from(["not_confluent_wire_format".to_string(), "unknown_schema_id".to_string()])
    );
}

/// A `timeout` above a minute (a slow cluster) used to stop the start:
/// librdkafka refuses a message timeout above the transaction timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_above_a_minute_still_routes_exactly_once() {
    let setup = Setup::new("slowtimeout").await;
    setup.write_rules();
    let expected = events(12);
    produce(&setup.source, &expected.events).await;
    let _router = Killed(setup.spawn_with(&[("ROUTER_TIMEOUT", "90s")]));
    every_target_exactly_once(&setup, &expected).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_stream_then_restart_leaves_every_target_exactly_once() {
    let setup = Setup::new("kill").await;
    setup.write_rules();
    let expected = events(1_500);
    let (first, second) = expected.events.split_at(750);
    produce(&setup.source, first).await;

    let mut router = setup.spawn();
    // Kill it while it routes: once some records are committed downstream.
    let consumer: StreamConsumer = context_integration::base_config()
        .set("group.id", unique("it_rt_probe"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[&setup.motion]).unwrap();
    first_record(&consumer, Duration::from_secs(120)).await;
    produce(&setup.source, second).await;
    router.kill().unwrap(); // SIGKILL
    router.wait().unwrap();

    let _router = Killed(setup.spawn());
    every_target_exactly_once(&setup, &expected).await;
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_rules_file_is_refused_naming_the_rule() {
    let setup = Setup::new("broken").await;
    write(
        &setup.rules,
        r#"
[[rules]]
name = "low-battery"
when = [{ field = "battery_levl", op = "<", value = 0.2 }]
to = [{ topic = "x.v1" }]

[[rules]]
name = "bad-projection"
when = [{ field = "network_type", op = "<", value = "wifi" }]
to = [{ topic = "y.v1", project = "Nope" }]
"#,
    );
    let check = Command::new(env!("CARGO_BIN_EXE_stream-router"))
        .args(["check-rules", setup.rules.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!check.status.success());
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(
        err.contains("rule `low-battery`, field `battery_levl`: no such field"),
        "{err}"
    );
    assert!(
        err.contains("rule `bad-projection`, field `network_type`: `<` compares numbers"),
        "{err}"
    );
    assert!(
        err.contains("rule `bad-projection`, field `to.project`: unknown record type `Nope`"),
        "{err}"
    );

    let run = Command::new(env!("CARGO_BIN_EXE_stream-router"))
        .arg("run")
        .envs(setup.env())
        .output()
        .unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("rule `low-battery`"), "{err}");

    // The shipped default rules are valid and feed the tagger.
    let shipped = Command::new(env!("CARGO_BIN_EXE_stream-router"))
        .args(["check-rules", concat!(env!("CARGO_MANIFEST_DIR"), "/rules.toml")])
        .output()
        .unwrap();
    assert!(shipped.status.success(), "{}", String::from_utf8_lossy(&shipped.stderr));
    assert!(String::from_utf8_lossy(&shipped.stdout).contains("target: context.motion.v1 <- MotionWindow"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_rules_file_is_picked_up_and_a_broken_one_keeps_the_old_rules() {
    let setup = Setup::new("reload").await;
    let first_target = unique("it_rt_reload_a");
    let second_target = unique("it_rt_reload_b");
    let rules = |topic: &str| format!("[[rules]]\nname = \"all\"\nto = [{{ topic = \"{topic}\" }}]\n");
    write(&setup.rules, &rules(&first_target));
    let _router = Killed(setup.spawn());

    let batch = |seed: u64| -> Vec<ContextEvent> {
        (0..10)
            .map(|i| sample::event(seed + i, &SampleOptions::default()))
            .collect()
    };
    let ids = |events: &[ContextEvent]| -> BTreeSet<String> { events.iter().map(|e| e.event_id.to_string()).collect() };
    let one = batch(70_000);
    produce(&setup.source, &one).await;
    exactly_once(
        &first_target,
        &read_committed(&first_target, false, 10).await,
        &ids(&one),
    );

    // A broken file: the rules in force stay.
    write(&setup.rules, "[[rules]]\nname = \"all\"\nto = []\n");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let two = batch(71_000);
    produce(&setup.source, &two).await;
    let mut both = ids(&one);
    both.extend(ids(&two));
    exactly_once(&first_target, &read_committed(&first_target, false, 20).await, &both);

    // A fixed file with a new target: new records go there.
    write(&setup.rules, &rules(&second_target));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let three = batch(72_000);
    produce(&setup.source, &three).await;
    exactly_once(
        &second_target,
        &read_committed(&second_target, false, 10).await,
        &ids(&three),
    );
}

/// Every record of `topic` within `quiet` after the last (or `deadline`
/// for the first), `read_committed`, as it came.
async fn read_all(topic: &str, expect: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: StreamConsumer = context_integration::base_config()
        .set("group.id", unique("it_rt_all"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("fetch.message.max.bytes", "4000000")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut out = Vec::new();
    loop {
        let quiet = if out.len() >= expect {
            Duration::from_secs(3)
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match tokio::time::timeout(quiet, consumer.recv()).await {
            Err(_) => return out,
            Ok(Err(e)) if is_unknown_topic(&e) => tokio::time::sleep(Duration::from_millis(200)).await,
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Ok(Ok(m)) => out.push(m.detach()),
        }
    }
}

fn header_of(m: &rdkafka::message::OwnedMessage, key: &str) -> Option<String> {
    m.headers()
        .and_then(|h| h.iter().find(|h| h.key == key))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A record the broker refuses for good (larger than the target topic's
/// `max.message.bytes`, or than the router's `max_record_bytes`) is set
/// aside as a dead letter, cut to a stub when the dead-letter topic refuses
/// it too, and the other records of its batch are routed: nothing stalls,
/// nothing after it is skipped.
async fn refused_records_are_set_aside(delivery: &str) {
    let setup = Setup::new(&format!("refused{}", delivery.len())).await;
    // The source takes large events; the target only 100 kB; the dead
    // letters 1 MB (the local broker's own default is 10 MB).
    let source = unique("it_rt_refused_src");
    context_integration::create_topic_with(&source, 2, &[("max.message.bytes", "4000000")])
        .await
        .unwrap();
    let target = unique("it_rt_refused_target");
    context_integration::create_topic_with(&target, 2, &[("max.message.bytes", "100000")])
        .await
        .unwrap();
    context_integration::create_topic_with(&setup.dead, 1, &[("max.message.bytes", "1000000")])
        .await
        .unwrap();
    write(
        &setup.rules,
        &format!("[[rules]]\nname = \"all\"\nto = [{{ topic = \"{target}\" }}]\n"),
    );
    let event = |seed: u64, motion_seconds: f64| {
        sample::event(
            seed,
            &SampleOptions {
                motion_seconds,
                ..SampleOptions::default()
            },
        )
    };
    // 300 kB: refused by the target, fits the dead-letter topic whole.
    // 1.5 MB: refused by the target (or the router's limit) and, whole, by
    // the dead-letter topic: a stub of it.
    let (medium, large) = (event(80_001, 250.0), event(80_002, 1250.0));
    let mut small: Vec<ContextEvent> = (0..40).map(|i| event(81_000 + i, 1.0)).collect();
    let mut all = small.split_off(20);
    all.insert(0, medium.clone());
    all.insert(5, large.clone());
    all.splice(0..0, small.iter().cloned());
    let registry = RegistryClient::new(&registry_url()).unwrap();
    let id = registry
        .register(&format!("{source}-value"), ContextEvent::AVSC)
        .await
        .unwrap();
    let big_producer: rdkafka::producer::FutureProducer = context_integration::base_config()
        .set("message.max.bytes", "4000000")
        .create()
        .unwrap();
    for e in &all {
        let payload = e.to_wire(id).unwrap();
        big_producer
            .send(
                FutureRecord::to(&source)
                    .key(&e.install_id.to_string())
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let mut extra = vec![("ROUTER_SOURCE_TOPIC", source.as_str()), ("ROUTER_DELIVERY", delivery)];
    if delivery == "at-least-once" {
        // Here the large event is refused by the router's own limit.
        extra.push(("ROUTER_MAX_RECORD_BYTES", "1000000"));
    }
    let _router = Killed(setup.spawn_with(&extra));

    let routed: BTreeMap<String, usize> = {
        let mut seen = BTreeMap::new();
        for m in read_all(&target, 38).await {
            let (_, e) = registry.decode::<ContextEvent>(m.payload().unwrap()).await.unwrap();
            *seen.entry(e.event_id.to_string()).or_insert(0) += 1;
        }
        seen
    };
    let expected: BTreeSet<String> = all
        .iter()
        .filter(|e| e.event_id != medium.event_id && e.event_id != large.event_id)
        .map(|e| e.event_id.to_string())
        .collect();
    if delivery == "exactly-once" {
        exactly_once(&target, &routed, &expected);
    } else {
        let got: BTreeSet<String> = routed.keys().cloned().collect();
        assert_eq!(got, expected, "at least once: every small event, no large one");
    }

    let letters = read_all(&setup.dead, 2).await;
    let mut by_event = BTreeMap::new();
    for m in &letters {
        assert_eq!(header_of(m, "dl.reason").as_deref(), Some("refused_by_kafka"));
        assert_eq!(header_of(m, "dl.target_topic").as_deref(), Some(target.as_str()));
        assert_eq!(header_of(m, "dl.source").as_deref(), Some("stream-router"));
        by_event.insert(
            m.key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            m,
        );
    }
    let medium_letter = by_event[&medium.install_id.to_string()];
    let whole = medium.to_wire(id).unwrap();
    assert_eq!(
        medium_letter.payload().unwrap().len(),
        whole.len(),
        "the 300 kB event is set aside whole"
    );
    assert_eq!(header_of(medium_letter, "dl.truncated"), None);
    let large_letter = by_event[&large.install_id.to_string()];
    let large_len = large.to_wire(id).unwrap().len();
    assert_eq!(
        header_of(large_letter, "dl.truncated"),
        Some(large_len.to_string()),
        "the 1.5 MB event is a stub naming its length"
    );
    assert!(large_letter.payload().unwrap().len() < 1_000_000);
    if delivery == "exactly-once" {
        assert_eq!(letters.len(), 2, "each refused record is set aside once");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn records_the_broker_refuses_for_good_are_dead_lettered_exactly_once() {
    refused_records_are_set_aside("exactly-once").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn records_refused_at_least_once_are_dead_lettered_and_nothing_after_them_is_skipped() {
    refused_records_are_set_aside("at-least-once").await;
}

/// A rules reload that failed because the registry was away is tried again
/// once it is back, without the file changing again.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_failed_while_the_registry_was_away_is_retried() {
    use context_integration::proxy::{Mode, Proxy};
    let setup = Setup::new("reloadretry").await;
    let registry_addr = registry_url()
        .trim_start_matches("http://")
        .parse::<std::net::SocketAddr>()
        .expect("the registry's URL is http://host:port");
    let proxy = Proxy::start(registry_addr, Mode::Forward).await;
    let (first, second) = (unique("it_rt_retry_a"), unique("it_rt_retry_b"));
    let rules = |topic: &str| format!("[[rules]]\nname = \"all\"\nto = [{{ topic = \"{topic}\" }}]\n");
    write(&setup.rules, &rules(&first));
    let url = proxy.url();
    let _router = Killed(setup.spawn_with(&[("ROUTER_REGISTRY_URL", url.as_str())]));
    let one: Vec<ContextEvent> = (0..5)
        .map(|i| sample::event(73_000 + i, &SampleOptions::default()))
        .collect();
    produce(&setup.source, &one).await;
    assert_eq!(read_committed(&first, false, 5).await.len(), 5);

    // The registry goes away; the rules change (a new target, whose schema
    // must be registered): the reload fails. Then the registry is back.
    proxy.set(Mode::Refuse);
    write(&setup.rules, &rules(&second));
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.set(Mode::Forward);
    // Retried within seconds; the records produced after it go to the new
    // target (those before it still follow the rules in force).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let two: Vec<ContextEvent> = (0..5)
        .map(|i| sample::event(74_000 + i, &SampleOptions::default()))
        .collect();
    produce(&setup.source, &two).await;
    let ids: BTreeSet<String> = two.iter().map(|e| e.event_id.to_string()).collect();
    exactly_once(&second, &read_committed(&second, false, 5).await, &ids);
}

/// Two routers on one host with the default transactional id used to take
/// the same id and fence each other in turn.
#[tokio::test(flavor = "multi_thread")]
async fn two_routers_on_one_host_with_default_ids_both_keep_running() {
    let setup = Setup::new("twohost").await;
    setup.write_rules();
    let expected = events(300);
    let mut a = setup.spawn_with(&[("ROUTER_TRANSACTIONAL_ID", "")]);
    let mut b = setup.spawn_with(&[("ROUTER_TRANSACTIONAL_ID", "")]);
    produce(&setup.source, &expected.events).await;
    every_target_exactly_once(&setup, &expected).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (a_exit, b_exit) = (a.try_wait().unwrap(), b.try_wait().unwrap());
    let _ = (a.kill(), b.kill(), a.wait(), b.wait());
    assert_eq!(
        (a_exit, b_exit),
        (None, None),
        "a router stopped: two routers on one host fenced each other"
    );
}

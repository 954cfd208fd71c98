//! The state topic is compacted (Kafka keeps only the latest record of every
//! key). These tests make the broker compact it for real, then restart the
//! registry on what is left: every id must still name the schema it named
//! before, even after claims were lost in races and versions were deleted
//! permanently, and no id or version number is ever given twice.
//!
//! They also check that the registry refuses a state topic that is not
//! compacted or is missing, with a message that names the fix, and creates a
//! missing one only when allowed to.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{config, record, start_registry, url};
use context_integration::{create_topic, create_topic_with, unique};
use context_runtime::config::ServiceConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use schema_registry::RegistryClient;

/// A state topic that the broker compacts within seconds: tiny segments that
/// roll every 100 ms, any dirt makes it cleanable, tombstones go at once.
async fn fast_compacting_topic() -> String {
    let topic = unique("it_schemas_compact");
    create_topic_with(
        &topic,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.ms", "100"),
            ("min.cleanable.dirty.ratio", "0.001"),
            ("min.compaction.lag.ms", "0"),
            ("delete.retention.ms", "100"),
        ],
    )
    .await
    .unwrap();
    topic
}

/// How many records of the topic are left, and its end offset.
fn records_left(topic: &str) -> (usize, i64) {
    let consumer: BaseConsumer = context_integration::base_config()
        .set("group.id", unique("it_count"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let (_, end) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let mut count = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                count += 1;
                if m.offset() + 1 >= end {
                    break;
                }
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None if std::time::Instant::now() > deadline => break,
            None => {}
        }
    }
    (count, end)
}

/// Rolls the active segment twice (records the registry skips, each written
/// after the segment before it aged), so that everything the test wrote lies
/// in segments the cleaner may compact, then waits until the broker's cleaner
/// removed at least `superseded` records. (The first NOOP stays: the cleaner
/// only dedups against keys outside the active segment.)
async fn force_compaction(topic: &str, superseded: usize) {
    let producer: FutureProducer = context_integration::base_config().create().unwrap();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        producer
            .send(
                FutureRecord::to(topic)
                    .key(r#"{"keytype":"NOOP","magic":0}"#)
                    .payload("")
                    .partition(0),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let (left, end) = records_left(topic);
        if end as usize - left >= superseded {
            println!("compacted: {left} of {end} records left");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the broker did not compact {topic} within 180 s ({left} of {end} records left)"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn delete(base: &str, path: &str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .delete(format!("{base}{path}"))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread")]
async fn compaction_and_restart_keep_every_id_and_never_reuse_one() {
    let topic = fast_compacting_topic().await;

    // Two replicas race: many claims lose and are retried.
    let (a, b) = (start_registry(&topic).await, start_registry(&topic).await);
    let setup = RegistryClient::new(&url(&a)).unwrap();
    for i in 0..3 {
        // Any schema may follow any other: every register is a new version.
        setup
            .set_compatibility(&format!("race{i}-value"), "NONE")
            .await
            .unwrap();
    }
    let work = |client: RegistryClient, tag: &'static str| async move {
        let mut out = Vec::new();
        for i in 0..15 {
            // The same subjects on both replicas: versions are contended too.
            let schema = record(&format!("{tag}{i}"), r#"{"name":"a","type":"string"}"#);
            let id = client.register(&format!("race{}-value", i % 3), &schema).await;
            out.push((schema, id));
        }
        out
    };
    let (ra, rb) = tokio::join!(
        work(RegistryClient::new(&url(&a)).unwrap(), "A"),
        work(RegistryClient::new(&url(&b)).unwrap(), "B")
    );
    let mut given: HashMap<u32, String> = HashMap::new();
    for (schema, id) in ra.into_iter().chain(rb) {
        let id = id.unwrap();
        assert!(given.insert(id, schema).is_none(), "id {id} given to two schemas");
    }
    assert_eq!(given.len(), 30);
    let lost = a.registry.claim_conflicts() + b.registry.claim_conflicts();
    println!("{} ids given, {lost} claims lost and retried", given.len());

    // A permanent delete of the schema with the highest id.
    let base = url(&a);
    let client = RegistryClient::new(&base).unwrap();
    let doomed = record("Doomed", r#"{"name":"a","type":"long"}"#);
    let doomed_id = client.register("doomed-value", &doomed).await.unwrap();
    given.insert(doomed_id, doomed.clone());
    assert_eq!(delete(&base, "/subjects/doomed-value/versions/1").await, 200);
    assert_eq!(
        delete(&base, "/subjects/doomed-value/versions/1?permanent=true").await,
        200
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();

    // The permanent delete supersedes the soft one (same key); wait until the
    // cleaner removed it.
    force_compaction(&topic, 1).await;

    let c = start_registry(&topic).await;
    let client = RegistryClient::new(&url(&c)).unwrap();
    for (id, schema) in &given {
        let fetched = client.schema_by_id(*id).await.unwrap();
        assert_eq!(
            fetched.canonical_form(),
            context_schemas::apache_avro::Schema::parse_str(schema)
                .unwrap()
                .canonical_form(),
            "id {id} changed its schema after compaction"
        );
    }
    // The deleted version stays gone, its id keeps its schema, and neither
    // is given again.
    let (s, _) = get(&url(&c), "/subjects/doomed-value/versions").await;
    assert_eq!(s, 404);
    let fresh = record("Fresh", r#"{"name":"a","type":"double"}"#);
    let fresh_id = client.register("doomed-value", &fresh).await.unwrap();
    assert!(!given.contains_key(&fresh_id), "id {fresh_id} was given again");
    let (_, versions) = get(&url(&c), "/subjects/doomed-value/versions").await;
    assert_eq!(versions, serde_json::json!([2]), "version 1 was given again");
    // Registering the deleted schema again gives it back its own id.
    assert_eq!(client.register("other-value", &doomed).await.unwrap(), doomed_id);
    c.stop().await.unwrap();
}

async fn get(base: &str, path: &str) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_state_topic_must_exist_be_compacted_and_have_one_partition() {
    let start = |topic: String, create: bool| async move {
        let mut c = config(&topic);
        c.create_topic = create;
        schema_registry::start(c.checked().unwrap(), None).await
    };

    // Missing, not allowed to create: refused, naming both fixes.
    let missing = unique("it_schemas_missing");
    let err = start(missing.clone(), false).await.err().expect("refused").to_string();
    assert!(err.contains("does not exist"), "{err}");
    assert!(
        err.contains("cleanup.policy=compact") && err.contains("SCHEMA_REGISTRY_CREATE_TOPIC"),
        "{err}"
    );

    // Missing, allowed to create: created compacted with one partition, serves.
    let running = start(missing.clone(), true).await.expect("creates the topic");
    assert!(running.wait_ready(Duration::from_secs(30)).await);
    running.stop().await.unwrap();
    // ...and a second start finds it as it should be.
    let running = start(missing, false).await.expect("the created topic passes the check");
    running.stop().await.unwrap();

    // Not compacted: refused, naming the command that fixes it.
    let plain = unique("it_schemas_plain");
    create_topic(&plain, 1).await.unwrap();
    let err = start(plain, true).await.err().expect("refused").to_string();
    assert!(err.contains("cleanup.policy=delete"), "{err}");
    assert!(err.contains("kafka-configs --alter"), "{err}");

    // Two partitions: refused.
    let wide = unique("it_schemas_wide");
    create_topic_with(&wide, 2, &[("cleanup.policy", "compact")])
        .await
        .unwrap();
    let err = start(wide, false).await.err().expect("refused").to_string();
    assert!(err.contains("2 partitions"), "{err}");
}

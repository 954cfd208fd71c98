//! The schema registry goes away while windows written with a schema id the
//! tagger has not seen yet arrive: `serve` waits and retries the batch (never
//! skips it, never dead-letters it), and tags every window once the registry
//! is back.

use std::collections::HashSet;
use std::time::Duration;

use context_integration::{consume_n, create_topic, create_topic_with, producer, unique};
use context_runtime::config::ServiceConfig;
use context_schemas::apache_avro::{self, types::Value};
use context_schemas::sample::{self, SampleOptions};
use context_schemas::{ActivityTag, AvroRecord, MotionWindow};
use enrich_activity::config::Config as EnrichConfig;
use enrich_activity::dataset::parse_ts;
use enrich_activity::features::FeatureSpec;
use enrich_activity::model::train;
use enrich_activity::serve::run;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use schema_registry::{Config, RegistryClient};

async fn start_registry(topic: &str, listen: &str) -> schema_registry::Running {
    let config = Config {
        listen: listen.parse().unwrap(),
        kafka: context_integration::kafka_settings(),
        topic: topic.into(),
        ..Config::default()
    };
    let running = schema_registry::start(config.checked().unwrap(), None).await.unwrap();
    assert!(running.wait_ready(Duration::from_secs(30)).await);
    running
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_outage_delays_tagging_and_skips_nothing() {
    let state = unique("it_enrich_schemas");
    create_topic_with(&state, 1, &[("cleanup.policy", "compact")])
        .await
        .unwrap();
    let registry = start_registry(&state, "127.0.0.1:0").await;
    let addr = registry.addr;
    let url = format!("http://{addr}");

    let (motion, activity, dead) = (unique("it_ro_motion"), unique("it_ro_activity"), unique("it_ro_dead"));
    for t in [&motion, &activity, &dead] {
        create_topic(t, 1).await.unwrap();
    }
    let client = RegistryClient::new(&url).unwrap();
    let first_id = client
        .register(&format!("{motion}-value"), MotionWindow::AVSC)
        .await
        .unwrap();
    // A newer writer schema: the same record with one more optional field.
    let mut evolved: serde_json::Value = serde_json::from_str(MotionWindow::AVSC).unwrap();
    evolved["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "note", "type": ["null", "string"], "default": null}));
    let evolved_text = evolved.to_string();
    let second_id = client
        .register(&format!("{motion}-value"), &evolved_text)
        .await
        .unwrap();
    assert_ne!(first_id, second_id);
    let evolved_schema = apache_avro::Schema::parse_str(&evolved_text).unwrap();

    let data = parse_ts(include_str!("../data/BasicMotions_TRAIN.ts"), 10.0).unwrap();
    let (model, _) = train(&data, &FeatureSpec::default(), 5, 4).unwrap();
    let model_path = std::env::temp_dir().join(format!("{}.json", unique("model_ro")));
    std::fs::write(&model_path, model.to_json()).unwrap();
    let (stop, rx) = context_runtime::shutdown::Shutdown::new();
    let serving = tokio::spawn(run(
        EnrichConfig {
            kafka: context_integration::kafka_settings(),
            registry: context_runtime::registry::RegistrySettings::open(url.clone()),
            motion_topic: motion.clone(),
            activity_topic: activity.clone(),
            group_id: unique("it_ro"),
            model: Some(model_path),
            max_batch: 8,
            session_timeout: std::time::Duration::from_millis(6000),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            deadletter_topic: dead.clone(),
            delivery: context_runtime::pipeline::Delivery::ExactlyOnce,
            transactional_id: unique("it_ro_txn"),
            min_confidence: Some(0.0),
            ..Default::default()
        },
        None,
        rx,
    ));

    let p = producer().unwrap();
    let send = |payload: Vec<u8>| {
        let (p, motion) = (p.clone(), motion.clone());
        async move {
            p.send(
                FutureRecord::to(&motion).key("k").payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        }
    };
    let mut sent = HashSet::new();
    for i in 0..10 {
        let w = MotionWindow::from_event(&sample::event(60_000 + i, &SampleOptions::default())).unwrap();
        sent.insert(w.event_id);
        send(w.to_wire(first_id).unwrap()).await;
    }
    let tags = context_integration::consumer(&unique("it_ro_tags")).unwrap();
    tags.subscribe(&[&activity]).unwrap();
    let mut got = consume_n(&tags, 10, Duration::from_secs(60)).await.unwrap();

    // The registry goes away; windows with the schema id not seen yet arrive.
    registry.stop().await.unwrap();
    for i in 0..10 {
        let w = MotionWindow::from_event(&sample::event(61_000 + i, &SampleOptions::default())).unwrap();
        sent.insert(w.event_id);
        let Value::Record(mut fields) = w.to_value() else {
            unreachable!()
        };
        fields.push(("note".into(), Value::Union(0, Box::new(Value::Null))));
        let body = context_schemas::codec::write_datum(&evolved_schema, Value::Record(fields)).unwrap();
        send(context_schemas::wire::frame(second_id, &body)).await;
    }
    let meanwhile = tokio::time::timeout(Duration::from_secs(4), tags.recv()).await;
    assert!(
        meanwhile.is_err(),
        "a window was tagged while its schema could not be read"
    );

    // Back on the same address: everything is tagged, nothing dead-lettered.
    let registry = start_registry(&state, &addr.to_string()).await;
    got.extend(consume_n(&tags, 10, Duration::from_secs(90)).await.unwrap());
    let mut tagged = HashSet::new();
    let reader = RegistryClient::new(&url).unwrap();
    for (_, value) in &got {
        let (_, t) = reader.decode::<ActivityTag>(value).await.unwrap();
        assert!(tagged.insert(t.event_id), "tagged twice");
    }
    assert_eq!(tagged, sent);
    let dead_letters = context_integration::consumer(&unique("it_ro_deadc")).unwrap();
    dead_letters.subscribe(&[&dead]).unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(3), dead_letters.recv())
            .await
            .is_err(),
        "a window was dead-lettered during the outage"
    );
    stop.fire();
    serving.await.unwrap().unwrap();
    registry.stop().await.unwrap();
}

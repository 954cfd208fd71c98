//! The live path of the activity tags: events with motion posted to the
//! gateway are routed by stream-router (its shipped rule, MotionWindow
//! projection) to the motion topic, tagged by enrich-activity, and land in
//! `activity_tags` through the sink, next to the events themselves. Events
//! without motion reach `events` and get no tag.

use context_runtime::config::ServiceConfig;
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{now, setup, spawn_sink};
use context_integration::{clickhouse_reader, create_topic, unique};
use context_runtime::pipeline::Delivery;
use context_schemas::sample::{self, SampleOptions};
use ingest_gateway::sdk;

#[tokio::test(flavor = "multi_thread")]
async fn posted_motion_comes_out_as_activity_tags_in_clickhouse() {
    let s = setup().await;
    let dir = std::env::temp_dir().join(unique("live"));
    std::fs::create_dir_all(&dir).unwrap();
    let motion_topic = unique("it_live_motion");
    create_topic(&motion_topic, 2).await.unwrap();

    // The gateway, in this process.
    let (gateway, key) = common::start_gateway(&s, &dir, "live-app").await;

    // The router with the shipped rules, pointed at this test's motion topic.
    let rules = dir.join("rules.toml");
    std::fs::write(
        &rules,
        include_str!("../../stream-router/rules.toml").replace("context.motion.v1", &motion_topic),
    )
    .unwrap();
    let (stop, stopped) = context_runtime::shutdown::Shutdown::new();
    let router = {
        let mut c = stream_router::Config {
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            kafka: context_integration::kafka_settings(),
            registry: context_runtime::registry::RegistrySettings::open(common::registry_url()),
            source_topic: s.events_topic.clone(),
            deadletter_topic: s.deadletter_topic.clone(),
            group_id: unique("it_live_router"),
            rules_file: rules,
            transactional_id: unique("it_live_router_txn"),
            ..stream_router::Config::default()
        };
        c.linger = Duration::from_millis(20);
        tokio::spawn(stream_router::service::run(c.checked().unwrap(), None, stopped.clone()))
    };

    // The tagger with a model trained on the shipped data.
    let (model, _) = enrich_activity::model::train(
        &enrich_activity::dataset::parse_ts(include_str!("../../enrich-activity/data/BasicMotions_TRAIN.ts"), 10.0)
            .unwrap(),
        &enrich_activity::features::FeatureSpec::default(),
        5,
        4,
    )
    .unwrap();
    let model_path = dir.join("model.json");
    std::fs::write(&model_path, model.to_json()).unwrap();
    let tagger = tokio::spawn(enrich_activity::serve::run(
        enrich_activity::config::Config {
            kafka: context_integration::kafka_settings(),
            registry: context_runtime::registry::RegistrySettings::open(common::registry_url()),
            motion_topic: motion_topic.clone(),
            activity_topic: s.activity_topic.clone(),
            group_id: unique("it_live_enrich"),
            model: Some(model_path),
            max_batch: 64,
            session_timeout: Duration::from_secs(6),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            deadletter_topic: s.deadletter_topic.clone(),
            delivery: Delivery::ExactlyOnce,
            transactional_id: unique("it_live_enrich_txn"),
            min_confidence: Some(enrich_activity::serve::DEFAULT_MIN_CONFIDENCE),
            forget_topic: String::new(),
            ..Default::default()
        },
        None,
        stopped,
    ));

    // The sink, as its own process.
    let config = s.write_config(&dir);
    let mut sink = spawn_sink(&config, &dir.join("sink.log"));

    // Ten sessions of ten events; every other event carries 2 s of motion.
    let http = reqwest::Client::new();
    let (mut all, mut with_motion) = (BTreeSet::new(), BTreeSet::new());
    for b in 0..10u64 {
        let t = now();
        let events = sdk::as_session(
            (0..10)
                .map(|i| {
                    sample::event(
                        90_000 + b * 100 + i,
                        &SampleOptions {
                            timestamp: t,
                            app_id: "live-app".into(),
                            motion_seconds: if i % 2 == 0 { 2.0 } else { 0.0 },
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            t,
        );
        let resp = http
            .post(format!("http://{}/v1/batch", gateway.addr))
            .header("Authorization", format!("Bearer {key}"))
            .header("Content-Type", "application/json")
            .body(sdk::batch_json(&events, t).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap_or_default());
        for e in &events {
            all.insert(e.event_id.to_string());
            if e.motion.is_some() {
                with_motion.insert(e.event_id.to_string());
            }
        }
    }
    assert_eq!(with_motion.len(), 50);

    let db = s.database.clone();
    let tags = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            let rows: Vec<(String, String, String)> = clickhouse_reader()
                .query(&format!(
                    "SELECT toString(event_id), activity, model_version FROM `{db}`.activity_tags FINAL"
                ))
                .fetch_all()
                .await
                .unwrap();
            if rows.len() >= with_motion.len() || tokio::time::Instant::now() > deadline {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    .await;
    let events = s.wait_for_events(all.len() as u64, Duration::from_secs(60)).await;
    stop.fire();
    sink.kill().unwrap();
    sink.wait().unwrap();
    router.await.unwrap().unwrap();
    tagger.await.unwrap().unwrap();

    assert_eq!(
        events,
        all.len() as u64,
        "every posted event is in `events`; see {}",
        dir.display()
    );
    let tagged: BTreeSet<String> = tags.iter().map(|(id, _, _)| id.clone()).collect();
    assert_eq!(
        tagged,
        with_motion,
        "exactly the events with motion are tagged; see {}",
        dir.display()
    );
    assert_eq!(tags.len(), with_motion.len(), "one tag per event and model version");
    assert!(tags
        .iter()
        .all(|(_, activity, version)| !activity.is_empty() && *version == model.model_version));

    // A replay of the router's topic (written in transactions: its last
    // offsets are commit markers, never delivered) to its end finishes, and
    // re-tags every window.
    let replayed = unique("it_live_replayed");
    context_integration::create_topic(&replayed, 1).await.unwrap();
    let (_never, not_stopped) = context_runtime::shutdown::Shutdown::new();
    let replay = enrich_activity::replay::run(
        enrich_activity::replay::ReplaySettings {
            kafka: context_integration::kafka_settings(),
            registry: context_runtime::registry::RegistrySettings::open(common::registry_url()),
            motion_topic: motion_topic.clone(),
            activity_topic: replayed,
            model_path: dir.join("model.json"),
            from: enrich_activity::replay::Bound::Earliest,
            to: enrich_activity::replay::Bound::Latest,
            group_id: Some(unique("it_live_replay")),
            max_batch: 16,
            progress: true,
            min_confidence: Some(enrich_activity::serve::DEFAULT_MIN_CONFIDENCE),
            forget_topic: String::new(),
        },
        not_stopped,
    );
    let counts = tokio::time::timeout(Duration::from_secs(120), replay)
        .await
        .expect("a replay to `latest` of a topic written in transactions never finished")
        .unwrap();
    assert_eq!(counts.tagged, with_motion.len(), "{}", counts.summary());
    s.drop_database().await;
}

//! `replay` against the real broker: a time range re-tagged with a second
//! model, exactly the events of that range, resumed after being killed midway.

use std::collections::HashSet;
use std::time::Duration;

use context_integration::{consume_n, consumer, create_topic, producer, unique};
use context_schemas::sample::{self, SampleOptions};
use context_schemas::{ActivityTag, AvroRecord, MotionWindow};
use enrich_activity::dataset::parse_ts;
use enrich_activity::features::FeatureSpec;
use enrich_activity::model::train;
use enrich_activity::replay::{plan, run, Bound, ReplaySettings};
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use schema_registry::RegistryClient;

fn registry_url() -> String {
    std::env::var("SCHEMA_REGISTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_a_time_range_with_a_new_model_and_resume_after_a_kill() {
    let (motion, activity) = (unique("it_rmotion"), unique("it_ractivity"));
    create_topic(&motion, 2).await.unwrap();
    create_topic(&activity, 1).await.unwrap();
    let registry = RegistryClient::new(&registry_url()).unwrap();
    let id = registry
        .register(&format!("{motion}-value"), MotionWindow::AVSC)
        .await
        .unwrap();
    let p = producer().unwrap();
    let produce = |seed: u64, n: u64| {
        let p = p.clone();
        let motion = motion.clone();
        async move {
            let mut ids = HashSet::new();
            for i in 0..n {
                let w = MotionWindow::from_event(&sample::event(seed * 100 + i, &SampleOptions::default())).unwrap();
                ids.insert(w.event_id);
                let payload = w.to_wire(id).unwrap();
                p.send(
                    FutureRecord::to(&motion)
                        .key(&w.install_id.to_string())
                        .payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
            }
            ids
        }
    };
    produce(1, 15).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t1 = now_ms();
    let middle = produce(2, 120).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t2 = now_ms();
    produce(3, 15).await;

    let data = parse_ts(include_str!("../data/BasicMotions_TRAIN.ts"), 10.0).unwrap();
    let (model, _) = train(&data, &FeatureSpec::default(), 99, 4).unwrap();
    let model_path = std::env::temp_dir().join(format!("{}.json", unique("model_b")));
    std::fs::write(&model_path, model.to_json()).unwrap();
    let settings = ReplaySettings {
        kafka: context_integration::kafka_settings(),
        registry: context_runtime::registry::RegistrySettings::open(registry_url()),
        motion_topic: motion.clone(),
        activity_topic: activity.clone(),
        model_path: model_path.clone(),
        from: Bound::Time(t1),
        to: Bound::Time(t2),
        group_id: Some(unique("it_replay")),
        max_batch: 1,
        progress: false,
        min_confidence: None,
        forget_topic: String::new(),
    };
    // --dry-run shows exactly the middle range.
    let planned = plan(&settings, &model.model_version).unwrap();
    assert_eq!(planned.total(), 120, "{}", planned.describe());

    // Killed midway: abort the task once some tags are out.
    let (_stop, rx) = context_runtime::shutdown::Shutdown::new();
    let first = tokio::spawn(run(settings.clone(), rx.clone()));
    let c = consumer(&unique("it_rtags")).unwrap();
    c.subscribe(&[&activity]).unwrap();
    let mut tags = consume_n(&c, 1, Duration::from_secs(60)).await.unwrap();
    // A tag can be visible a moment before the offsets that follow it are
    // committed: kill once the progress shows in the group.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while plan(&settings, &model.model_version).unwrap().total() >= 120 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.abort();
    let _ = first.await;
    let left = plan(&settings, &model.model_version).unwrap().total();
    assert!(left > 0 && left < 120, "killed at {left} records left: not midway");

    // Resumed: the rest of the range, and nothing outside it.
    let resumed = run(settings.clone(), rx).await.unwrap().tagged;
    assert!(
        resumed as i64 >= left && (resumed as i64) < 120,
        "resumed {resumed} with {left} left"
    );
    let mut seen = HashSet::new();
    loop {
        for (_, value) in &tags {
            let (_, t) = registry.decode::<ActivityTag>(value).await.unwrap();
            assert_eq!(t.model_version, model.model_version);
            assert!(middle.contains(&t.event_id), "tagged an event outside the range");
            seen.insert(t.event_id);
        }
        if seen == middle {
            break;
        }
        tags = consume_n(&c, 1, Duration::from_secs(60)).await.unwrap();
    }
    assert_eq!(seen, middle);
    assert_eq!(
        plan(&settings, &model.model_version).unwrap().total(),
        0,
        "the replay is complete"
    );
}

/// A replay asked to start below the log start (records deleted by
/// retention) says so and tags what is left, from the earliest available
/// offset, instead of jumping to the end and tagging nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_from_deleted_offsets_starts_at_the_earliest_left() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::{Offset, TopicPartitionList};

    let (motion, activity) = (unique("it_rdel_motion"), unique("it_rdel_activity"));
    create_topic(&motion, 1).await.unwrap();
    create_topic(&activity, 1).await.unwrap();
    let registry = RegistryClient::new(&registry_url()).unwrap();
    let id = registry
        .register(&format!("{motion}-value"), MotionWindow::AVSC)
        .await
        .unwrap();
    let p = producer().unwrap();
    for i in 0..30u64 {
        let w = MotionWindow::from_event(&sample::event(9_000 + i, &SampleOptions::default())).unwrap();
        p.send(
            FutureRecord::to(&motion).key("k").payload(&w.to_wire(id).unwrap()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
    // Retention (here: an explicit delete) removes the first 20 records.
    let admin: AdminClient<DefaultClientContext> = context_integration::base_config().create().unwrap();
    let mut upto = TopicPartitionList::new();
    upto.add_partition_offset(&motion, 0, Offset::Offset(20)).unwrap();
    admin.delete_records(&upto, &AdminOptions::new()).await.unwrap();
    // And one record that is no motion window at all.
    p.send(
        FutureRecord::to(&motion).key("k").payload("not avro"),
        Duration::from_secs(10),
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap();

    let data = parse_ts(include_str!("../data/BasicMotions_TRAIN.ts"), 10.0).unwrap();
    let (model, _) = train(&data, &FeatureSpec::default(), 7, 4).unwrap();
    let model_path = std::env::temp_dir().join(format!("{}.json", unique("model_d")));
    std::fs::write(&model_path, model.to_json()).unwrap();
    let settings = ReplaySettings {
        kafka: context_integration::kafka_settings(),
        registry: context_runtime::registry::RegistrySettings::open(registry_url()),
        motion_topic: motion.clone(),
        activity_topic: activity.clone(),
        model_path: model_path.clone(),
        from: Bound::parse("0:0").unwrap(),
        to: Bound::Latest,
        group_id: Some(unique("it_replay_del")),
        max_batch: 8,
        progress: false,
        min_confidence: None,
        forget_topic: String::new(),
    };
    let planned = plan(&settings, &model.model_version).unwrap();
    assert_eq!(planned.below_log_start, vec![(0, 0, 20)]);
    assert!(
        planned.describe().contains("deleted by retention"),
        "{}",
        planned.describe()
    );
    assert_eq!(planned.total(), 11);
    let (_stop, rx) = context_runtime::shutdown::Shutdown::new();
    let counts = run(settings, rx).await.unwrap();
    assert_eq!(counts.tagged, 10, "the 10 windows left are tagged");
    // The summary says what happened to the rest, and why.
    assert_eq!(
        counts.undecodable.get("not_confluent_wire_format"),
        Some(&1),
        "{counts:?}"
    );
    assert!(
        counts.summary().contains("1 undecodable (not_confluent_wire_format 1)"),
        "{}",
        counts.summary()
    );
}

/// A window that makes tagging panic (here a broken artifact whose scaler
/// is shorter than the features: every window) is counted and skipped: the
/// replay goes on to the end instead of stopping at the same batch on every
/// run.
#[tokio::test(flavor = "multi_thread")]
async fn windows_that_make_tagging_panic_are_counted_and_the_replay_goes_on() {
    let (motion, activity) = (unique("it_rpanic_motion"), unique("it_rpanic_activity"));
    create_topic(&motion, 1).await.unwrap();
    create_topic(&activity, 1).await.unwrap();
    let registry = RegistryClient::new(&registry_url()).unwrap();
    let id = registry
        .register(&format!("{motion}-value"), MotionWindow::AVSC)
        .await
        .unwrap();
    let p = producer().unwrap();
    for i in 0..12u64 {
        let w = MotionWindow::from_event(&sample::event(77_000 + i, &SampleOptions::default())).unwrap();
        p.send(
            FutureRecord::to(&motion)
                .key(&w.install_id.to_string())
                .payload(&w.to_wire(id).unwrap()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
    let data = parse_ts(include_str!("../data/BasicMotions_TRAIN.ts"), 10.0).unwrap();
    let (mut model, _) = train(&data, &FeatureSpec::default(), 7, 4).unwrap();
    model.scaler.mean.truncate(3);
    let model = model.reseal();
    let model_path = std::env::temp_dir().join(format!("{}.json", unique("model_panics")));
    std::fs::write(&model_path, model.to_json()).unwrap();
    let settings = ReplaySettings {
        kafka: context_integration::kafka_settings(),
        registry: context_runtime::registry::RegistrySettings::open(registry_url()),
        motion_topic: motion,
        activity_topic: activity,
        model_path,
        from: Bound::Earliest,
        to: Bound::Latest,
        group_id: Some(unique("it_rpanic")),
        max_batch: 5,
        progress: false,
        min_confidence: None,
        forget_topic: String::new(),
    };
    let (_stop, rx) = context_runtime::shutdown::Shutdown::new();
    let counts = tokio::time::timeout(Duration::from_secs(120), run(settings.clone(), rx))
        .await
        .expect("the replay finished")
        .expect("a window that makes tagging panic stopped the replay");
    assert_eq!((counts.tagged, counts.tagging_failed), (0, 12), "{}", counts.summary());
    assert_eq!(
        plan(&settings, &model.model_version).unwrap().total(),
        0,
        "the replay is complete"
    );
}

//! `serve` against the real broker and registry: every motion window is
//! tagged once, with the model's version.

use std::collections::HashSet;
use std::time::Duration;

use context_integration::{consume_n, consumer, create_topic, producer, unique};
use context_schemas::sample::{self, SampleOptions};
use context_schemas::{ActivityTag, AvroRecord, MotionWindow};
use enrich_activity::config::Config;
use enrich_activity::dataset::parse_ts;
use enrich_activity::features::FeatureSpec;
use enrich_activity::model::train;
use enrich_activity::serve::run;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use schema_registry::RegistryClient;

fn registry_url() -> String {
    std::env::var("SCHEMA_REGISTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into())
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_tags_every_window_once() {
    let (motion, activity) = (unique("it_motion"), unique("it_activity"));
    create_topic(&motion, 2).await.unwrap();
    create_topic(&activity, 1).await.unwrap();
    let registry = RegistryClient::new(&registry_url()).unwrap();
    let window_id = registry
        .register(&format!("{motion}-value"), MotionWindow::AVSC)
        .await
        .unwrap();

    let (model, _) = train(
        &parse_ts(include_str!("../data/BasicMotions_TRAIN.ts"), 10.0).unwrap(),
        &FeatureSpec::default(),
        5,
        4,
    )
    .unwrap();
    let model_path = std::env::temp_dir().join(format!("{}.json", unique("model")));
    std::fs::write(&model_path, model.to_json()).unwrap();

    let p = producer().unwrap();
    let mut sent = HashSet::new();
    for i in 0..30 {
        let w = MotionWindow::from_event(&sample::event(500 + i, &SampleOptions::default())).unwrap();
        sent.insert(w.event_id);
        let payload = w.to_wire(window_id).unwrap();
        p.send(
            FutureRecord::to(&motion).key("k").payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }

    let (stop, rx) = context_runtime::shutdown::Shutdown::new();
    let task = tokio::spawn(run(
        Config {
            kafka: context_integration::kafka_settings(),
            registry: context_runtime::registry::RegistrySettings::open(registry_url()),
            motion_topic: motion.clone(),
            activity_topic: activity.clone(),
            group_id: unique("it_enrich"),
            model: Some(model_path),
            max_batch: 8,
            session_timeout: std::time::Duration::from_millis(6000),
            admin_listen: "127.0.0.1:19103".parse().unwrap(),
            deadletter_topic: context_schemas::contract::topics::DEAD_LETTER.into(),
            delivery: context_runtime::pipeline::Delivery::ExactlyOnce,
            transactional_id: unique("it_enrich_txn"),
            min_confidence: Some(0.0),
            ..Default::default()
        },
        context_runtime::install_metrics(),
        rx,
    ));

    let c = consumer(&unique("it_tags")).unwrap();
    c.subscribe(&[&activity]).unwrap();
    let records = consume_n(&c, 30, Duration::from_secs(90)).await.unwrap();
    let mut tagged = HashSet::new();
    for (_, value) in records {
        let (_, t) = registry.decode::<ActivityTag>(&value).await.unwrap();
        assert_eq!(t.model_version, model.model_version);
        // The sample windows are noise: a class, or `unknown` when the model
        // cannot give a valid distribution for them.
        assert!(model.labels.contains(&t.activity) || t.activity == enrich_activity::serve::UNKNOWN);
        assert!(t.confidence.is_finite());
        assert_eq!(t.probabilities.len(), model.labels.len());
        assert!(tagged.insert(t.event_id), "tagged twice");
    }
    assert_eq!(tagged, sent);
    let get = |path: &str| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", &format!("http://127.0.0.1:19103{path}")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(get("/readyz").ends_with("200"));
    let metrics = get("/metrics");
    assert!(
        metrics.contains("enrich_windows_tagged_total{") && metrics.contains(&model.model_version),
        "{metrics}"
    );
    stop.fire();
    task.await.unwrap().unwrap();
}

/// Windows far from the training data (huge values, a flat line, a single
/// sample) never give a NaN, an infinite or above-one confidence, nor a class
/// the model cannot vouch for: they are `unknown`.
#[test]
fn out_of_distribution_windows_are_unknown_never_nan() {
    use context_schemas::Axes3;
    use enrich_activity::serve::{tag, DEFAULT_MIN_CONFIDENCE, UNKNOWN};
    let (model, _) = train(
        &parse_ts(include_str!("../data/BasicMotions_TRAIN.ts"), 10.0).unwrap(),
        &FeatureSpec::default(),
        5,
        4,
    )
    .unwrap();
    let spec = FeatureSpec::default();
    let base = MotionWindow::from_event(&sample::event(7, &SampleOptions::default())).unwrap();
    let axes = |v: f32, n: usize| Axes3 {
        x: vec![v; n],
        y: vec![v * 0.5; n],
        z: vec![-v; n],
    };
    for (what, accelerometer) in [
        ("huge values", axes(1.0e6, 100)),
        ("a flat line", axes(0.0, 100)),
        ("one sample", axes(0.3, 1)),
    ] {
        let w = MotionWindow {
            accelerometer: accelerometer.clone(),
            gyroscope: accelerometer,
            ..base.clone()
        };
        let t = tag(&model, &spec, &w, Some(DEFAULT_MIN_CONFIDENCE));
        assert!(
            t.confidence.is_finite() && (0.0..=1.0).contains(&t.confidence),
            "{what}: {t:?}"
        );
        assert!(
            t.probabilities.iter().all(|p| p.probability.is_finite()),
            "{what}: {t:?}"
        );
        assert!(
            t.activity == UNKNOWN || t.confidence >= DEFAULT_MIN_CONFIDENCE,
            "{what}: a class below the threshold: {t:?}"
        );
    }
    // Windows that cannot be featurized are unknown at once, within bounded
    // memory: 1e-9 Hz with two samples would resample into 10^10 values.
    let cases: Vec<(&str, MotionWindow)> = vec![
        (
            "a rate of 1e-9 Hz",
            MotionWindow {
                sample_rate_hz: 1e-9,
                accelerometer: axes(0.1, 2),
                gyroscope: axes(0.1, 2),
                ..base.clone()
            },
        ),
        (
            "no gyroscope",
            MotionWindow {
                gyroscope: Axes3::default(),
                ..base.clone()
            },
        ),
        (
            "a NaN sample",
            MotionWindow {
                accelerometer: Axes3 {
                    x: vec![f32::NAN; 100],
                    ..axes(0.1, 100)
                },
                gyroscope: axes(0.1, 100),
                ..base.clone()
            },
        ),
        (
            "900,000 samples at 1 Hz (9 million values once resampled)",
            MotionWindow {
                sample_rate_hz: 1.0,
                accelerometer: Axes3 {
                    x: vec![0.0; 900_000],
                    y: vec![0.0; 900_000],
                    z: vec![0.0; 900_000],
                },
                gyroscope: axes(0.1, 900_000),
                ..base.clone()
            },
        ),
    ];
    for (what, w) in cases {
        let t = tag(&model, &spec, &w, Some(0.0));
        assert_eq!(t.activity, UNKNOWN, "{what}");
        assert_eq!(t.confidence, 0.0, "{what}");
        assert!(t.reason.is_some(), "{what}: an unknown tag says why");
    }
    // The random sample windows the tests and the demo send are noise: with
    // the threshold at 1.0 everything short of certainty is unknown.
    let t = tag(&model, &spec, &base, Some(1.0));
    assert!(t.activity == UNKNOWN || t.confidence >= 1.0);
}

/// The model file is replaced while windows keep arriving: tags switch
/// `model_version` between batches, and every window is tagged exactly once
/// (read `read_committed`), nothing lost, nothing twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_model_swapped_under_load_tags_every_window_exactly_once() {
    use std::collections::HashMap;

    let (motion, activity) = (unique("it_swap_motion"), unique("it_swap_activity"));
    create_topic(&motion, 2).await.unwrap();
    create_topic(&activity, 1).await.unwrap();
    let registry = RegistryClient::new(&registry_url()).unwrap();
    let window_id = registry
        .register(&format!("{motion}-value"), MotionWindow::AVSC)
        .await
        .unwrap();
    let data = parse_ts(include_str!("../data/BasicMotions_TRAIN.ts"), 10.0).unwrap();
    let (first, _) = train(&data, &FeatureSpec::default(), 1, 4).unwrap();
    let (second, _) = train(&data, &FeatureSpec::default(), 2, 4).unwrap();
    assert_ne!(first.model_version, second.model_version);
    let dir = std::env::temp_dir().join(unique("swap"));
    std::fs::create_dir_all(&dir).unwrap();
    let model_path = dir.join("model.json");
    std::fs::write(&model_path, first.to_json()).unwrap();

    let (stop, rx) = context_runtime::shutdown::Shutdown::new();
    let serving = tokio::spawn(run(
        Config {
            kafka: context_integration::kafka_settings(),
            registry: context_runtime::registry::RegistrySettings::open(registry_url()),
            motion_topic: motion.clone(),
            activity_topic: activity.clone(),
            group_id: unique("it_swap"),
            model: Some(model_path.clone()),
            max_batch: 20,
            session_timeout: std::time::Duration::from_millis(6000),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            deadletter_topic: context_schemas::contract::topics::DEAD_LETTER.into(),
            delivery: context_runtime::pipeline::Delivery::ExactlyOnce,
            transactional_id: unique("it_swap_txn"),
            min_confidence: Some(0.0),
            ..Default::default()
        },
        None,
        rx,
    ));

    // Steady load: 40 windows every 100 ms; the model is replaced (written
    // beside, then renamed over, as a deployment does) half-way through.
    let p = producer().unwrap();
    let mut sent = HashSet::new();
    for tick in 0..30u64 {
        for i in 0..40 {
            let w =
                MotionWindow::from_event(&sample::event(80_000 + tick * 100 + i, &SampleOptions::default())).unwrap();
            sent.insert(w.event_id);
            p.send(
                FutureRecord::to(&motion)
                    .key(&w.install_id.to_string())
                    .payload(&w.to_wire(window_id).unwrap()),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        }
        if tick == 15 {
            let staged = dir.join("model.json.new");
            std::fs::write(&staged, second.to_json()).unwrap();
            std::fs::rename(&staged, &model_path).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let c: rdkafka::consumer::StreamConsumer = context_integration::base_config()
        .set("group.id", unique("it_swap_tags"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    c.subscribe(&[&activity]).unwrap();
    let records = consume_n(&c, sent.len(), Duration::from_secs(120)).await.unwrap();
    // Nothing more comes: no window was tagged twice.
    let extra = tokio::time::timeout(Duration::from_secs(3), c.recv()).await;
    stop.fire();
    serving.await.unwrap().unwrap();
    assert!(extra.is_err(), "more tags than windows");

    let mut by_event: HashMap<uuid::Uuid, String> = HashMap::new();
    for (_, value) in records {
        let (_, t) = registry.decode::<ActivityTag>(&value).await.unwrap();
        assert!(
            by_event.insert(t.event_id, t.model_version).is_none(),
            "a window tagged twice"
        );
    }
    assert_eq!(
        by_event.keys().copied().collect::<HashSet<_>>(),
        sent,
        "every window tagged"
    );
    let versions: HashSet<&String> = by_event.values().collect();
    assert!(
        versions.contains(&first.model_version) && versions.contains(&second.model_version),
        "tags switched from the first model to the second: {versions:?}"
    );
}

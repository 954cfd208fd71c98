//! `serve` against the real broker and registry: every motion window is
//! tagged once, with the model's version.

use std::collections::HashSet;
use std::time::Duration;

use context_integration::{consume_n, consumer, create_topic, producer, unique};
use context_schemas::sample::{self, SampleOptions};
use context_schemas::{ActivityTag, AvroRecord, MotionWindow};
use enrich_activity::dataset::parse_ts;
use enrich_activity::features::FeatureSpec;
use enrich_activity::model::train;
use enrich_activity::serve::{run, ServeSettings};
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

    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run(
        ServeSettings {
            kafka_bootstrap: context_integration::kafka_bootstrap(),
            registry_url: registry_url(),
            motion_topic: motion.clone(),
            activity_topic: activity.clone(),
            group_id: unique("it_enrich"),
            model_path,
            max_batch: 8,
            session_timeout_ms: 6000,
            admin_listen: "127.0.0.1:19103".parse().unwrap(),
            deadletter_topic: context_schemas::contract::topics::DEAD_LETTER.into(),
            delivery: context_runtime::pipeline::Delivery::ExactlyOnce,
            transactional_id: unique("it_enrich_txn"),
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
        assert!(model.labels.contains(&t.activity));
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
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
}

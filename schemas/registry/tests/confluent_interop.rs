//! Interoperability with Confluent's own client: the `confluent-kafka` Python
//! package (not code of this repo; `scripts/test` installs it from PyPI into
//! `.stack/venv`) talks to our registry, decodes records our Rust code wrote,
//! and encodes one that our Rust code decodes.

mod common;

use std::process::Command;

use common::{start_registry, state_topic, url};
use context_integration::{repo_root, unique};
use context_schemas::sample::{self, SampleOptions};
use context_schemas::{ActivityTag, AvroRecord, ClassProbability, ContextEvent, SignalValue};
use schema_registry::RegistryClient;
use serde_json::json;

fn python() -> std::path::PathBuf {
    std::env::var_os("CONTEXT_PYTHON")
        .map(Into::into)
        .unwrap_or_else(|| repo_root().join(".stack/venv/bin/python"))
}

fn number(v: Option<&SignalValue>) -> f64 {
    match v {
        Some(SignalValue::Double(d)) => *d,
        other => panic!("expected a double, got {other:?}"),
    }
}

fn text(v: Option<&SignalValue>) -> String {
    match v {
        Some(SignalValue::String(s)) => s.clone(),
        other => panic!("expected a string, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn confluents_python_client_works_with_our_registry_and_records() {
    let python = python();
    assert!(
        python.exists(),
        "{} is missing: scripts/test installs confluent-kafka into .stack/venv (or set CONTEXT_PYTHON)",
        python.display()
    );
    let registry = start_registry(&state_topic().await).await;
    let client = RegistryClient::new(&url(&registry)).unwrap();
    let (events_topic, activity_topic) = (unique("it_events"), unique("it_activity"));
    let event_id = client
        .register(&format!("{events_topic}-value"), ContextEvent::AVSC)
        .await
        .unwrap();
    let tag_id = client
        .register(&format!("{activity_topic}-value"), ActivityTag::AVSC)
        .await
        .unwrap();

    let event = sample::event(5, &SampleOptions::default());
    let tag = ActivityTag {
        event_id: event.event_id,
        app_id: event.app_id.clone(),
        session_id: event.session_id,
        install_id: event.install_id,
        timestamp: event.timestamp,
        model_version: "m-1".into(),
        activity: "walking".into(),
        confidence: 0.75,
        probabilities: vec![
            ClassProbability {
                label: "walking".into(),
                probability: 0.75,
            },
            ClassProbability {
                label: "standing".into(),
                probability: 0.25,
            },
        ],
        tagged_at: event.timestamp + 1,
        reason: None,
    };
    let work = std::env::temp_dir().join(unique("confluent_interop"));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("event.bin"), event.to_wire(event_id).unwrap()).unwrap();
    std::fs::write(work.join("tag.bin"), tag.to_wire(tag_id).unwrap()).unwrap();
    let python_tag = json!({
        "event_id": "6f1c2a7e-0d7b-4c55-9d59-3f2f1f0b9a10", "app_id": "py-app",
        "session_id": "0b0c5e1e-2a53-4a8b-9a57-0e7c7b6a9f01", "install_id": "1c6f0b6e-77a1-4f8e-8f55-6c1b6d7e2a02",
        "timestamp": 1_760_000_000_000_000i64, "model_version": "py-model", "activity": "running",
        "confidence": 0.5, "probabilities": [{"label": "running", "probability": 0.5}],
        "tagged_at": 1_760_000_000_000_001i64
    });
    let expected = json!({
        "interop_subject": unique("interop") + "-value",
        "activity_topic": activity_topic,
        "activity_schema": ActivityTag::AVSC,
        "python_tag": python_tag,
        "records": {
            "event": {"topic": events_topic, "fields": {
                "event_id": event.event_id.to_string(),
                "install_id": event.install_id.to_string(),
                "app_id": event.app_id,
                "device.model": event.device.model,
                "signals.battery.battery_level": number(event.signals.get("battery_level")),
                "signals.network.network_type": text(event.signals.get("network_type")),
                "motion.accelerometer.x": event.motion.as_ref().unwrap().accelerometer.x.len(),
            }},
            "tag": {"topic": activity_topic, "fields": {
                "event_id": tag.event_id.to_string(),
                "activity": "walking",
                "model_version": "m-1",
                "probabilities": 2,
            }}
        }
    });
    std::fs::write(work.join("expected.json"), expected.to_string()).unwrap();

    let out = Command::new(&python)
        .arg(repo_root().join("integration/interop/confluent_check.py"))
        .arg(url(&registry))
        .arg(&work)
        .output()
        .expect("run the Confluent client check");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the Confluent client check failed:\n{report}");
    assert!(
        report.contains("decoded event: ok") && report.contains("decoded tag: ok"),
        "{report}"
    );

    // And back: Confluent's serializer wrote a record our client decodes.
    let bytes = std::fs::read(work.join("py_activity.bin")).unwrap();
    let (id, decoded) = client.decode::<ActivityTag>(&bytes).await.unwrap();
    assert_eq!(id, tag_id, "the Python serializer found the already registered schema");
    assert_eq!(decoded.activity, "running");
    assert_eq!(decoded.model_version, "py-model");
    assert_eq!(decoded.event_id.to_string(), "6f1c2a7e-0d7b-4c55-9d59-3f2f1f0b9a10");
    assert_eq!(decoded.tagged_at, 1_760_000_000_000_001);
    assert_eq!(
        decoded.probabilities,
        vec![ClassProbability {
            label: "running".into(),
            probability: 0.5
        }]
    );
    std::fs::remove_dir_all(&work).ok();
    registry.stop().await.unwrap();
}

//! Dead letters sent again once their cause is fixed: gateway rejects
//! rebuilt from the envelope they kept and validated again, a row the sink
//! gave up on sent back to its topic; idempotent by event_id.

mod common;

use std::time::Duration;

use common::{now, setup, spawn_sink, start_gateway_with};
use context_integration::{clickhouse_writer, unique};
use context_schemas::sample::{self, SampleOptions};
use context_schemas::{AvroRecord, DeadLetter};
use ingest_gateway::sdk;
use sink_clickhouse::rows::DeadLetterRow;

fn run(config: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sink-clickhouse"))
        .arg("dead-letters")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_redriven_once_their_cause_is_fixed() {
    let s = setup().await;
    let dir = std::env::temp_dir().join(unique("it_redrive"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = s.write_config(&dir);
    let mut sink = spawn_sink(&config, &dir.join("sink.log"));

    // A gateway whose motion limit is too low for these events (2 s at
    // 50 Hz): each is rejected and dead-lettered with the envelope.
    let (gateway, key) = start_gateway_with(&s, &dir, "app-redrive", |c| c.limits.max_samples = 10).await;
    let events = sdk::as_session(
        (0..3)
            .map(|i| {
                sample::event(
                    90_000 + i,
                    &SampleOptions {
                        timestamp: now(),
                        ..SampleOptions::default()
                    },
                )
            })
            .collect(),
        now(),
    );
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{}/v1/batch", gateway.addr))
        .header("Authorization", format!("Bearer {key}"))
        .header("Content-Type", "application/json")
        .header("X-Sent-At", sdk::rfc3339(now()))
        .body(sdk::batch_json(&events, now()).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["accepted"], 0, "{answer}");
    assert_eq!(answer["rejected"].as_array().unwrap().len(), 3, "{answer}");

    // A row the sink gave up on earlier (say ClickHouse refused it), kept
    // with its bytes and where it was read from.
    let refused = sample::event(90_100, &SampleOptions::default());
    let mut insert = clickhouse_writer()
        .with_database(&s.database)
        .insert::<DeadLetterRow>("dead_letters")
        .await
        .unwrap();
    insert
        .write(&DeadLetterRow::from_dead_letter(DeadLetter {
            source: "sink-clickhouse".into(),
            reason: "refused_by_clickhouse".into(),
            detail: "Code: 53, type mismatch".into(),
            source_topic: Some(s.events_topic.clone()),
            source_partition: Some(0),
            source_offset: Some(7),
            app_id: None,
            event_id: None,
            failed_at: now(),
            payload: refused.to_wire(s.event_schema_id).unwrap(),
        }))
        .await
        .unwrap();
    // An event the router could not route (read from the events topic),
    // whose event will be stored: its window never was, so it is sent every
    // time (what it leads to merges by event_id downstream).
    let mut routed = events[0].clone();
    routed.app_id = "app-redrive".into();
    insert
        .write(&DeadLetterRow::from_dead_letter(DeadLetter {
            source: "stream-router".into(),
            reason: "projection_failed".into(),
            detail: "a rule's projection failed".into(),
            source_topic: Some(s.events_topic.clone()),
            source_partition: Some(0),
            source_offset: Some(3),
            app_id: Some("app-redrive".into()),
            event_id: Some(routed.event_id.to_string()),
            failed_at: now(),
            payload: routed.to_wire(s.event_schema_id).unwrap(),
        }))
        .await
        .unwrap();
    insert.end().await.unwrap();

    // Both kinds are listed once the gateway's have reached ClickHouse.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let listed = loop {
        let text = run(&config, &["list"]);
        if text.contains("invalid_motion") || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        listed.contains("ingest-gateway") && listed.contains("invalid_motion"),
        "{listed}"
    );
    assert!(listed.contains("refused_by_clickhouse"), "{listed}");

    // Validated with the running gateway's configuration, the limit still
    // refuses them.
    let gateway_config = dir.join("gateway.toml");
    std::fs::write(&gateway_config, "[limits]\nmax_samples = 10\n").unwrap();
    let unfixed = run(
        &config,
        &[
            "redrive",
            "--dry-run",
            "--gateway-config",
            gateway_config.to_str().unwrap(),
        ],
    );
    assert!(
        unfixed.contains(&format!("2 to {}", s.events_topic)) && unfixed.contains("still rejected: 3 invalid_motion"),
        "{unfixed}"
    );

    // The limit is fixed (the gateway's defaults).
    let dry = run(&config, &["redrive", "--dry-run"]);
    assert!(dry.contains(&format!("would send: 5 to {}", s.events_topic)), "{dry}");
    assert_eq!(s.distinct_events().await, 0, "a dry run sends nothing");

    let sent = run(&config, &["redrive"]);
    assert!(sent.contains(&format!("sent: 5 to {}", s.events_topic)), "{sent}");
    assert_eq!(s.wait_for_events(4, Duration::from_secs(120)).await, 4);

    // Idempotent for events: what is stored is not sent again; the
    // router's window is (its outputs merge downstream).
    let again = run(&config, &["redrive"]);
    assert!(
        again.contains(&format!("sent: 1 to {}", s.events_topic)) && again.contains("already stored: 4"),
        "{again}"
    );

    let reason_only = run(&config, &["redrive", "--reason", "no_such_reason"]);
    assert!(
        reason_only.contains("sent: none") && reason_only.contains("already stored: 0"),
        "{reason_only}"
    );

    gateway.shutdown(Duration::from_secs(1)).await.unwrap();
    sink.kill().unwrap();
    sink.wait().unwrap();
    s.drop_database().await;
}

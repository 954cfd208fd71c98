//! The first end-to-end path: batches posted over HTTP to the gateway, the
//! sink (a separate process, killed with -9 and restarted in between) puts
//! them in ClickHouse, and every accepted event_id is there exactly once
//! after dedup.

mod common;

use std::time::Duration;

use common::{now, setup, spawn_sink};
use context_integration::{clickhouse_reader, unique};
use context_schemas::sample::{self, SampleOptions};
use ingest_gateway::sdk;

#[tokio::test(flavor = "multi_thread")]
async fn posted_batches_land_in_clickhouse_once_across_a_sink_kill() {
    let s = setup().await;
    let dir = std::env::temp_dir().join(unique("e2e"));
    std::fs::create_dir_all(&dir).unwrap();
    let (gateway, key) = common::start_gateway(&s, &dir, "e2e-app").await;
    let config = s.write_config(&dir);
    let mut sink = spawn_sink(&config, &dir.join("sink1.log"));

    let http = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        let req = http
            .post(format!("http://{}/v1/batch", gateway.addr))
            .header("Authorization", format!("Bearer {key}"))
            .header("Content-Type", "application/json")
            .body(body);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let mut accepted = Vec::new();
    for b in 0..20u64 {
        let t = now();
        let events = sdk::as_session(
            (0..25)
                .map(|i| {
                    sample::event(
                        b * 1000 + i,
                        &SampleOptions {
                            timestamp: t,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            t,
        );
        let (status, answer) = post(sdk::batch_json(&events, t).to_string().into_bytes()).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["accepted"], 25);
        accepted.extend(events.iter().map(|e| e.event_id));
        if b == 9 {
            sink.kill().unwrap();
            sink.wait().unwrap();
        }
        if b == 12 {
            sink = spawn_sink(&config, &dir.join("sink2.log"));
        }
    }
    let got = s.wait_for_events(accepted.len() as u64, Duration::from_secs(120)).await;
    sink.kill().unwrap();
    sink.wait().unwrap();
    assert_eq!(got, accepted.len() as u64, "see {}", dir.display());

    let ids: Vec<(String, String)> = clickhouse_reader()
        .query(&format!(
            "SELECT toString(event_id), app_id FROM `{}`.events FINAL",
            s.database
        ))
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(ids.len(), accepted.len(), "exactly once after dedup");
    for id in &accepted {
        assert!(ids.iter().any(|(i, app)| *i == id.to_string() && app == "e2e-app"));
    }
    s.drop_database().await;
}

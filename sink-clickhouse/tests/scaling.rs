//! Consumer-group changes under steady load lose nothing: one sink replica
//! runs, a second joins, leaves with SIGTERM, a third joins and is killed
//! with -9, while events are produced all along. Every acknowledged event is
//! in `events` at the end. (Each join and leave is an eager rebalance that
//! revokes every partition and assigns it back, often inside one `recv()`.)

mod common;

use std::time::Duration;

use common::{setup, spawn_sink};
use context_integration::{producer, unique};
use context_schemas::sample::{self, SampleOptions};
use context_schemas::AvroRecord;
use rdkafka::producer::FutureRecord;

#[tokio::test(flavor = "multi_thread")]
async fn replicas_joining_leaving_and_dying_under_load_lose_no_acknowledged_event() {
    let s = setup().await;
    let dir = std::env::temp_dir().join(unique("scaling"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = s.write_config(&dir);

    // Steady load: 40 events every 100 ms for about 30 s, each acknowledged.
    let (topic, schema_id) = (s.events_topic.clone(), s.event_schema_id);
    let load = tokio::spawn(async move {
        let p = producer().unwrap();
        let mut acknowledged = 0u64;
        for tick in 0..300u64 {
            let mut pending = Vec::new();
            for i in 0..40 {
                let e = sample::event(
                    tick * 1000 + i,
                    &SampleOptions {
                        motion_seconds: 0.2,
                        ..SampleOptions::default()
                    },
                );
                let payload = e.to_wire(schema_id).unwrap();
                let key = e.install_id.to_string();
                pending.push(
                    p.send_result(FutureRecord::to(&topic).key(&key).payload(&payload))
                        .map_err(|(e, _)| e)
                        .unwrap(),
                );
            }
            for d in pending {
                d.await.unwrap().map_err(|(e, _)| e).unwrap();
                acknowledged += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        acknowledged
    });

    let log = |name: &str| dir.join(format!("{name}.log"));
    let mut a = spawn_sink(&config, &log("a"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut b = spawn_sink(&config, &log("b"));
    tokio::time::sleep(Duration::from_secs(6)).await;
    // b leaves cleanly.
    let term = std::process::Command::new("kill")
        .args(["-TERM", &b.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    b.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut c = spawn_sink(&config, &log("c"));
    tokio::time::sleep(Duration::from_secs(6)).await;
    // c dies.
    c.kill().unwrap();
    c.wait().unwrap();

    let acknowledged = load.await.unwrap();
    let got = s.wait_for_events(acknowledged, Duration::from_secs(180)).await;
    a.kill().unwrap();
    a.wait().unwrap();
    assert_eq!(
        got,
        acknowledged,
        "every acknowledged event is in ClickHouse; logs in {}",
        dir.display()
    );
    s.drop_database().await;
}

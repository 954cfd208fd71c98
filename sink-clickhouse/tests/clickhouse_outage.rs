//! ClickHouse stops for a while mid-stream: the sink keeps its batch, pauses,
//! retries with backoff, reports not-ready, and catches up without a restart
//! once ClickHouse is back. This test stops the shared ClickHouse, so it is a
//! test binary of its own (cargo runs test binaries one after another).

use context_runtime::config::ServiceConfig;
mod common;

use std::time::Duration;

use common::setup;
use context_integration::stack;

async fn ready(addr: std::net::SocketAddr) -> u16 {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{addr}/readyz"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn clickhouse_down_for_a_while_then_the_sink_catches_up() {
    let s = setup().await;
    let running = sink_clickhouse::start(s.config().checked().unwrap(), None)
        .await
        .unwrap();
    let mut sent = s.produce_events(20, 400).await;
    assert_eq!(s.wait_for_events(400, Duration::from_secs(60)).await, 400);

    stack(&["down", "clickhouse"]).unwrap();
    sent.extend(s.produce_events(21, 400).await);
    let mut not_ready = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if ready(running.admin_addr).await == 503 {
            not_ready = true;
        }
    }
    stack(&["up", "clickhouse"]).unwrap();
    assert!(not_ready, "/readyz stayed 200 while ClickHouse was down");

    let got = s.wait_for_events(sent.len() as u64, Duration::from_secs(120)).await;
    assert_eq!(got, sent.len() as u64);
    assert_eq!(ready(running.admin_addr).await, 200);
    running.shutdown().await.unwrap();
    s.drop_database().await;
}

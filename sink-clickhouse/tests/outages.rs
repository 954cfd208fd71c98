//! Outages of ClickHouse as one sink sees them, through a proxy the test
//! controls (the shared ClickHouse keeps running for the other tests):
//!
//! - a consumer-group change during the outage: a partition that leaves the
//!   paused sink and comes back after the outage is fetched again;
//! - SIGTERM (shutdown) during the outage ends the sink at once, with nothing
//!   committed: the next sink stores every event;
//! - a ClickHouse that accepts and never answers: the insert times out and is
//!   retried, the events arrive once ClickHouse answers again.

use context_runtime::config::ServiceConfig;
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::setup;
use context_integration::proxy::{Mode, Proxy};

fn clickhouse_addr() -> SocketAddr {
    let url = context_integration::clickhouse_url();
    let hostport = url.trim_start_matches("http://").trim_start_matches("https://");
    let hostport = hostport.split('/').next().unwrap();
    std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .unwrap()
        .next()
        .unwrap()
}

/// A sink of this setup that reaches ClickHouse through `proxy`.
fn through(s: &common::Setup, proxy: &Proxy) -> sink_clickhouse::Config {
    let mut c = s.config();
    c.clickhouse_url = proxy.url();
    c
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_that_leaves_a_paused_sink_and_comes_back_later_is_fetched_again() {
    if context_integration::clickhouse_url().starts_with("https://") {
        return; // the proxy speaks plain TCP to a plain ClickHouse
    }
    let s = setup().await;
    let proxy = Proxy::start(clickhouse_addr(), Mode::Refuse).await;
    // A: ClickHouse is down for it. It reads both partitions, cannot insert,
    // pauses them.
    let a = sink_clickhouse::start(through(&s, &proxy).checked().unwrap(), None)
        .await
        .unwrap();
    s.produce_events(60, 300).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        s.distinct_events().await,
        0,
        "nothing can be stored through a refusing proxy"
    );

    // B joins: one partition leaves the paused A for B, which stores it.
    let b = sink_clickhouse::start(s.config().checked().unwrap(), None)
        .await
        .unwrap();
    let b_health = b.health.clone();
    wait_until("B stores its partition", Duration::from_secs(60), async || {
        b_health.inserted_rows.load(std::sync::atomic::Ordering::Relaxed) > 0
    })
    .await;

    // The outage ends for A: it stores its partition and resumes what it
    // holds now (not the partition B took).
    proxy.set(Mode::Forward);
    assert_eq!(s.wait_for_events(300, Duration::from_secs(60)).await, 300);

    // B leaves: its partition comes back to A, which must fetch it.
    b.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.produce_events(61, 300).await;
    let got = s.wait_for_events(600, Duration::from_secs(90)).await;
    assert_eq!(
        got, 600,
        "the partition that left the paused sink and came back was never fetched again"
    );
    a.shutdown().await.unwrap();
    s.drop_database().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_during_an_outage_stops_at_once_and_commits_nothing() {
    if context_integration::clickhouse_url().starts_with("https://") {
        return;
    }
    let s = setup().await;
    let proxy = Proxy::start(clickhouse_addr(), Mode::Refuse).await;
    let a = sink_clickhouse::start(through(&s, &proxy).checked().unwrap(), None)
        .await
        .unwrap();
    s.produce_events(62, 200).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The outage goes on; SIGTERM must not wait for it to end.
    let stopped = tokio::time::timeout(Duration::from_secs(30), a.shutdown()).await;
    assert!(
        stopped.is_ok(),
        "the sink waited the ClickHouse outage out instead of stopping"
    );
    stopped.unwrap().unwrap();
    assert_eq!(s.distinct_events().await, 0);

    // Nothing was committed: the next sink (ClickHouse reachable) stores all.
    let b = sink_clickhouse::start(s.config().checked().unwrap(), None)
        .await
        .unwrap();
    assert_eq!(s.wait_for_events(200, Duration::from_secs(60)).await, 200);
    b.shutdown().await.unwrap();
    s.drop_database().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clickhouse_that_never_answers_times_the_insert_out_and_it_is_retried() {
    if context_integration::clickhouse_url().starts_with("https://") {
        return;
    }
    let s = setup().await;
    let proxy = Proxy::start(clickhouse_addr(), Mode::Blackhole).await;
    let mut config = through(&s, &proxy);
    config.insert_timeout = Duration::from_secs(2);
    let a = sink_clickhouse::start(config.checked().unwrap(), None).await.unwrap();
    s.produce_events(63, 200).await;
    // Longer than max_poll_interval (10 s): an insert without a timeout would
    // still hang on its connection after ClickHouse answers again.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(s.distinct_events().await, 0);
    proxy.set(Mode::Forward);
    assert_eq!(
        s.wait_for_events(200, Duration::from_secs(60)).await,
        200,
        "an insert into a ClickHouse that never answered hung for good"
    );
    a.shutdown().await.unwrap();
    s.drop_database().await;
}

/// `path` of the admin endpoints: status and body.
fn admin_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", &format!("http://{addr}{path}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// A sink whose ClickHouse hangs has work and makes no progress: after
/// `stall_after` `/readyz` says it is stalled and what is stuck, after
/// `stall_grace` more `/healthz` fails (the liveness probe would restart
/// it); once ClickHouse answers, both turn back and every event is stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_sink_that_makes_no_progress_turns_unready_then_unhealthy_and_heals() {
    if context_integration::clickhouse_url().starts_with("https://") {
        return;
    }
    let s = setup().await;
    let proxy = Proxy::start(clickhouse_addr(), Mode::Forward).await;
    let mut config = through(&s, &proxy);
    config.stall_after = Duration::from_secs(4);
    config.stall_grace = Duration::from_secs(4);
    config.insert_timeout = Duration::from_secs(3);
    let a = sink_clickhouse::start(config.checked().unwrap(), None).await.unwrap();
    s.produce_events(64, 100).await;
    assert_eq!(s.wait_for_events(100, Duration::from_secs(60)).await, 100);
    // Idle with nothing to do is no stall, however long.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(admin_get(a.admin_addr, "/readyz").0, 200, "an idle sink is ready");
    assert_eq!(admin_get(a.admin_addr, "/healthz").0, 200);

    // ClickHouse hangs (the pooled connections idle out first).
    proxy.set(Mode::Blackhole);
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.produce_events(65, 100).await;
    let started = tokio::time::Instant::now();
    let mut unready = String::new();
    wait_until(
        "/readyz says the sink is stalled",
        Duration::from_secs(60),
        async || {
            let (code, body) = admin_get(a.admin_addr, "/readyz");
            unready = body.clone();
            code == 503 && body.contains("stalled")
        },
    )
    .await;
    assert!(
        unready.contains("-events") && unready.contains("no progress for"),
        "the reason names the group and what is stuck: {unready}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "a stall before stall_after: {unready}"
    );
    assert_eq!(
        admin_get(a.admin_addr, "/healthz").0,
        200,
        "unhealthy before stall_grace"
    );
    wait_until(
        "/healthz fails after stall_grace",
        Duration::from_secs(60),
        async || {
            let (code, body) = admin_get(a.admin_addr, "/healthz");
            code == 503 && body.contains("stalled for")
        },
    )
    .await;

    // ClickHouse answers again: the stall heals without a restart.
    proxy.set(Mode::Forward);
    assert_eq!(s.wait_for_events(200, Duration::from_secs(90)).await, 200);
    wait_until("ready and healthy again", Duration::from_secs(60), async || {
        admin_get(a.admin_addr, "/readyz").0 == 200 && admin_get(a.admin_addr, "/healthz").0 == 200
    })
    .await;
    a.shutdown().await.unwrap();
    s.drop_database().await;
}

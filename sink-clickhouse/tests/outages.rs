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

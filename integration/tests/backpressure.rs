//! The end of the chain pushes back to the phones: the whole platform
//! (`scripts/platform`, debug builds) under a simulated fleet while
//! ClickHouse is stopped. The sink stops committing, its group falls behind
//! on `context.events.v1`, and the gateway turns to 503 `backpressure` with
//! `Retry-After` before the oldest record the sink has not read could
//! expire; the fleet keeps its batches queued; ClickHouse comes back, the
//! sink drains, the gateway accepts again, and `devicesim verify` finds
//! every acknowledged event stored once. Twice: with an absolute bound
//! (`INGEST_BACKPRESSURE_MAX_LAG`), and with the bound derived from a small
//! `retention.ms` set on the topic for the test. Before, the gateway answered
//! 200 through the whole outage, and retention could delete what the phones
//! had already deleted.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{answers, finish, fleet, interrupt, still_running, verify};
use context_integration::{platform, platform_with, repo_root, stack};
use context_schemas::sample::{self, SampleOptions};

const EVENTS_TOPIC: &str = "context.events.v1";

/// The gateway's `/metrics` value of `name` (a gauge without labels, or the
/// first series whose labels contain `labels`).
async fn gauge(client: &reqwest::Client, name: &str, labels: &str) -> Option<f64> {
    let text = client
        .get("http://127.0.0.1:8080/metrics")
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let series = l.split_whitespace().next().unwrap_or_default();
            series == name || (series.starts_with(&format!("{name}{{")) && series.contains(labels))
        })?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// Polls `gateway_backpressure_active` until it is `want`; how long that took.
async fn until_active(client: &reqwest::Client, want: bool, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let active = gauge(client, "gateway_backpressure_active", "").await;
        if active == Some(if want { 1.0 } else { 0.0 }) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "gateway_backpressure_active is {active:?}, not {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One session's batch posted as a phone would: status, `Retry-After`, body.
async fn post(client: &reqwest::Client, seed: u64) -> (u16, Option<String>, serde_json::Value) {
    let key = std::fs::read_to_string(repo_root().join(".stack/platform/api-key")).unwrap();
    let now = context_runtime::clock::now_micros();
    let events = ingest_gateway::sdk::as_session(
        (0..3)
            .map(|i| {
                sample::event(
                    seed + i,
                    &SampleOptions {
                        timestamp: now,
                        ..SampleOptions::default()
                    },
                )
            })
            .collect(),
        now,
    );
    let response = client
        .post("http://127.0.0.1:8080/v1/batch")
        .header("Authorization", format!("Bearer {}", key.trim()))
        .header("Content-Type", "application/json")
        .header("X-Sent-At", ingest_gateway::sdk::rfc3339(now))
        .body(ingest_gateway::sdk::batch_json(&events, now).to_string())
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.json().await.unwrap_or_default();
    (status, retry_after, body)
}

/// `scripts/kafka kafka-configs` on the events topic.
fn topic_config(args: &[&str]) -> String {
    let out = Command::new(repo_root().join("scripts/kafka"))
        .args([
            "kafka-configs",
            "--entity-type",
            "topics",
            "--entity-name",
            EVENTS_TOPIC,
        ])
        .args(args)
        .output()
        .expect("scripts/kafka kafka-configs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kafka-configs {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Puts back what a failed test would leave broken for the tests after it:
/// ClickHouse up, the topic's retention as it was.
struct Restore {
    retention_ms: Option<String>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = stack(&["up", "clickhouse"]);
        if let Some(ms) = &self.retention_ms {
            topic_config(&["--alter", "--add-config", &format!("retention.ms={ms}")]);
        }
    }
}

/// The bounds of one outage, and what the test expects of it.
struct Outage<'a> {
    what: &'a str,
    /// The platform's environment (the gateway's backpressure settings).
    env: &'a [(&'a str, &'a str)],
    /// The age bound the gateway derives, and the check interval.
    bound: Duration,
    interval: Duration,
    /// By when the refusal must have started after ClickHouse stopped.
    refuse_within: Duration,
    /// The reason the refusal must name.
    reason: &'a str,
    /// Run once the platform is up, before the load (`scripts/stack up`,
    /// which `platform up` runs, puts the declared topic configs back).
    prepare: &'a dyn Fn(),
}

/// A fleet killed if the test fails first, so that it does not run on.
struct Running(Option<std::process::Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the fleet through one ClickHouse outage; fails unless the gateway
/// refused in time, said why, accepted again after the sink drained, and the
/// fleet lost nothing.
async fn outage(o: &Outage<'_>) {
    eprintln!("[backpressure] {}", o.what);
    platform(&["down"]);
    platform_with(&["up"], o.env);
    let client = reqwest::Client::new();
    let state = std::env::temp_dir().join(format!("devicesim-backpressure-{}", uuid::Uuid::new_v4().simple()));

    (o.prepare)();
    // The gateway reads the topic's retention every 30 s: the bound it
    // derives is the one expected before anything is stopped.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let bound = gauge(&client, "gateway_backpressure_bound_seconds", "").await;
        if bound == Some(o.bound.as_secs_f64()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway's bound is {bound:?} s, not {:?}",
            o.bound
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut run = Running(Some(fleet(
        &state,
        &["--sessions", "100000000", "--duration", "3600", "--rate", "40"],
    )));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        gauge(&client, "gateway_backpressure_active", "").await,
        Some(0.0),
        "refusing before the outage"
    );
    still_running(run.0.as_mut().unwrap(), "ClickHouse stopped");
    stack(&["down", "clickhouse"]).unwrap();
    let stopped = Instant::now();

    // The sink commits nothing more; its oldest unread record ages past the
    // bound, and the next check turns the gateway.
    let turned = until_active(&client, true, o.refuse_within + Duration::from_secs(30)).await;
    let lag = gauge(&client, "gateway_consumer_lag_seconds", "sink-clickhouse-events").await;
    eprintln!(
        "[backpressure] refusing {:.1} s after ClickHouse stopped (bound {:?}, check every {:?}); the sink's lag then {lag:?} s",
        turned.as_secs_f64(),
        o.bound,
        o.interval
    );
    assert!(
        turned <= o.refuse_within,
        "the gateway refused only {turned:?} after ClickHouse stopped; it must by {:?}",
        o.refuse_within
    );
    let (status, retry_after, body) = post(&client, 97_000).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "backpressure", "{body}");
    assert_eq!(retry_after.as_deref(), Some("3"), "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("sink-clickhouse-events") && message.contains(o.reason),
        "{message}"
    );
    let ready = client
        .get("http://127.0.0.1:8080/readyz")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(ready.contains("backpressure on"), "{ready}");

    // The phones hold their batches a while, then ClickHouse comes back.
    tokio::time::sleep(Duration::from_secs(8)).await;
    still_running(run.0.as_mut().unwrap(), "ClickHouse back");
    stack(&["up", "clickhouse"]).unwrap();
    let resumed = until_active(&client, false, Duration::from_secs(120)).await;
    eprintln!(
        "[backpressure] accepting again {:.1} s after ClickHouse was back, {:.1} s after it stopped",
        resumed.as_secs_f64(),
        stopped.elapsed().as_secs_f64()
    );
    let (status, _, body) = post(&client, 97_100).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = interrupt(run.0.take().unwrap());
    eprintln!("{report}");
    assert!(answers(&report, 503) > 0, "the fleet was never refused:\n{report}");
    let drained = finish(fleet(&state, &["--sessions", "0"]), "draining after the outage");
    assert!(drained.contains("still queued: 0"), "{drained}");
    verify(&state);
    let _ = std::fs::remove_dir_all(&state);
}

#[tokio::test(flavor = "multi_thread")]
async fn clickhouse_stopped_under_load_turns_the_gateway_to_503_until_the_sink_drains() {
    stack(&["up"]).unwrap();
    let mut restore = Restore { retention_ms: None };

    // 1. An absolute bound: 10 s of lag, checked every second.
    outage(&Outage {
        what: "ClickHouse stopped; INGEST_BACKPRESSURE_MAX_LAG=10s",
        env: &[
            ("INGEST_BACKPRESSURE_MAX_LAG", "10s"),
            ("INGEST_BACKPRESSURE_CHECK_INTERVAL", "1s"),
            ("INGEST_BACKPRESSURE_RETRY_AFTER", "3s"),
        ],
        bound: Duration::from_secs(10),
        interval: Duration::from_secs(1),
        // The bound, the check interval and one slow check (5 s per call).
        refuse_within: Duration::from_secs(10 + 1 + 5),
        reason: "backpressure.max_lag",
        prepare: &|| {},
    })
    .await;

    // 2. The bound from the topic's retention: retention.ms 40 s, refusing
    // at half of it, before the oldest unread record could expire.
    let described = topic_config(&["--describe"]);
    let before = described
        .split("retention.ms=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_owned);
    restore.retention_ms = Some(before.unwrap_or_else(|| "604800000".to_owned()));
    outage(&Outage {
        what: "ClickHouse stopped; retention.ms=40000 on the events topic",
        env: &[
            ("INGEST_BACKPRESSURE_CHECK_INTERVAL", "1s"),
            ("INGEST_BACKPRESSURE_RETRY_AFTER", "3s"),
        ],
        bound: Duration::from_secs(20),
        interval: Duration::from_secs(1),
        refuse_within: Duration::from_secs(40),
        reason: "retention.ms",
        prepare: &|| {
            topic_config(&["--alter", "--add-config", "retention.ms=40000"]);
        },
    })
    .await;

    drop(restore);
    platform(&["down"]);
}

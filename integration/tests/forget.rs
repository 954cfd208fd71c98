//! Forgetting a device end to end, on the whole platform (`scripts/platform`,
//! debug builds): two installs send sessions; the app asks `POST /v1/forget`
//! for one of them; the running sink erases that install's events and
//! activity tags (and only them) and records it in `forget_log`; `forget
//! status` says so. Then the erasure must hold: a late batch captured before
//! the request is acknowledged but never stored, what the install sends
//! after the request is kept, and a sink replaying the whole topic from the
//! beginning (a new consumer group) stores none of the erased rows again.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use context_integration::{clickhouse_reader, platform, platform_with, repo_root, stack};
use context_schemas::sample::{self, SampleOptions};
use uuid::Uuid;

fn key() -> String {
    std::fs::read_to_string(repo_root().join(".stack/platform/api-key"))
        .unwrap()
        .trim()
        .to_owned()
}

/// A session of `n` events of `install`, captured one second apart ending
/// at `captured_at` (µs), posted now (a phone sending late); the status.
async fn post_session(client: &reqwest::Client, install: Uuid, seed: u64, n: u64, captured_at: i64) -> u16 {
    let now = context_runtime::clock::now_micros();
    let mut events: Vec<_> = (0..n)
        .map(|i| {
            sample::event(
                seed + i,
                &SampleOptions {
                    timestamp: captured_at,
                    ..SampleOptions::default()
                },
            )
        })
        .collect();
    events[0].install_id = install;
    let events = ingest_gateway::sdk::as_session(events, captured_at);
    let response = client
        .post("http://127.0.0.1:8080/v1/batch")
        .header("Authorization", format!("Bearer {}", key()))
        .header("Content-Type", "application/json")
        .header("X-Sent-At", ingest_gateway::sdk::rfc3339(now))
        .body(ingest_gateway::sdk::batch_json(&events, now).to_string())
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    if status != 200 {
        eprintln!("[forget] batch answered {status}: {:?}", response.text().await);
    }
    status
}

/// `POST /v1/forget` with `body` and the platform's key (or none).
async fn post_forget(client: &reqwest::Client, body: &str, with_key: bool) -> (u16, serde_json::Value) {
    let mut request = client
        .post("http://127.0.0.1:8080/v1/forget")
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .timeout(Duration::from_secs(30));
    if with_key {
        request = request.header("Authorization", format!("Bearer {}", key()));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Distinct events (or activity tags) of `install` stored, and of those the
/// ones captured at or before `until` (µs).
async fn stored(table: &str, install: Uuid, until: i64) -> (u64, u64) {
    clickhouse_reader()
        .query(&format!(
            "SELECT uniqExact(event_id), uniqExactIf(event_id, timestamp_us <= ?) FROM context.{table} WHERE install_id = toUUID(?)"
        ))
        .bind(until)
        .bind(install.to_string())
        .fetch_one::<(u64, u64)>()
        .await
        .unwrap()
}

/// Polls `check` every 500 ms until it holds; fails after `within` saying `what`.
async fn until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    loop {
        let last = match check().await {
            Ok(()) => return,
            Err(e) => e,
        };
        assert!(started.elapsed() < within, "{what}: not after {within:?}: {last}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The sum of the sink's `name` series whose labels contain `labels`.
async fn sink_counter(client: &reqwest::Client, name: &str, labels: &str) -> f64 {
    let Ok(response) = client
        .get("http://127.0.0.1:9102/metrics")
        .timeout(Duration::from_secs(5))
        .send()
        .await
    else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let series = l.split_whitespace().next().unwrap_or_default();
            (series == name && labels.is_empty())
                || (series.starts_with(&format!("{name}{{")) && series.contains(labels))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

fn sink_cli(args: &[&str]) -> (bool, String) {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("sink-clickhouse");
    let out = Command::new(&bin)
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forgotten_install_is_erased_and_stays_erased_through_late_batches_and_replays() {
    stack(&["up"]).unwrap();
    platform(&["down"]);
    platform(&["up"]);
    let client = reqwest::Client::new();
    let sink_config = repo_root().join(".stack/platform/sink.toml");
    let sink_config = sink_config.to_str().unwrap();
    let (gone, kept) = (Uuid::new_v4(), Uuid::new_v4());
    let seed = 7_000_000 + u64::from(std::process::id()) * 1_000;
    let before = context_runtime::clock::now_micros() - 60_000_000;

    assert_eq!(post_session(&client, gone, seed, 5, before).await, 200);
    assert_eq!(post_session(&client, kept, seed + 100, 5, before).await, 200);
    until("both installs stored and tagged", Duration::from_secs(180), || async {
        let (g, k) = (
            stored("events", gone, i64::MAX).await,
            stored("events", kept, i64::MAX).await,
        );
        let tags = stored("activity_tags", gone, i64::MAX).await;
        if g.0 == 5 && k.0 == 5 && tags.0 > 0 {
            Ok(())
        } else {
            Err(format!("events {} and {}, activity tags {}", g.0, k.0, tags.0))
        }
    })
    .await;

    // What the app is told about wrong requests.
    let (status, _) = post_forget(&client, &format!("{{\"install_id\":\"{gone}\"}}"), false).await;
    assert_eq!(status, 401, "no key");
    let (status, answer) = post_forget(&client, "{\"install_id\":\"not-a-uuid\"}", true).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("not a UUID"), "{answer}");
    let (status, answer) = post_forget(&client, "install please", true).await;
    assert_eq!(status, 400, "{answer}");

    // The request: 202 once it is in the ledger.
    let (status, answer) = post_forget(&client, &format!("{{\"install_id\":\"{gone}\"}}"), true).await;
    assert_eq!(status, 202, "{answer}");
    let request_id = answer["request_id"].as_str().expect("a request id").to_owned();
    assert_eq!(
        answer["install_id"].as_str(),
        Some(gone.to_string().as_str()),
        "{answer}"
    );
    let asked_at = context_runtime::clock::now_micros();

    until("the sink erased the install", Duration::from_secs(180), || async {
        let done: u64 = clickhouse_reader()
            .query("SELECT count() FROM context.forget_log WHERE request_id = ?")
            .bind(&request_id)
            .fetch_one()
            .await
            .map_err(|e| e.to_string())?;
        if done > 0 {
            Ok(())
        } else {
            Err("no forget_log line".into())
        }
    })
    .await;
    assert_eq!(stored("events", gone, i64::MAX).await.0, 0, "the install's events");
    assert_eq!(stored("activity_tags", gone, i64::MAX).await.0, 0, "the install's tags");
    assert_eq!(
        stored("events", kept, i64::MAX).await.0,
        5,
        "the other install's events"
    );
    assert!(
        stored("activity_tags", kept, i64::MAX).await.0 > 0,
        "the other install's tags"
    );

    let (ok, text) = sink_cli(&["forget", "status", &gone.to_string(), "--config", sink_config]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&request_id) && text.contains("done") && text.contains("events 5 rows"),
        "{text}"
    );
    let (ok, text) = sink_cli(&["forget", "--config", sink_config, "--install-id", "nope", "--app", "x"]);
    assert!(!ok && text.contains("is not an install id"), "{text}");

    // A late batch captured before the request is acknowledged (the phone
    // may delete it) and never stored; what the install sends after the
    // request is kept, as is the other install's.
    assert_eq!(post_session(&client, gone, seed + 200, 5, before).await, 200);
    // Captured from 1 s after the request on.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = context_runtime::clock::now_micros();
    assert_eq!(post_session(&client, gone, seed + 300, 4, after).await, 200);
    assert_eq!(post_session(&client, kept, seed + 400, 3, after).await, 200);
    until(
        "the batches after the request stored",
        Duration::from_secs(180),
        || async {
            let (g, k) = (
                stored("events", gone, i64::MAX).await,
                stored("events", kept, i64::MAX).await,
            );
            if g.0 >= 4 && k.0 == 8 {
                Ok(())
            } else {
                Err(format!("events of the forgotten install {}, of the other {}", g.0, k.0))
            }
        },
    )
    .await;
    let (all, up_to_request) = stored("events", gone, asked_at).await;
    assert_eq!((all, up_to_request), (4, 0), "only what was sent after the request");
    assert_eq!(stored("activity_tags", gone, asked_at).await.1, 0, "no tag of before");

    // A replay: a sink in a new consumer group reads every topic from the
    // beginning; the erased rows are dropped again, not stored.
    let pid = common::pid("sink");
    common::kill("-TERM", &pid);
    let started = Instant::now();
    while Command::new("kill")
        .args(["-0", &pid])
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(started.elapsed() < Duration::from_secs(60), "the sink did not stop");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let group = format!("sink-replay-{}", Uuid::new_v4().simple());
    platform_with(&["up"], &[("SINK_GROUP_PREFIX", &group)]);
    until(
        "the replaying sink dropped the erased events",
        Duration::from_secs(300),
        || async {
            // 5 events of the first batch and 5 of the late one.
            let dropped = sink_counter(&client, "sink_forgotten_dropped_total", "table=\"events\"").await;
            if dropped >= 10.0 {
                Ok(())
            } else {
                Err(format!("sink_forgotten_dropped_total{{table=\"events\"}} {dropped}"))
            }
        },
    )
    .await;
    assert_eq!(
        stored("events", gone, asked_at).await.1,
        0,
        "a replay stored erased events again"
    );
    assert_eq!(
        stored("activity_tags", gone, asked_at).await.1,
        0,
        "a replay stored erased tags again"
    );
    platform(&["down"]);
}

//! Forgetting a device end to end, on the whole platform (`scripts/platform`,
//! debug builds). Two installs of one app send sessions, each with a rejected
//! event (a dead letter). Another app asking to forget one of them erases
//! nothing of this app. The app asks `POST /v1/forget` for one install; the
//! running sink erases that install's events, activity tags and dead letters
//! (and only them) and records it in `forget_log`; `forget status` says so.
//! Then the erasure must hold:
//! - a late batch captured before the request is acknowledged but never
//!   stored, what the install sends after the request is kept;
//! - every service restarted, the sink in a new consumer group reading every
//!   topic from the beginning, and one of the install's old batches sent
//!   again: none of the erased rows comes back (the ledger is read again
//!   from its compacted topic);
//! - a full `enrich-activity replay --from earliest` tags none of them;
//! - a `dead-letters redrive` of everything, with a letter of the install
//!   restored from a "backup" and its cause fixed, sends nothing of it; asking
//!   again erases the restored letter.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use context_integration::{clickhouse_reader, clickhouse_writer, platform, platform_with, repo_root, stack};
use context_schemas::sample::{self, SampleOptions};
use uuid::Uuid;

fn key() -> String {
    std::fs::read_to_string(repo_root().join(".stack/platform/api-key"))
        .unwrap()
        .trim()
        .to_owned()
}

/// A session of `n` accepted events of `install` and one rejected event (a
/// battery level of 1.5: `signal_out_of_range`, a dead letter), captured one
/// second apart ending at `captured_at` (µs); the batch's JSON.
fn session(install: Uuid, seed: u64, n: u64, captured_at: i64) -> String {
    let now = context_runtime::clock::now_micros();
    let mut events: Vec<_> = (0..=n)
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
    let mut body = ingest_gateway::sdk::batch_json(&events, now);
    body["events"][n as usize]["signals"]["battery_level"] = serde_json::json!(1.5);
    body.to_string()
}

/// Posts a batch (as made by [`session`]) with the platform's key; the
/// status, and the number of events accepted.
async fn post_batch(client: &reqwest::Client, body: &str) -> (u16, u64) {
    let response = client
        .post("http://127.0.0.1:8080/v1/batch")
        .header("Authorization", format!("Bearer {}", key()))
        .header("Content-Type", "application/json")
        .header(
            "X-Sent-At",
            ingest_gateway::sdk::rfc3339(context_runtime::clock::now_micros()),
        )
        .body(body.to_owned())
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let answer: serde_json::Value = response.json().await.unwrap_or_default();
    if status != 200 {
        eprintln!("[forget] batch answered {status}: {answer}");
    }
    (status, answer["accepted"].as_u64().unwrap_or(0))
}

/// Posts a session of `n` accepted events and a rejected one; the status.
async fn post_session(client: &reqwest::Client, install: Uuid, seed: u64, n: u64, captured_at: i64) -> u16 {
    let (status, accepted) = post_batch(client, &session(install, seed, n, captured_at)).await;
    if status == 200 {
        assert_eq!(accepted, n, "accepted events of a session of {n} and a reject");
    }
    status
}

/// `POST /v1/forget` with `body` and `key` (or none).
async fn post_forget(client: &reqwest::Client, body: &str, key: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = client
        .post("http://127.0.0.1:8080/v1/forget")
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .timeout(Duration::from_secs(30));
    if let Some(key) = key {
        request = request.header("Authorization", format!("Bearer {key}"));
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

/// Dead letters of `install` stored (a letter retried counts once).
async fn letters(install: Uuid) -> u64 {
    clickhouse_reader()
        .query("SELECT uniqExact(source, reason, ifNull(event_id, ''), payload) FROM context.dead_letters WHERE install_id = ?")
        .bind(install.to_string())
        .fetch_one::<u64>()
        .await
        .unwrap()
}

/// Waits until `forget_log` has a line of `request_id`.
async fn erased(request_id: &str) {
    until("the sink erased the install", Duration::from_secs(180), || async {
        let done: u64 = clickhouse_reader()
            .query("SELECT count() FROM context.forget_log WHERE request_id = ?")
            .bind(request_id)
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

/// The sum of the `name` series whose labels contain `labels` on the
/// metrics endpoint at `admin` (`127.0.0.1:9102` is the sink's).
async fn counter(client: &reqwest::Client, admin: &str, name: &str, labels: &str) -> f64 {
    let Ok(response) = client
        .get(format!("http://{admin}/metrics"))
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

const SINK: &str = "127.0.0.1:9102";
const ROUTER: &str = "127.0.0.1:9101";

/// Runs one of this test run's binaries (`sink-clickhouse`, …) from the
/// repository's root: whether it succeeded, and its stdout and stderr.
fn cli(binary: &str, args: &[&str]) -> (bool, String) {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join(binary);
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

fn sink_cli(args: &[&str]) -> (bool, String) {
    cli("sink-clickhouse", args)
}

/// Adds a key of another app to the platform's keys file (the gateway
/// reloads it within seconds); the key, and the file as it was.
fn another_app_key() -> (String, String) {
    let keys = repo_root().join(".stack/platform/keys.toml");
    let before = std::fs::read_to_string(&keys).unwrap();
    let (ok, text) = cli("ingest-gateway", &["keys", "new", "--app", "forget-other-app"]);
    assert!(ok, "{text}");
    let key = text
        .lines()
        .nth(2)
        .expect("the key on the third line")
        .trim()
        .to_owned();
    let entry = &text[text.find("[[keys]]").expect("a [[keys]] entry")..];
    std::fs::write(&keys, format!("{before}\n{entry}")).unwrap();
    (key, before)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forgotten_install_is_erased_and_stays_erased_through_late_batches_restarts_and_replays() {
    stack(&["up"]).unwrap();
    platform(&["down"]);
    platform(&["up"]);
    let client = reqwest::Client::new();
    let dir = repo_root().join(".stack/platform");
    let sink_config = dir.join("sink.toml");
    let sink_config = sink_config.to_str().unwrap();
    let (gone, kept) = (Uuid::new_v4(), Uuid::new_v4());
    let seed = 7_000_000 + u64::from(std::process::id()) * 1_000;
    let before = context_runtime::clock::now_micros() - 60_000_000;
    let (other_key, keys_before) = another_app_key();

    let first_batch = session(gone, seed, 5, before);
    assert_eq!(post_batch(&client, &first_batch).await, (200, 5));
    assert_eq!(post_session(&client, kept, seed + 100, 5, before).await, 200);
    until("both installs stored and tagged", Duration::from_secs(180), || async {
        let (g, k) = (
            stored("events", gone, i64::MAX).await,
            stored("events", kept, i64::MAX).await,
        );
        let tags = stored("activity_tags", gone, i64::MAX).await;
        let (lg, lk) = (letters(gone).await, letters(kept).await);
        if g.0 == 5 && k.0 == 5 && tags.0 > 0 && lg == 1 && lk == 1 {
            Ok(())
        } else {
            Err(format!(
                "events {} and {}, activity tags {}, dead letters {lg} and {lk}",
                g.0, k.0, tags.0
            ))
        }
    })
    .await;
    let kept_tags = stored("activity_tags", kept, i64::MAX).await.0;

    // A "backup" of the install's dead letter, restored at the end.
    let backup = format!("forget_backup_{}", Uuid::new_v4().simple());
    let ch = clickhouse_writer();
    ch.query(&format!("CREATE TABLE context.{backup} AS context.dead_letters"))
        .execute()
        .await
        .unwrap();
    ch.query(&format!(
        "INSERT INTO context.{backup} SELECT * FROM context.dead_letters WHERE install_id = ?"
    ))
    .bind(gone.to_string())
    .execute()
    .await
    .unwrap();

    // What the app is told about wrong requests.
    let body = format!("{{\"install_id\":\"{gone}\"}}");
    let (status, _) = post_forget(&client, &body, None).await;
    assert_eq!(status, 401, "no key");
    let (status, _) = post_forget(&client, &body, Some("ck_live_not-a-key")).await;
    assert_eq!(status, 401, "a wrong key");
    let (status, answer) = post_forget(&client, "{\"install_id\":\"not-a-uuid\"}", Some(&key())).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("not a UUID"), "{answer}");
    let (status, answer) = post_forget(&client, "install please", Some(&key())).await;
    assert_eq!(status, 400, "{answer}");

    // Another app asking for the other install (its key reloaded within
    // seconds): done, with nothing of this app erased.
    let kept_body = format!("{{\"install_id\":\"{kept}\"}}");
    let waited = Instant::now();
    let other = loop {
        let answer = post_forget(&client, &kept_body, Some(&other_key)).await;
        if answer.0 != 401 || waited.elapsed() > Duration::from_secs(30) {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(other.0, 202, "{}", other.1);
    let other_request = other.1["request_id"].as_str().expect("a request id").to_owned();
    erased(&other_request).await;
    let (ok, text) = sink_cli(&["forget", "status", &other_request, "--config", sink_config]);
    assert!(ok, "{text}");
    assert!(
        text.contains("forget-other-app") && text.contains("events 0 rows, activity_tags 0 rows, dead_letters 0 rows"),
        "{text}"
    );
    assert_eq!(
        stored("events", kept, i64::MAX).await.0,
        5,
        "another app's request erased events"
    );
    assert_eq!(letters(kept).await, 1, "another app's request erased a letter");

    // The request: 202 once it is in the ledger.
    let (status, answer) = post_forget(&client, &body, Some(&key())).await;
    assert_eq!(status, 202, "{answer}");
    let request_id = answer["request_id"].as_str().expect("a request id").to_owned();
    assert_eq!(
        answer["install_id"].as_str(),
        Some(gone.to_string().as_str()),
        "{answer}"
    );
    let asked_at = context_runtime::clock::now_micros();

    erased(&request_id).await;
    assert_eq!(stored("events", gone, i64::MAX).await.0, 0, "the install's events");
    assert_eq!(stored("activity_tags", gone, i64::MAX).await.0, 0, "the install's tags");
    assert_eq!(letters(gone).await, 0, "the install's dead letters");
    assert_eq!(
        stored("events", kept, i64::MAX).await.0,
        5,
        "the other install's events"
    );
    assert_eq!(
        stored("activity_tags", kept, i64::MAX).await.0,
        kept_tags,
        "the other install's tags"
    );
    assert_eq!(letters(kept).await, 1, "the other install's dead letter");

    let (ok, text) = sink_cli(&["forget", "status", &gone.to_string(), "--config", sink_config]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&request_id)
            && text.contains("done")
            && text.contains("events 5 rows")
            && text.contains("dead_letters 1 rows"),
        "{text}"
    );
    let (ok, text) = sink_cli(&["forget", "--config", sink_config, "--install-id", "nope", "--app", "x"]);
    assert!(!ok && text.contains("is not an install id"), "{text}");

    // A late batch captured before the request is acknowledged (the phone
    // may delete it) and never stored, nor its dead letter; what the install
    // sends after the request is kept, as is the other install's.
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
            if g.0 >= 4 && k.0 == 8 && letters(kept).await == 2 {
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
    assert_eq!(
        letters(gone).await,
        0,
        "a late batch's dead letter of a forgotten install"
    );

    // Every service restarted; the sink in a new consumer group reads every
    // topic from the beginning. The ledger comes back from its topic: the
    // erased rows are dropped again, not stored.
    platform(&["down"]);
    let group = format!("sink-replay-{}", Uuid::new_v4().simple());
    platform_with(&["up"], &[("SINK_GROUP_PREFIX", &group)]);
    let (ok, text) = sink_cli(&["forget", "status", &request_id, "--config", sink_config]);
    assert!(ok && text.contains("done"), "after the restart: {text}");
    // One of the install's old batches, sent again (the gateway's memory of
    // batches restarted with it: it is produced again).
    assert_eq!(post_batch(&client, &first_batch).await, (200, 5));
    until(
        "the router dropped the old batch, the replaying sink the erased events",
        Duration::from_secs(300),
        || async {
            let router = counter(&client, ROUTER, "router_forgotten_dropped_total", "").await;
            // 5 events of the first batch and 5 of the late one.
            let sink = counter(&client, SINK, "sink_forgotten_dropped_total", "table=\"events\"").await;
            if router >= 5.0 && sink >= 10.0 {
                Ok(())
            } else {
                Err(format!(
                    "router_forgotten_dropped_total {router}, sink_forgotten_dropped_total{{table=\"events\"}} {sink}"
                ))
            }
        },
    )
    .await;
    // The resent batch went through the events topic after the replay's
    // start: the replaying sink has read it once it has 15 drops (5 + 5 + 5).
    until("the sink read the resent batch", Duration::from_secs(120), || async {
        let sink = counter(&client, SINK, "sink_forgotten_dropped_total", "table=\"events\"").await;
        if sink >= 15.0 {
            Ok(())
        } else {
            Err(format!("sink_forgotten_dropped_total{{table=\"events\"}} {sink}"))
        }
    })
    .await;
    assert_eq!(
        stored("events", gone, asked_at).await.1,
        0,
        "a replay or a resent batch stored erased events again"
    );
    assert_eq!(
        stored("activity_tags", gone, asked_at).await.1,
        0,
        "a replay stored erased tags again"
    );
    assert_eq!(letters(gone).await, 0, "a replay stored an erased letter again");

    // A full retag of history: the install's windows up to the request are
    // dropped, not tagged.
    let inserted = counter(&client, SINK, "sink_rows_inserted_total", "table=\"activity_tags\"").await;
    let replay_group = format!("forget-replay-{}", Uuid::new_v4().simple());
    let enrich_config = dir.join("enrich.toml");
    let (ok, text) = cli(
        "enrich-activity",
        &[
            "replay",
            "--config",
            enrich_config.to_str().unwrap(),
            "--from",
            "earliest",
            "--group-id",
            &replay_group,
        ],
    );
    assert!(ok, "{text}");
    assert!(text.contains("of forgotten installs dropped"), "{text}");
    let tagged: f64 = text
        .split("tagged ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no `tagged N windows` in {text}"));
    assert!(tagged > 0.0, "{text}");
    until(
        "the sink stored the replay's tags",
        Duration::from_secs(180),
        || async {
            let now = counter(&client, SINK, "sink_rows_inserted_total", "table=\"activity_tags\"").await;
            if now - inserted >= tagged {
                Ok(())
            } else {
                Err(format!("{} of {tagged} tags stored", now - inserted))
            }
        },
    )
    .await;
    assert_eq!(
        stored("activity_tags", gone, asked_at).await.1,
        0,
        "a retag stored erased tags again"
    );

    // The letter comes back from the backup, its cause fixed; a redrive of
    // every letter sends nothing of the install. The other install's letters
    // are still invalid.
    let columns: Vec<String> = clickhouse_reader()
        .query("SELECT name FROM system.columns WHERE database = 'context' AND table = 'dead_letters'")
        .fetch_all()
        .await
        .unwrap();
    let picked: Vec<String> = columns
        .iter()
        .map(|c| {
            if c == "payload" {
                "replaceOne(payload, '\"battery_level\":1.5', '\"battery_level\":0.5')".to_owned()
            } else {
                format!("`{c}`")
            }
        })
        .collect();
    ch.query(&format!(
        "INSERT INTO context.dead_letters ({}) SELECT {} FROM context.{backup}",
        columns.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "),
        picked.join(", ")
    ))
    .execute()
    .await
    .unwrap();
    ch.query(&format!("DROP TABLE context.{backup}"))
        .execute()
        .await
        .unwrap();
    assert_eq!(letters(gone).await, 1, "the restored letter");
    let gateway_config = dir.join("gateway.toml");
    let (ok, text) = sink_cli(&[
        "dead-letters",
        "redrive",
        "--config",
        sink_config,
        "--gateway-config",
        gateway_config.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("forgotten: 1") && text.contains("sent: none"), "{text}");
    // Asking again erases what the backup brought back.
    let (ok, text) = sink_cli(&[
        "forget",
        "--config",
        sink_config,
        "--app",
        "dev-app",
        "--install-id",
        &gone.to_string(),
        "--wait",
    ]);
    assert!(ok, "{text}");
    assert_eq!(letters(gone).await, 0, "the restored letter, asked again");
    assert_eq!(stored("events", gone, asked_at).await.1, 0, "erased events");
    assert_eq!(letters(kept).await, 2, "the other install's letters");

    std::fs::write(dir.join("keys.toml"), keys_before).unwrap();
    platform(&["down"]);
}

//! `scripts/platform`: the whole platform on one command. `up` returns with
//! every service ready, a development key that the gateway takes, and is safe
//! to run twice; `down` stops the services and leaves the stack it did not
//! start. Debug builds (`PLATFORM_PROFILE=debug`): the tests built them.

use std::process::Command;
use std::time::Duration;

use context_integration::{platform, repo_root, stack};
use context_schemas::sample::{self, SampleOptions};

fn pids() -> Vec<String> {
    ["gateway", "router", "enrich", "sink"]
        .iter()
        .map(|s| std::fs::read_to_string(repo_root().join(format!(".stack/platform/{s}.pid"))).unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn platform_up_runs_everything_ready_twice_and_down_stops_only_the_services() {
    // The tests need the stack: `scripts/stack up` makes it theirs, so that
    // `down` below leaves it running whoever started it (scripts/demo's
    // `platform up` may have).
    stack(&["up"]).unwrap();
    let up = platform(&["up"]);
    let status = platform(&["status"]);
    for s in ["gateway", "router", "enrich", "sink"] {
        let line = status.lines().find(|l| l.starts_with(s)).unwrap_or_default();
        assert!(line.contains("ready"), "{s} is not ready:\n{status}\n{up}");
    }
    let before = pids();

    // The development key works: a session's batch is acknowledged.
    let key = std::fs::read_to_string(repo_root().join(".stack/platform/api-key")).unwrap();
    let now = context_runtime::clock::now_micros();
    let events = ingest_gateway::sdk::as_session(
        (0..5)
            .map(|i| {
                sample::event(
                    95_000 + i,
                    &SampleOptions {
                        timestamp: now,
                        ..SampleOptions::default()
                    },
                )
            })
            .collect(),
        now,
    );
    let response = reqwest::Client::new()
        .post("http://127.0.0.1:8080/v1/batch")
        .header("Authorization", format!("Bearer {}", key.trim()))
        .header("Content-Type", "application/json")
        .header("X-Sent-At", ingest_gateway::sdk::rfc3339(now))
        .body(ingest_gateway::sdk::batch_json(&events, now).to_string())
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{:?}", response.text().await);

    // Twice: nothing restarted.
    platform(&["up"]);
    assert_eq!(pids(), before, "a second `up` restarted a service");

    let logs = platform(&["logs"]);
    assert!(logs.contains("gateway.log"), "{logs}");

    // --lan: the gateway again, on all interfaces over HTTPS with a
    // self-signed certificate whose fingerprint is printed.
    let lan = platform(&["up", "--lan"]);
    assert!(
        lan.contains("sha256 Fingerprint=") || lan.contains("SHA256 Fingerprint="),
        "{lan}"
    );
    let https = Command::new("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "https://127.0.0.1:8443/readyz",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&https.stdout), "200", "{lan}");
    platform(&["up"]);

    let down = platform(&["down"]);
    let status = platform(&["status"]);
    for s in ["gateway", "router", "enrich", "sink"] {
        let line = status.lines().find(|l| l.starts_with(s)).unwrap_or_default();
        assert!(line.contains("down"), "{s} still runs after down:\n{status}\n{down}");
    }
    // The stack was up before (the tests need it): it keeps running.
    assert!(
        status.lines().any(|l| l.starts_with("broker") && l.contains(" up ")),
        "{status}"
    );
}

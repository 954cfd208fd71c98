//! The fault suite: the whole platform (`scripts/platform`, debug builds)
//! under a simulated fleet's load while its parts fail, then
//! `devicesim verify`: every acknowledged event stored exactly once, every
//! motion event tagged, every device queue drained, with no manual step.
//!
//! The short suite (always): `kill -9` of the gateway, the sink, the router
//! and the tagger, each restarted by `scripts/platform up`; the gateway's
//! keys file rewritten under load the way `cp` does it (emptied, half
//! written, then whole with a second key: no answer is a 401); a registry
//! restart; `kill -9` of the fleet itself, whose queued batches a second run
//! sends. Then `sink-clickhouse reconcile` finds no gap in the ledger of
//! the events and activity topics. `CONTEXT_FAULTS=full` (`scripts/test --full`) adds the broker
//! stopped 20 s, ClickHouse stopped 30 s with a second sink replica joining
//! during the outage (a consumer-group change while the sink is paused) and
//! leaving after it, and a second router replica joining and leaving.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Instant;

use common::{finish, fleet, interrupt, kill, pause, pid, still_running, verify};
use context_integration::{platform, repo_root, stack};

/// A second replica of `service` (sink or router) with the platform's
/// config, its own admin port (and transactional id).
fn replica(service: &str) -> Child {
    let dir = repo_root().join(".stack/platform");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_devicesim")).with_file_name(match service {
        "sink" => "sink-clickhouse",
        _ => "stream-router",
    });
    let mut cmd = Command::new(bin);
    cmd.arg("run").arg("--config").arg(dir.join(format!("{service}.toml")));
    match service {
        "sink" => cmd.env("SINK_ADMIN_LISTEN", "127.0.0.1:9112"),
        _ => cmd
            .env("ROUTER_ADMIN_LISTEN", "127.0.0.1:9111")
            .env("ROUTER_TRANSACTIONAL_ID", "stream-router-platform-2"),
    };
    let log = std::fs::File::create(dir.join(format!("{service}-2.log"))).expect("replica log");
    cmd.stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting a replica")
}

#[test]
fn the_fleet_loses_nothing_while_the_platform_fails_around_it() {
    let full = std::env::var("CONTEXT_FAULTS").is_ok_and(|v| v == "full");
    platform(&["up"]);
    let state = std::env::temp_dir().join(format!("devicesim-faults-{}", uuid::Uuid::new_v4().simple()));
    let started = Instant::now();

    // 1. Each service killed -9 under load and brought back by `up`; the
    // fleet runs until every fault is over.
    let mut run = fleet(&state, &["--sessions", "100000000", "--duration", "3600"]);
    pause(4);
    for service in ["gateway", "sink", "router", "enrich"] {
        still_running(&mut run, &format!("kill -9 {service}"));
        eprintln!("[faults] kill -9 {service}");
        kill("-9", &pid(service));
        pause(2);
        platform(&["up"]);
        pause(3);
    }
    still_running(&mut run, "the keys file rewrite");
    eprintln!("[faults] keys.toml emptied, half written, then whole with a second key");
    let keys = repo_root().join(".stack/platform/keys.toml");
    let original = std::fs::read_to_string(&keys).expect("the platform's keys file");
    std::fs::write(&keys, "").unwrap();
    pause(2);
    std::fs::write(&keys, &original[..original.len() / 2]).unwrap();
    pause(2);
    let second = {
        use ingest_gateway::auth::{hash_key, key_from_random};
        let mut random = [0u8; 32];
        random[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        random[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        format!(
            "\n[[keys]]\napp_id = \"faults-second-app\"\nhash = \"{}\"\n",
            hash_key(&key_from_random(random))
        )
    };
    std::fs::write(&keys, format!("{original}{second}")).unwrap();
    pause(3);
    std::fs::write(&keys, &original).unwrap();
    still_running(&mut run, "the registry restart");
    eprintln!("[faults] registry restart");
    stack(&["down", "registry"]).unwrap();
    pause(2);
    stack(&["up", "registry"]).unwrap();
    if full {
        still_running(&mut run, "the broker outage");
        eprintln!("[faults] broker stopped 20 s");
        stack(&["down", "broker"]).unwrap();
        pause(20);
        stack(&["up", "broker"]).unwrap();
        pause(5);
        eprintln!("[faults] ClickHouse stopped 30 s; a second sink joins during the outage");
        stack(&["down", "clickhouse"]).unwrap();
        pause(10);
        let sink = replica("sink");
        pause(20);
        stack(&["up", "clickhouse"]).unwrap();
        pause(10);
        eprintln!("[faults] the second sink leaves; a second router replica joins, then leaves");
        let router = replica("router");
        pause(20);
        for mut r in [sink, router] {
            kill("-TERM", &r.id().to_string());
            let status = r.wait().unwrap();
            assert!(status.success(), "a replica did not stop cleanly: {status}");
        }
    }
    pause(3);
    still_running(&mut run, "the end of the faults");
    let report = interrupt(run);
    eprintln!("{report}");
    // The keys file was never swapped for an empty or broken one: no app
    // was told its key is wrong (a 401 the phone never retries).
    let answers = report.split("answers by status ").nth(1).unwrap_or_default();
    assert!(
        !answers.contains("401:"),
        "a 401 under the keys-file rewrite:\n{report}"
    );
    // The gateway's kill -9 cost answers: the fleet retried.
    let retries: u64 = report
        .split("retries ")
        .nth(1)
        .and_then(|r| r.split(',').next()?.trim().parse().ok())
        .unwrap_or(0);
    assert!(retries > 0, "no retry under the faults:\n{report}");
    let drained = finish(fleet(&state, &["--sessions", "0"]), "draining after the faults");
    assert!(drained.contains("still queued: 0"), "{drained}");

    // 2. The fleet itself killed -9 while the gateway is away and batches
    // pile up in its queues: a second run sends them once it is back.
    kill("-9", &pid("gateway"));
    let mut run = fleet(&state, &["--sessions", "100000", "--rate", "400", "--duration", "8"]);
    pause(4);
    kill("-9", &run.id().to_string());
    let _ = run.wait();
    platform(&["up"]);
    let drained = finish(fleet(&state, &["--sessions", "0"]), "draining after the fleet's crash");
    let sent: u64 = drained
        .lines()
        .find_map(|l| l.strip_prefix("acknowledged ")?.split(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(sent > 0, "nothing was queued when the fleet was killed:\n{drained}");
    assert!(drained.contains("still queued: 0"), "{drained}");

    verify(&state);
    // Every offset the sink committed through all of it is in its ledger.
    let sink_bin = PathBuf::from(env!("CARGO_BIN_EXE_devicesim")).with_file_name("sink-clickhouse");
    for topic in ["context.events.v1", "context.activity.v1"] {
        let out = Command::new(&sink_bin)
            .args(["reconcile", "--config"])
            .arg(repo_root().join(".stack/platform/sink.toml"))
            .args(["--topic", topic])
            .output()
            .expect("sink-clickhouse reconcile");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{text}");
        assert!(
            out.status.success() && text.contains("no gap"),
            "reconcile found a gap after the faults:\n{text}"
        );
    }
    eprintln!("[faults] done in {:.0} s", started.elapsed().as_secs_f64());
    platform(&["down"]);
    let _ = std::fs::remove_dir_all(&state);
}

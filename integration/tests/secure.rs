//! The platform on the secured stack (`scripts/stack up --secure`): the
//! broker speaks SASL_SSL with SCRAM-SHA-512 only, the registry wants
//! credentials, ClickHouse a password over HTTPS. Then:
//! - a plaintext client, and a TLS client without SASL, get nothing from
//!   the broker;
//! - a service with a wrong Kafka password, or with a CA that did not sign
//!   the broker, stops within a bounded time naming the setting;
//! - the whole platform (`scripts/platform up --secure`) takes a simulated
//!   fleet, and `devicesim verify` finds every acknowledged event stored
//!   once and every motion event tagged.
//!
//! The stack is switched back to plain at the end (also when the test
//! fails), for the tests that follow.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use context_integration::{platform, repo_root, stack, unique};
use context_runtime::kafka::{KafkaSettings, SecurityProtocol};

/// `.stack/secure/env` as pairs.
fn secure_env() -> HashMap<String, String> {
    let text = std::fs::read_to_string(repo_root().join(".stack/secure/env")).expect(".stack/secure/env");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Back to the plain stack whatever happens.
struct Plain;

impl Drop for Plain {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/platform"))
            .arg("down")
            .env("PLATFORM_PROFILE", "debug")
            .env("PLATFORM_NO_BUILD", "1")
            .status();
        if let Err(e) = stack(&["up"]) {
            eprintln!("switching the stack back to plain failed: {e}");
        }
    }
}

fn bin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_devicesim")).with_file_name(name)
}

/// Runs stream-router with the secure variables plus `overrides` and
/// returns how long it took to stop, and what it said. It must stop by
/// itself: killed after `limit`.
fn router_with(env: &HashMap<String, String>, overrides: &[(&str, String)], limit: Duration) -> (Duration, String) {
    let mut cmd = Command::new(bin("stream-router"));
    cmd.arg("run")
        .env("ROUTER_RULES_FILE", repo_root().join("stream-router/rules.toml"))
        .env("ROUTER_ADMIN_LISTEN", "127.0.0.1:0")
        .env("ROUTER_GROUP_ID", unique("it_secure_router"))
        .env("ROUTER_TRANSACTIONAL_ID", unique("it_secure_router"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env.iter().filter(|(k, _)| k.starts_with("ROUTER_")) {
        cmd.env(k, v);
    }
    for (k, v) in overrides {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("starting stream-router");
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "stream-router ran on bad credentials:\n{text}");
    (started.elapsed(), text)
}

/// A CA (and nothing it signed) made with openssl.
fn other_ca(dir: &Path) -> PathBuf {
    let (key, cert) = (dir.join("other-ca.key"), dir.join("other-ca.pem"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=not the stack's CA",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl could not make a CA");
    cert
}

#[test]
fn the_platform_runs_on_sasl_ssl_registry_auth_and_a_clickhouse_password() {
    let _back = Plain;
    stack(&["up", "--secure"]).expect("the secured stack");
    let env = secure_env();
    let ca = PathBuf::from(&env["KAFKA_SSL_CA_FILE"]);

    // 1. The listener refuses a plaintext client and a TLS client without SASL.
    let plaintext = context_runtime::kafka::verify(&KafkaSettings::plain("127.0.0.1:9092"), Duration::from_secs(5));
    assert!(plaintext.is_err(), "a plaintext client reached the secured broker");
    let tls_only = KafkaSettings {
        security_protocol: SecurityProtocol::Ssl,
        ssl_ca_file: Some(ca.clone()),
        ..KafkaSettings::plain("127.0.0.1:9092")
    };
    assert!(
        context_runtime::kafka::verify(&tls_only, Duration::from_secs(5)).is_err(),
        "a TLS client without SASL reached the secured broker"
    );
    // ... and a plaintext producer gets nothing acknowledged.
    let forged = tokio::runtime::Runtime::new().unwrap().block_on(async {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let p: FutureProducer = KafkaSettings::plain("127.0.0.1:9092")
            .client()
            .set("message.timeout.ms", "3000")
            .set("log_level", "0")
            .create()
            .unwrap();
        p.send(
            FutureRecord::to("context.events.v1").key("k").payload("forged"),
            Duration::from_secs(1),
        )
        .await
    });
    assert!(forged.is_err(), "a plaintext producer wrote to the secured broker");
    // The right credentials work.
    let good = KafkaSettings {
        security_protocol: SecurityProtocol::SaslSsl,
        sasl_mechanism: Some(context_runtime::kafka::SaslMechanism::ScramSha512),
        sasl_username: Some(env["ROUTER_KAFKA_SASL_USERNAME"].clone()),
        sasl_password: context_runtime::config::Secret(env["ROUTER_KAFKA_SASL_PASSWORD"].clone()),
        ssl_ca_file: Some(ca.clone()),
        ..KafkaSettings::plain("127.0.0.1:9092")
    };
    context_runtime::kafka::verify(&good, Duration::from_secs(15)).expect("the services' credentials");

    // 2. A wrong password or a foreign CA stops a service, naming the setting.
    let limit = Duration::from_secs(60);
    let (took, text) = router_with(&env, &[("ROUTER_KAFKA_SASL_PASSWORD", "wrong".into())], limit);
    assert!(took < limit, "stream-router kept trying a wrong password:\n{text}");
    assert!(text.contains("kafka.sasl_password"), "{text}");
    let dir = std::env::temp_dir().join(unique("secure"));
    std::fs::create_dir_all(&dir).unwrap();
    let foreign = other_ca(&dir);
    let (took, text) = router_with(
        &env,
        &[("ROUTER_KAFKA_SSL_CA_FILE", foreign.display().to_string())],
        limit,
    );
    assert!(
        took < limit,
        "stream-router kept trying a broker its CA does not sign:\n{text}"
    );
    assert!(text.contains("kafka.ssl_ca_file"), "{text}");

    // 3. The whole platform under a fleet, verified from ClickHouse over HTTPS.
    platform(&["up", "--secure"]);
    let status = platform(&["status"]);
    assert!(status.contains("secure"), "{status}");
    let key = std::fs::read_to_string(repo_root().join(".stack/platform/api-key")).unwrap();
    let state = dir.join("fleet");
    let tools: Vec<(&String, &String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("KAFKA_") || k.starts_with("CLICKHOUSE_") || k.starts_with("REGISTRY_"))
        .collect();
    let run = Command::new(bin("devicesim"))
        .current_dir(repo_root())
        .args(["run", "--key", key.trim(), "--state"])
        .arg(&state)
        .args([
            "--devices",
            "3",
            "--sessions",
            "4",
            "--events",
            "5-15",
            "--max-seconds",
            "300",
        ])
        .envs(tools.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "devicesim run:\n{text}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let verify = Command::new(bin("devicesim"))
        .current_dir(repo_root())
        .args(["verify", "--wait", "180", "--state"])
        .arg(&state)
        .envs(tools.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    eprintln!("{text}");
    assert!(verify.status.success() && text.contains("verify: OK"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

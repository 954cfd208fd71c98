//! Helpers shared by the integration tests: connections to the real broker and
//! ClickHouse that `scripts/stack up` starts, and per-test names so tests never
//! see each other's topics, groups or tables.
//!
//! Endpoints come from `KAFKA_BOOTSTRAP` (default `127.0.0.1:9092`) and
//! `CLICKHOUSE_URL` (default `http://127.0.0.1:8123`); a secured stack's
//! credentials from the tools' variables of `.stack/secure/env`
//! (`KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_*`, `KAFKA_SSL_CA_FILE`,
//! `CLICKHOUSE_USER`, `CLICKHOUSE_PASSWORD`, `CLICKHOUSE_CA_FILE`).

pub mod fleet;
pub mod measure;
pub mod proxy;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

/// Kafka bootstrap servers of the local stack.
pub fn kafka_bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// ClickHouse HTTP endpoint of the local stack.
pub fn clickhouse_url() -> String {
    std::env::var("CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

/// A name no other test run uses: `<prefix>_<12 hex digits>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `scripts/stack <args>` and fails with its output when it fails.
pub fn stack(args: &[&str]) -> Result<()> {
    let out = Command::new(repo_root().join("scripts/stack"))
        .args(args)
        .output()
        .context("running scripts/stack")?;
    if !out.status.success() {
        bail!(
            "scripts/stack {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs `scripts/platform <args>` on the debug builds the tests made
/// (`PLATFORM_PROFILE=debug PLATFORM_NO_BUILD=1`) and returns its output;
/// panics with that output when it fails.
pub fn platform(args: &[&str]) -> String {
    platform_with(args, &[])
}

/// [`platform`] with `env` set for the script and so for the services it
/// starts (`INGEST_BACKPRESSURE_MAX_LAG=10s`: each service's variables
/// override its configuration file).
pub fn platform_with(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(repo_root().join("scripts/platform"));
    cmd.envs(env.iter().copied());
    // The binaries this test run built: a test binary lives in
    // <target>/debug/deps, whatever CARGO_TARGET_DIR says.
    if let Some(target) = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
    {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let out = cmd
        .args(args)
        .env("PLATFORM_PROFILE", "debug")
        .env("PLATFORM_NO_BUILD", "1")
        .output()
        .expect("running scripts/platform");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "scripts/platform {args:?} failed:\n{text}");
    text
}

/// The tools' Kafka settings (`KAFKA_*` variables; plaintext to
/// [`kafka_bootstrap`] when none is set).
pub fn kafka_settings() -> context_runtime::kafka::KafkaSettings {
    context_runtime::kafka::KafkaSettings::from_tool_env().unwrap_or_else(|e| panic!("the KAFKA_* variables: {e}"))
}

/// A client configuration for the stack's broker, with its security.
pub fn base_config() -> ClientConfig {
    kafka_settings().client()
}

/// Creates a topic and waits until its metadata shows every partition.
pub async fn create_topic(name: &str, partitions: i32) -> Result<()> {
    create_topic_with(name, partitions, &[]).await
}

/// Creates a topic with topic-level configs (`cleanup.policy`, `segment.ms`…)
/// and waits until its metadata shows every partition.
pub async fn create_topic_with(name: &str, partitions: i32, configs: &[(&str, &str)]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config().create().context("admin client")?;
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (key, value) in configs {
        topic = topic.set(key, value);
    }
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .context("CreateTopics")?;
    for r in results {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    let consumer: rdkafka::consumer::BaseConsumer = base_config().create()?;
    for _ in 0..50 {
        if let Ok(md) = consumer.fetch_metadata(Some(name), Duration::from_secs(2)) {
            if md
                .topics()
                .iter()
                .any(|t| t.name() == name && t.partitions().len() == partitions as usize)
            {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("topic {name} did not appear in metadata")
}

/// A producer that waits for every in-sync replica (`acks=all`).
pub fn producer() -> Result<FutureProducer> {
    Ok(base_config()
        .set("acks", "all")
        .set("message.timeout.ms", "15000")
        .set("compression.type", "zstd")
        .create()?)
}

/// A consumer in `group` that starts at the earliest offset and commits only
/// when told to. Timeouts follow the broker's group-join behaviour here.
pub fn consumer(group: &str) -> Result<StreamConsumer> {
    Ok(base_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("max.poll.interval.ms", "10000")
        .create()?)
}

/// Receives `n` messages (as owned key/value pairs) within `timeout`.
pub async fn consume_n(
    consumer: &StreamConsumer,
    n: usize,
    timeout: Duration,
) -> Result<Vec<(Option<Vec<u8>>, Vec<u8>)>> {
    let mut out = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        let msg: BorrowedMessage<'_> = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .with_context(|| format!("received {} of {n} messages before the timeout", out.len()))??;
        use rdkafka::Message;
        out.push((
            msg.key().map(<[u8]>::to_vec),
            msg.payload().unwrap_or_default().to_vec(),
        ));
    }
    Ok(out)
}

/// A ClickHouse client for inserts: RowBinary with LZ4-compressed bodies.
/// Validation is off so that the RowBinary path works against ClickHouse 18.16
/// as well as current releases.
pub fn clickhouse_writer() -> clickhouse::Client {
    clickhouse_settings().clickhouse(true)
}

/// The stack's ClickHouse as the sink would reach it: `CLICKHOUSE_URL`,
/// `CLICKHOUSE_USER` (default `default`), `CLICKHOUSE_PASSWORD`,
/// `CLICKHOUSE_CA_FILE`.
pub fn clickhouse_settings() -> sink_clickhouse::config::Config {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    sink_clickhouse::config::Config {
        clickhouse_url: clickhouse_url(),
        clickhouse_user: var("CLICKHOUSE_USER").unwrap_or_else(|| "default".into()),
        clickhouse_password: context_runtime::config::Secret(var("CLICKHOUSE_PASSWORD").unwrap_or_default()),
        clickhouse_ca_file: var("CLICKHOUSE_CA_FILE").map(PathBuf::from),
        ..Default::default()
    }
}

/// An HTTP request to the stack's ClickHouse (queries in SQL), with its
/// credentials and CA.
pub fn clickhouse_http(client: &reqwest::Client) -> reqwest::RequestBuilder {
    let s = clickhouse_settings();
    client
        .post(&s.clickhouse_url)
        .basic_auth(&s.clickhouse_user, Some(s.clickhouse_password.expose()))
}

/// A reqwest client that trusts `CLICKHOUSE_CA_FILE` when it is set.
pub fn clickhouse_http_client(timeout: Duration) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().timeout(timeout);
    if let Some(ca) = clickhouse_settings().clickhouse_ca_file {
        let pem = std::fs::read(&ca).with_context(|| format!("reading CLICKHOUSE_CA_FILE {}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
            b = b.add_root_certificate(cert);
        }
    }
    Ok(b.build()?)
}

/// A ClickHouse client for queries. Responses are not compressed: against
/// ClickHouse 18.16 the crate's LZ4 response path yields no rows at all.
pub fn clickhouse_reader() -> clickhouse::Client {
    clickhouse_settings().clickhouse(false)
}

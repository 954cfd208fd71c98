//! A database, topics and a registered schema per test, against the stack.

#![allow(dead_code)]

use context_runtime::config::ServiceConfig;
use std::time::Duration;

use context_integration::{clickhouse_reader, create_topic, producer, unique};
use context_schemas::sample::{self, SampleOptions};
use context_schemas::{AvroRecord, ContextEvent};
use rdkafka::producer::FutureRecord;
use schema_registry::RegistryClient;
use sink_clickhouse::Config;

pub fn registry_url() -> String {
    std::env::var("SCHEMA_REGISTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into())
}

pub struct Setup {
    pub database: String,
    pub events_topic: String,
    pub activity_topic: String,
    pub deadletter_topic: String,
    pub group_prefix: String,
    pub event_schema_id: u32,
    pub registry: RegistryClient,
}

pub async fn setup() -> Setup {
    let s = Setup {
        database: unique("ctx_it"),
        events_topic: unique("it_sink_events"),
        activity_topic: unique("it_sink_activity"),
        deadletter_topic: unique("it_sink_dead"),
        group_prefix: unique("it_sink"),
        event_schema_id: 0,
        registry: RegistryClient::new(&registry_url()).unwrap(),
    };
    create_topic(&s.events_topic, 2).await.unwrap();
    create_topic(&s.activity_topic, 1).await.unwrap();
    create_topic(&s.deadletter_topic, 1).await.unwrap();
    let id = s
        .registry
        .register(&format!("{}-value", s.events_topic), ContextEvent::AVSC)
        .await
        .unwrap();
    let settings = s.config().checked().unwrap();
    sink_clickhouse::migrate::migrate(&settings.clickhouse(false), &s.database)
        .await
        .unwrap();
    Setup {
        event_schema_id: id,
        ..s
    }
}

impl Setup {
    pub fn config(&self) -> Config {
        let mut c = Config {
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            kafka: context_integration::kafka_settings(),
            registry: context_runtime::registry::RegistrySettings::open(registry_url()),
            database: self.database.clone(),
            events_topic: self.events_topic.clone(),
            activity_topic: self.activity_topic.clone(),
            deadletter_topic: self.deadletter_topic.clone(),
            group_prefix: self.group_prefix.clone(),
            session_timeout: Duration::from_secs(6),
            max_poll_interval: Duration::from_secs(10),
            max_backoff: Duration::from_secs(2),
            insert_timeout: Duration::from_secs(9),
            ..Config::default()
        };
        // Records naming an id the shared registry does not know are given
        // up after 5 s here, not 10 minutes.
        c.registry.registry_unknown_id_patience = Duration::from_secs(5);
        c.batch.max_rows = 200;
        c.batch.max_age = Duration::from_millis(500);
        c
    }

    /// Produces `n` events (seeded) and returns them.
    pub async fn produce_events(&self, seed: u64, n: usize) -> Vec<ContextEvent> {
        let p = producer().unwrap();
        let mut events = Vec::with_capacity(n);
        let mut pending = Vec::new();
        for i in 0..n as u64 {
            let e = sample::event(seed * 100_000 + i, &SampleOptions::default());
            let payload = e.to_wire(self.event_schema_id).unwrap();
            let key = e.install_id.to_string();
            pending.push(
                p.send_result(FutureRecord::to(&self.events_topic).key(&key).payload(&payload))
                    .map_err(|(e, _)| e)
                    .unwrap(),
            );
            events.push(e);
        }
        for f in pending {
            f.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
        events
    }

    pub async fn produce_raw(&self, topic: &str, payload: &[u8], headers: &[(&str, &str)]) {
        let p = producer().unwrap();
        let mut h = rdkafka::message::OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(rdkafka::message::Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        p.send(
            FutureRecord::to(topic).key("k").payload(payload).headers(h),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }

    pub async fn distinct_events(&self) -> u64 {
        clickhouse_reader()
            .query(&format!("SELECT uniqExact(event_id) FROM `{}`.events", self.database))
            .fetch_one::<u64>()
            .await
            .unwrap_or(0)
    }

    /// Waits until `distinct_events() >= n`, up to `timeout`; returns the last count.
    pub async fn wait_for_events(&self, n: u64, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.distinct_events().await;
            if got >= n || tokio::time::Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Writes this setup's configuration as a TOML file for the binary.
    pub fn write_config(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let c = self.config();
        let path = dir.join("sink.toml");
        std::fs::write(
            &path,
            format!(
                "admin_listen = \"127.0.0.1:0\"\nkafka_bootstrap = \"{}\"\nregistry_url = \"{}\"\ndatabase = \"{}\"\n\
                 events_topic = \"{}\"\nactivity_topic = \"{}\"\ndeadletter_topic = \"{}\"\ngroup_prefix = \"{}\"\n\
                 session_timeout = \"6s\"\nmax_poll_interval = \"10s\"\nmax_backoff = \"2s\"\ninsert_timeout = \"9s\"\n\
                 [batch]\nmax_rows = 100\nmax_age = \"300ms\"\n",
                c.kafka.bootstrap,
                c.registry.registry_url,
                c.database,
                c.events_topic,
                c.activity_topic,
                c.deadletter_topic,
                c.group_prefix
            ),
        )
        .unwrap();
        path
    }

    pub async fn drop_database(&self) {
        let _ = clickhouse_reader()
            .query(&format!("DROP DATABASE IF EXISTS `{}`", self.database))
            .execute()
            .await;
    }
}

/// Runs the `sink-clickhouse` binary with `config`, logging to `log`.
pub fn spawn_sink(config: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_sink-clickhouse"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start sink-clickhouse")
}

/// A gateway in this process writing to this setup's topics, with one API key
/// for `app` (rate limit out of the way); returns it and the key.
pub async fn start_gateway(s: &Setup, dir: &std::path::Path, app: &str) -> (ingest_gateway::Running, String) {
    start_gateway_with(s, dir, app, |_| {}).await
}

/// [`start_gateway`] with its configuration changed by `customize`.
pub async fn start_gateway_with(
    s: &Setup,
    dir: &std::path::Path,
    app: &str,
    customize: impl FnOnce(&mut ingest_gateway::Config),
) -> (ingest_gateway::Running, String) {
    use ingest_gateway::auth::{hash_key, key_from_random};
    let mut random = [0u8; 32];
    random[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    random[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let key = key_from_random(random);
    let keys = dir.join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[keys]]\napp_id = \"{app}\"\nhash = \"{}\"\nrate_limit_per_s = 100000\n",
            hash_key(&key)
        ),
    )
    .unwrap();
    let mut config = ingest_gateway::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        kafka: context_integration::kafka_settings(),
        registry: context_runtime::registry::RegistrySettings::open(registry_url()),
        events_topic: s.events_topic.clone(),
        deadletter_topic: s.deadletter_topic.clone(),
        keys_file: keys,
        ..ingest_gateway::Config::default()
    };
    customize(&mut config);
    let gateway = ingest_gateway::start(config.checked().unwrap(), None).await.unwrap();
    (gateway, key)
}

/// Microseconds since the epoch, now.
pub fn now() -> i64 {
    context_runtime::clock::now_micros()
}

//! A gateway per test, on its own topics, against the stack's broker and
//! schema registry.

#![allow(dead_code)]

use context_runtime::config::ServiceConfig;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use context_integration::{consumer, create_topic, unique};
use context_schemas::sample::{self, SampleOptions};
use context_schemas::ContextEvent;
use ingest_gateway::auth::{hash_key, key_from_random};
use ingest_gateway::{sdk, Config, Running};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use schema_registry::RegistryClient;

pub fn registry_url() -> String {
    std::env::var("SCHEMA_REGISTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into())
}

pub struct Harness {
    pub gateway: Running,
    pub base: String,
    pub events_topic: String,
    pub deadletter_topic: String,
    pub keys_file: PathBuf,
    /// Key of `app-ok` (1000 events/s), `app-off` (disabled), `app-slow` (1 event/s, burst 5).
    pub key: String,
    pub disabled_key: String,
    pub slow_key: String,
    pub http: reqwest::Client,
}

pub fn key_entry(app: &str, key: &str, enabled: bool, rate: f64, burst: f64) -> String {
    format!(
        "[[keys]]\napp_id = \"{app}\"\nhash = \"{}\"\nenabled = {enabled}\nrate_limit_per_s = {rate}\nburst = {burst}\n\n",
        hash_key(key)
    )
}

pub fn new_key(seed: u8) -> String {
    let mut bytes = [seed; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    key_from_random(bytes)
}

pub async fn start(customize: impl FnOnce(&mut Config)) -> Harness {
    start_with_metrics(customize, None).await
}

/// [`start`], the gateway serving `metrics` on `/metrics` (a recorder is
/// one per process: only a test binary of one test may install it).
pub async fn start_with_metrics(
    customize: impl FnOnce(&mut Config),
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Harness {
    let events_topic = unique("it_gw_events");
    let deadletter_topic = unique("it_gw_dead");
    create_topic(&events_topic, 2).await.unwrap();
    create_topic(&deadletter_topic, 1).await.unwrap();
    let (key, disabled_key, slow_key) = (new_key(1), new_key(2), new_key(3));
    let keys_file = std::env::temp_dir().join(format!("{}.toml", unique("keys")));
    let mut f = std::fs::File::create(&keys_file).unwrap();
    f.write_all(key_entry("app-ok", &key, true, 1000.0, 10000.0).as_bytes())
        .unwrap();
    f.write_all(key_entry("app-off", &disabled_key, false, 1000.0, 10000.0).as_bytes())
        .unwrap();
    f.write_all(key_entry("app-slow", &slow_key, true, 1.0, 5.0).as_bytes())
        .unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        kafka: context_integration::kafka_settings(),
        registry: context_runtime::registry::RegistrySettings::open(registry_url()),
        events_topic: events_topic.clone(),
        deadletter_topic: deadletter_topic.clone(),
        keys_file: keys_file.clone(),
        produce_timeout: Duration::from_secs(3),
        ..Config::default()
    };
    customize(&mut config);
    let gateway = ingest_gateway::start(config.checked().unwrap(), metrics).await.unwrap();
    Harness {
        base: format!("http://{}", gateway.addr),
        gateway,
        events_topic,
        deadletter_topic,
        keys_file,
        key,
        disabled_key,
        slow_key,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    }
}

/// One session's events, captured during the last minute.
pub fn session(seed: u64, n: usize) -> Vec<ContextEvent> {
    let now = now_micros();
    let events = (0..n as u64)
        .map(|i| {
            sample::event(
                seed * 1000 + i,
                &SampleOptions {
                    timestamp: now,
                    app_id: "app-ok".into(),
                    ..SampleOptions::default()
                },
            )
        })
        .collect();
    sdk::as_session(events, now)
}

pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

pub fn body(events: &[ContextEvent]) -> Vec<u8> {
    sdk::batch_json(events, now_micros()).to_string().into_bytes()
}

impl Harness {
    pub async fn post(
        &self,
        key: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (u16, Option<String>, serde_json::Value) {
        let mut req = self
            .http
            .post(format!("{}/v1/batch", self.base))
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(k) = key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let json = resp.json().await.unwrap_or(serde_json::Value::Null);
        (status, retry_after, json)
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }
}

/// Reads `n` records of `topic` and decodes them through the registry.
pub async fn read_events(topic: &str, n: usize) -> Vec<ContextEvent> {
    let client = RegistryClient::new(&registry_url()).unwrap();
    let raw = read_raw(topic, n).await;
    let mut out = Vec::new();
    for (_, value, _) in raw {
        out.push(client.decode::<ContextEvent>(&value).await.unwrap().1);
    }
    out
}

/// Reads `n` records: key, value and headers.
pub async fn read_raw(topic: &str, n: usize) -> Vec<(Vec<u8>, Vec<u8>, Vec<(String, String)>)> {
    let c: StreamConsumer = consumer(&unique("it_gw_reader")).unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(60), c.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} records on {topic}", out.len()))
            .unwrap();
        let headers = headers_of(&msg);
        out.push((
            msg.key().unwrap_or_default().to_vec(),
            msg.payload().unwrap_or_default().to_vec(),
            headers,
        ));
    }
    out
}

/// Counts the records of `topic` (all partitions) via watermarks.
pub fn count(topic: &str) -> i64 {
    let c: rdkafka::consumer::BaseConsumer = context_integration::base_config().create().unwrap();
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(5)).unwrap();
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (lo, hi) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(5)).unwrap();
            hi - lo
        })
        .sum()
}

/// A record's headers as (key, text) pairs.
pub fn headers_of(msg: &impl Message) -> Vec<(String, String)> {
    msg.headers()
        .map(|h| {
            h.iter()
                .map(|x| {
                    (
                        x.key.to_owned(),
                        String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

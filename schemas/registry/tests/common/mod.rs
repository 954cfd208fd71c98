//! Starting registries on their own `_schemas`-like topic for each test.

#![allow(dead_code)]

use std::time::Duration;

use context_integration::{create_topic_with, unique};
use context_runtime::config::ServiceConfig;
use schema_registry::{Config, Running};

/// A fresh state topic as the registry needs it: one partition, compacted.
pub async fn state_topic() -> String {
    let topic = unique("it_schemas");
    create_topic_with(&topic, 1, &[("cleanup.policy", "compact")])
        .await
        .expect("create the state topic");
    topic
}

/// The settings of a registry on a free port that reads `topic`.
pub fn config(topic: &str) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        kafka: context_integration::kafka_settings(),
        topic: topic.into(),
        ..Config::default()
    }
}

/// A registry on a free port, reading `topic`, ready to serve.
pub async fn start_registry(topic: &str) -> Running {
    let running = schema_registry::start(config(topic).checked().expect("valid config"), None)
        .await
        .expect("start the registry");
    assert!(
        running.wait_ready(Duration::from_secs(30)).await,
        "registry never became ready"
    );
    running
}

pub fn url(r: &Running) -> String {
    format!("http://{}", r.addr)
}

pub fn record(name: &str, fields: &str) -> String {
    format!(r#"{{"type":"record","name":"{name}","fields":[{fields}]}}"#)
}

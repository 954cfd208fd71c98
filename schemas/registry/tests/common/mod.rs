//! Starting registries on their own `_schemas`-like topic for each test.

#![allow(dead_code)]

use std::time::Duration;

use context_integration::{create_topic, kafka_bootstrap, unique};
use schema_registry::{Config, Running};

/// A fresh single-partition state topic.
pub async fn state_topic() -> String {
    let topic = unique("it_schemas");
    create_topic(&topic, 1).await.expect("create the state topic");
    topic
}

/// A registry on a free port, reading `topic`, ready to serve.
pub async fn start_registry(topic: &str) -> Running {
    let config = Config {
        listen: "127.0.0.1:0".into(),
        kafka_bootstrap: kafka_bootstrap(),
        topic: topic.into(),
        ..Config::default()
    };
    let running = schema_registry::start(config.validate().expect("valid config"), None)
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

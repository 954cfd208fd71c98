//! What the registry answers decides a record's fate only when it is about
//! the record: an id the registry does not know yet is retried (for
//! `registry_unknown_id_patience`), a registry refusing the sink's
//! credentials is waited out (nothing dead-lettered, `/readyz` 503), and a
//! record given up on is labelled with the decoder's real reason.
//!
//! Each test runs its own registry (its own state topic), so schema ids are
//! known in advance: the first schema registered gets id 1, the next id 2.

use context_runtime::config::{Secret, ServiceConfig};
mod common;

use std::time::Duration;

use common::setup;
use context_integration::{clickhouse_reader, create_topic_with, unique};
use context_runtime::registry::RegistrySettings;
use context_schemas::sample::{self, SampleOptions};
use context_schemas::{AvroRecord, ContextEvent};
use rdkafka::producer::FutureRecord;
use schema_registry::RegistryClient;

async fn registry(users_file: Option<std::path::PathBuf>) -> schema_registry::Running {
    let topic = unique("it_sink_schemas");
    create_topic_with(&topic, 1, &[("cleanup.policy", "compact")])
        .await
        .unwrap();
    let mut c = schema_registry::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        kafka: context_integration::kafka_settings(),
        topic,
        ..schema_registry::Config::default()
    };
    c.auth.users_file = users_file;
    let running = schema_registry::start(c.checked().unwrap(), None).await.unwrap();
    assert!(running.wait_ready(Duration::from_secs(30)).await);
    running
}

fn url(r: &schema_registry::Running) -> String {
    format!("http://{}", r.addr)
}

/// Produces `n` events framed with schema id `id` (whatever the registry
/// knows of it), and returns them.
async fn produce_with_id(s: &common::Setup, id: u32, seed: u64, n: u64) -> Vec<ContextEvent> {
    let p = context_integration::producer().unwrap();
    let mut sent = Vec::new();
    for i in 0..n {
        let e = sample::event(seed * 10_000 + i, &SampleOptions::default());
        let payload = e.to_wire(id).unwrap();
        p.send(
            FutureRecord::to(&s.events_topic)
                .key(&e.install_id.to_string())
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
        sent.push(e);
    }
    sent
}

async fn dead_letter_reasons(s: &common::Setup) -> Vec<(String, u64)> {
    clickhouse_reader()
        .query(&format!(
            "SELECT reason, toUInt64(uniqExact(assumeNotNull(source_offset))) FROM `{}`.dead_letters GROUP BY reason ORDER BY reason",
            s.database
        ))
        .fetch_all::<(String, u64)>()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_schema_id_is_retried_until_the_registry_knows_it_and_given_up_with_its_reason() {
    let s = setup().await;
    let reg = registry(None).await;
    let client = RegistryClient::new(&url(&reg)).unwrap();
    // Id 1: some other schema. Id 2 will be the events' schema, registered
    // only after the sink has seen records that name it.
    let other = r#"{"type":"record","name":"Other","fields":[{"name":"x","type":"int"}]}"#;
    assert_eq!(client.register(&unique("other-value"), other).await.unwrap(), 1);

    let mut config = s.config();
    config.registry = RegistrySettings::open(url(&reg));
    config.registry.registry_unknown_id_patience = Duration::from_secs(12);
    let sink = sink_clickhouse::start(config.checked().unwrap(), None).await.unwrap();
    produce_with_id(&s, 2, 70, 50).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(s.distinct_events().await, 0);
    assert_eq!(
        dead_letter_reasons(&s).await,
        vec![],
        "records naming an id the registry does not know yet were given up at once"
    );
    // The id appears (a replica caught up, a schema restored): the same
    // records decode and are stored, none dead-lettered.
    assert_eq!(
        client
            .register(&format!("{}-value", s.events_topic), ContextEvent::AVSC)
            .await
            .unwrap(),
        2
    );
    assert_eq!(s.wait_for_events(50, Duration::from_secs(60)).await, 50);

    // An id that never appears is given up after the patience, as
    // unknown_schema_id; bytes that are no Confluent record at once, as
    // not_confluent_wire_format.
    s.produce_raw(&s.events_topic, b"{\"not\": \"avro\"}", &[]).await;
    produce_with_id(&s, 999, 71, 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let expected = vec![
        ("not_confluent_wire_format".to_owned(), 1),
        ("unknown_schema_id".to_owned(), 1),
    ];
    let mut reasons = dead_letter_reasons(&s).await;
    while reasons != expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        reasons = dead_letter_reasons(&s).await;
    }
    assert_eq!(reasons, expected);
    sink.shutdown().await.unwrap();
    reg.stop().await.unwrap();
    s.drop_database().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_refusing_the_credentials_is_waited_out_nothing_dead_lettered() {
    use schema_registry::auth::hash_password;
    let s = setup().await;
    let dir = std::env::temp_dir().join(unique("it_sink_reg401"));
    std::fs::create_dir_all(&dir).unwrap();
    let users = dir.join("users.toml");
    std::fs::write(
        &users,
        format!(
            "[[users]]\nname = \"sink\"\nrole = \"read\"\npassword_hash = \"{}\"\n\
             [[users]]\nname = \"boss\"\nrole = \"admin\"\npassword_hash = \"{}\"\n",
            hash_password("right-pw").unwrap(),
            hash_password("boss-pw").unwrap()
        ),
    )
    .unwrap();
    let reg = registry(Some(users)).await;
    let admin = RegistryClient::connect(&RegistrySettings {
        registry_username: Some("boss".into()),
        registry_password: Secret("boss-pw".into()),
        ..RegistrySettings::open(url(&reg))
    })
    .unwrap();
    let id = admin
        .register(&format!("{}-value", s.events_topic), ContextEvent::AVSC)
        .await
        .unwrap();
    produce_with_id(&s, id, 72, 40).await;

    // A password rotated on one side only: every lookup answers 401.
    let mut config = s.config();
    config.registry = RegistrySettings {
        registry_username: Some("sink".into()),
        registry_password: Secret("old-pw".into()),
        ..RegistrySettings::open(url(&reg))
    };
    let wrong = sink_clickhouse::start(config.clone().checked().unwrap(), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let ready = reqwest::get(format!("http://{}/readyz", wrong.admin_addr))
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(ready, 503, "a sink whose registry refuses it must not say ready");
    assert_eq!(
        dead_letter_reasons(&s).await,
        vec![],
        "events were dead-lettered (and committed) because the registry refused the credentials"
    );
    wrong.shutdown().await.unwrap();

    // Fixed: every event is stored.
    config.registry.registry_password = Secret("right-pw".into());
    let right = sink_clickhouse::start(config.checked().unwrap(), None).await.unwrap();
    assert_eq!(s.wait_for_events(40, Duration::from_secs(60)).await, 40);
    assert_eq!(dead_letter_reasons(&s).await, vec![]);
    right.shutdown().await.unwrap();
    reg.stop().await.unwrap();
    s.drop_database().await;
}

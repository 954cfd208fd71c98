//! The registry's state lives in Kafka: a restarted registry serves the same
//! ids, and two replicas registering at the same time never hand out one id
//! for two different schemas.

mod common;

use std::collections::{HashMap, HashSet};

use common::{record, start_registry, state_topic, url};
use schema_registry::RegistryClient;

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_registry_serves_the_same_ids() {
    let topic = state_topic().await;
    let first = start_registry(&topic).await;
    let client = RegistryClient::new(&url(&first)).unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let schema = record(&format!("R{i}"), r#"{"name":"a","type":"int"}"#);
        ids.push((
            schema.clone(),
            client.register(&format!("s{i}-value"), &schema).await.unwrap(),
        ));
    }
    first.stop().await.unwrap();

    let second = start_registry(&topic).await;
    let client = RegistryClient::new(&url(&second)).unwrap();
    for (i, (schema, id)) in ids.iter().enumerate() {
        assert_eq!(client.lookup(&format!("s{i}-value"), schema).await.unwrap(), Some(*id));
        assert_eq!(client.register(&format!("s{i}-value"), schema).await.unwrap(), *id);
        let fetched = client.schema_by_id(*id).await.unwrap();
        assert_eq!(
            fetched.canonical_form(),
            context_schemas::apache_avro::Schema::parse_str(schema)
                .unwrap()
                .canonical_form()
        );
    }
    // new ids continue after the old ones
    let next = client
        .register("s9-value", &record("R9", r#"{"name":"a","type":"int"}"#))
        .await
        .unwrap();
    assert!(ids.iter().all(|(_, id)| *id < next));
    second.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_registering_concurrently_never_collide() {
    let topic = state_topic().await;
    let (a, b) = (start_registry(&topic).await, start_registry(&topic).await);
    let (ca, cb) = (
        RegistryClient::new(&url(&a)).unwrap(),
        RegistryClient::new(&url(&b)).unwrap(),
    );

    // Each replica registers 20 distinct schemas, interleaved, plus 5 shared ones.
    let work = |client: RegistryClient, tag: &'static str| async move {
        let mut out = Vec::new();
        for i in 0..20 {
            let schema = record(&format!("{tag}{i}"), r#"{"name":"a","type":"string"}"#);
            let id = client.register(&format!("{tag}{i}-value"), &schema).await.unwrap();
            out.push((schema, id));
        }
        for i in 0..5 {
            let schema = record(&format!("Shared{i}"), r#"{"name":"a","type":"string"}"#);
            let id = client.register(&format!("shared{i}-value"), &schema).await.unwrap();
            out.push((schema, id));
        }
        out
    };
    let (ra, rb) = tokio::join!(work(ca.clone(), "A"), work(cb.clone(), "B"));

    // One id per distinct schema, one schema per id.
    let mut by_schema: HashMap<String, u32> = HashMap::new();
    for (schema, id) in ra.iter().chain(rb.iter()) {
        let canonical = context_schemas::apache_avro::Schema::parse_str(schema)
            .unwrap()
            .canonical_form();
        if let Some(previous) = by_schema.insert(canonical, *id) {
            assert_eq!(previous, *id, "one schema got two ids");
        }
    }
    let distinct_ids: HashSet<u32> = by_schema.values().copied().collect();
    assert_eq!(distinct_ids.len(), by_schema.len(), "two schemas share an id");
    assert_eq!(by_schema.len(), 45);

    // Both replicas agree on every id.
    for (schema, id) in ra.iter().chain(rb.iter()) {
        for client in [&ca, &cb] {
            let fetched = client.schema_by_id(*id).await.unwrap();
            assert_eq!(
                fetched.canonical_form(),
                context_schemas::apache_avro::Schema::parse_str(schema)
                    .unwrap()
                    .canonical_form()
            );
        }
    }
    println!(
        "claims lost and retried: {} on a, {} on b",
        a.registry.claim_conflicts(),
        b.registry.claim_conflicts()
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

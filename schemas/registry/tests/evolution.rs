//! The client decodes records written with an older registered schema version
//! into the current Rust types (schema evolution at read time).

mod common;

use common::{start_registry, state_topic, url};
use context_integration::unique;
use context_schemas::apache_avro::Schema;
use context_schemas::sample::{self, SampleOptions};
use context_schemas::{catalog, wire, AvroRecord, ContextEvent};
use schema_registry::RegistryClient;

#[tokio::test(flavor = "multi_thread")]
async fn records_of_an_older_version_decode_into_the_current_type() {
    let registry = start_registry(&state_topic().await).await;
    let client = RegistryClient::new(&url(&registry)).unwrap();
    let subject = format!("{}-value", unique("it_events"));
    let old_text = sample::schema_without_signal("screen_on_seconds");
    let old_id = client.register(&subject, &old_text).await.unwrap();
    let new_id = client.register(&subject, ContextEvent::AVSC).await.unwrap();
    assert_ne!(old_id, new_id, "adding a signal is a new version");

    // An old producer wrote this event: no `screen_on_seconds` field at all.
    let mut event = sample::event(11, &SampleOptions::default());
    event.signals.clear(catalog().get("screen_on_seconds").unwrap().index);
    let value = sample::value_without_signal(&event, "screen_on_seconds");
    let old_schema = Schema::parse_str(&old_text).unwrap();
    let bytes = wire::frame(
        old_id,
        &context_schemas::codec::write_datum(&old_schema, value).unwrap(),
    );

    let (id, decoded) = client.decode::<ContextEvent>(&bytes).await.unwrap();
    assert_eq!(id, old_id);
    assert_eq!(decoded, event);
    // A current record decodes too, from the same client.
    let current = sample::event(12, &SampleOptions::default());
    let (id, decoded) = client
        .decode::<ContextEvent>(&current.to_wire(new_id).unwrap())
        .await
        .unwrap();
    assert_eq!((id, decoded), (new_id, current));
    // An unknown id (404, 40403) is retried while the patience lasts (a
    // replica catching up knows it later), then given up.
    let err = client
        .decode::<ContextEvent>(&wire::frame(999_999, b"x"))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(err.reason(), "unknown_schema_id");
    let impatient = client.clone().with_unknown_id_patience(std::time::Duration::ZERO);
    let err = impatient
        .decode::<ContextEvent>(&wire::frame(999_998, b"x"))
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(err.reason(), "unknown_schema_id");
    registry.stop().await.unwrap();
}

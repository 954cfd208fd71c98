//! `schema_registry_converter` (the registry client library the services
//! build on) against our registry and real topics: its Avro encoder's records
//! decode through our typed decoder, and its Avro decoder reads what the
//! services write, value for value.

mod common;

use std::time::Duration;

use common::{start_registry, state_topic, url};
use context_integration::{consume_n, consumer, create_topic, producer, unique};
use context_schemas::sample::{self, SampleOptions};
use context_schemas::{ActivityTag, AvroRecord, ClassProbability, ContextEvent};
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use schema_registry::RegistryClient;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::SubjectNameStrategy;

async fn send(topic: &str, payload: &[u8]) {
    producer()
        .unwrap()
        .send(
            FutureRecord::<(), [u8]>::to(topic).payload(payload),
            Duration::from_secs(15),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

async fn read_all(topic: &str, n: usize) -> Vec<Vec<u8>> {
    let c = consumer(&unique("it_conv_reader")).unwrap();
    c.subscribe(&[topic]).unwrap();
    consume_n(&c, n, Duration::from_secs(60))
        .await
        .unwrap()
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_converters_encoder_and_decoder_work_with_our_registry_and_records() {
    let registry = start_registry(&state_topic().await).await;
    let base = url(&registry);
    let ours = RegistryClient::new(&base).unwrap();
    let (events, tags) = (unique("it_conv_events"), unique("it_conv_tags"));
    create_topic(&events, 1).await.unwrap();
    create_topic(&tags, 1).await.unwrap();
    let event_id = ours
        .register(&format!("{events}-value"), ContextEvent::AVSC)
        .await
        .unwrap();

    // The converter encodes (looking the schema up by subject); the record
    // goes through Kafka; our typed decoder reads it back whole.
    let event = sample::event(11, &SampleOptions::default());
    let encoder = AvroEncoder::new(SrSettings::new(base.clone()));
    let strategy = SubjectNameStrategy::TopicNameStrategy(events.clone(), false);
    let theirs = encoder.encode_value(event.to_value(), &strategy).await.unwrap();
    assert_eq!(theirs[0], 0, "Confluent wire format");
    assert_eq!(u32::from_be_bytes(theirs[1..5].try_into().unwrap()), event_id);
    send(&events, &theirs).await;

    // Ours encodes; the converter's decoder reads the same value.
    let tag = ActivityTag {
        event_id: event.event_id,
        app_id: event.app_id.clone(),
        session_id: event.session_id,
        install_id: event.install_id,
        timestamp: event.timestamp,
        activity: "walking".into(),
        confidence: 0.875,
        probabilities: vec![
            ClassProbability {
                label: "walking".into(),
                probability: 0.875,
            },
            ClassProbability {
                label: "standing".into(),
                probability: 0.125,
            },
        ],
        model_version: "nb-test".into(),
        tagged_at: event.timestamp + 1_000_000,
        reason: None,
    };
    let tag_id = ours
        .register(&format!("{tags}-value"), ActivityTag::AVSC)
        .await
        .unwrap();
    send(&tags, &tag.to_wire(tag_id).unwrap()).await;
    send(&tags, &event.to_wire(event_id).unwrap()).await;

    let from_converter = read_all(&events, 1).await;
    let (id, decoded) = ours.decode::<ContextEvent>(&from_converter[0]).await.unwrap();
    assert_eq!(id, event_id);
    assert_eq!(decoded, event, "the converter's record decodes into the same event");

    let decoder = AvroDecoder::new(SrSettings::new(base));
    let from_us = read_all(&tags, 2).await;
    let value = decoder.decode(Some(&from_us[0])).await.unwrap().value;
    assert_eq!(value, tag.to_value(), "the converter reads our tag value for value");
    assert_eq!(ActivityTag::from_value(value).unwrap(), tag);
    let value = decoder.decode(Some(&from_us[1])).await.unwrap().value;
    assert_eq!(ContextEvent::from_value(value).unwrap(), event);

    // Errors keep their meaning through the converter: an unknown id is not
    // worth retrying, a registry that is away is.
    let unknown = ours.schema_by_id(999_999).await.unwrap_err();
    assert!(!unknown.is_retryable(), "{unknown}");
    assert_eq!(
        ours.lookup(&format!("{events}-value"), ActivityTag::AVSC)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        ours.lookup(&format!("{events}-value"), ContextEvent::AVSC)
            .await
            .unwrap(),
        Some(event_id)
    );
    registry.stop().await.unwrap();
    let away = RegistryClient::new(&url_of_nothing())
        .unwrap()
        .schema_by_id(1)
        .await
        .unwrap_err();
    assert!(away.is_retryable(), "{away}");
}

fn url_of_nothing() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

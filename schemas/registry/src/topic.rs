//! The state topic must be compacted and have one partition: compaction keeps
//! the latest record of every key forever (and nothing else), and one partition
//! gives every replica the same order of records, which decides id claims.
//! The registry checks both at start and refuses to run otherwise, or creates
//! the topic when it is missing and allowed to.

use std::time::Duration;

use context_runtime::kafka::KafkaSettings;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

/// What was wrong with the state topic, in words that name the fix.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error(
        "the state topic `{topic}` does not exist. Create it compacted with one partition:\n  \
         scripts/kafka kafka-topics --create --topic {topic} --partitions 1 --config cleanup.policy=compact\n\
         or let the registry create it: SCHEMA_REGISTRY_CREATE_TOPIC=true (create_topic = true)"
    )]
    Missing { topic: String },
    #[error(
        "the state topic `{topic}` has cleanup.policy={policy}; it must be compacted, or ids and \
         schemas disappear when retention deletes old segments. Fix it with:\n  \
         scripts/kafka kafka-configs --alter --entity-type topics --entity-name {topic} --add-config cleanup.policy=compact"
    )]
    NotCompacted { topic: String, policy: String },
    #[error(
        "the state topic `{topic}` has {partitions} partitions; it must have exactly one, so that every \
         replica reads the records in one order. Point the registry at a one-partition topic \
         (SCHEMA_REGISTRY_TOPIC) created with --partitions 1 --config cleanup.policy=compact"
    )]
    Partitions { topic: String, partitions: usize },
    #[error("checking the state topic `{topic}`: {detail}")]
    Kafka { topic: String, detail: String },
}

/// Checks `topic` (creating it first when it is missing and `create` is true).
pub async fn ensure_state_topic(
    settings: &KafkaSettings,
    topic: &str,
    create: bool,
    timeout: Duration,
) -> Result<(), TopicError> {
    let kafka = |detail: String| TopicError::Kafka {
        topic: topic.to_owned(),
        detail,
    };
    let admin: AdminClient<DefaultClientContext> = settings.client().create().map_err(|e| kafka(e.to_string()))?;
    let options = AdminOptions::new().request_timeout(Some(timeout));

    let partitions = partition_count(&admin, topic, timeout).map_err(kafka)?;
    let partitions = match partitions {
        Some(n) => n,
        None if create => {
            let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
            let results = admin
                .create_topics([&new], &options)
                .await
                .map_err(|e| kafka(e.to_string()))?;
            for result in results {
                match result {
                    Ok(_) => tracing::info!(topic, "created the state topic (compacted, one partition)"),
                    // Another replica created it first: check it like any other.
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((_, code)) => return Err(kafka(format!("creating it: {code}"))),
                }
            }
            wait_for_partitions(&admin, topic, timeout).await.map_err(kafka)?
        }
        None => {
            return Err(TopicError::Missing {
                topic: topic.to_owned(),
            })
        }
    };
    if partitions != 1 {
        return Err(TopicError::Partitions {
            topic: topic.to_owned(),
            partitions,
        });
    }

    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
        .await
        .map_err(|e| kafka(e.to_string()))?;
    let resource = described
        .into_iter()
        .next()
        .ok_or_else(|| kafka("the broker described no config".into()))?
        .map_err(|e| kafka(format!("describing its config: {e}")))?;
    let policy = resource
        .get("cleanup.policy")
        .and_then(|entry| entry.value.clone())
        .unwrap_or_else(|| "delete".into());
    if !policy.split(',').any(|p| p.trim() == "compact") {
        return Err(TopicError::NotCompacted {
            topic: topic.to_owned(),
            policy,
        });
    }
    Ok(())
}

/// The topic's partition count, or `None` when the broker does not know it.
fn partition_count(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<usize>, String> {
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("reading metadata: {e}"))?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match t.error() {
        None => Ok(Some(t.partitions().len())),
        Some(e) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition => Ok(None),
        Some(e) => Err(format!("reading metadata: {}", RDKafkaErrorCode::from(e))),
    }
}

/// A created topic takes a moment to show in metadata.
async fn wait_for_partitions(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    timeout: Duration,
) -> Result<usize, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(n) = partition_count(admin, topic, Duration::from_secs(2))? {
            if n > 0 {
                return Ok(n);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err("it was created but did not appear in metadata".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

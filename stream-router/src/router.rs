//! The routing of one batch: decode each record, ask the rules where it goes,
//! encode what each target receives, dead-letter what cannot be routed. The
//! outputs of a batch are committed with its offsets by the pipeline.

use std::sync::Arc;
use std::time::Duration;

use context_runtime::deadletter as dl;
use context_runtime::forget::Forgotten;
use context_runtime::kafka::KafkaSettings;
use context_runtime::pipeline::Output;
use context_schemas::{AvroRecord, ContextEvent, MotionWindow};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Message, OwnedMessage};
use schema_registry::RegistryClient;

use crate::rules::{Projection, Rules, Target};

/// Rules with everything their targets need: a schema id per target.
#[derive(Debug)]
pub struct Routes {
    pub rules: Rules,
    /// Schema id of each target of `rules.targets()`, same order.
    schema_ids: Vec<u32>,
}

/// Why a batch could not be routed now (it will be read again).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotNow(pub String);

/// Registers each target's schema under `<topic>-value`, and checks that
/// every target topic (and the dead-letter topic) exists, creating the
/// missing ones when allowed.
pub async fn prepare(
    rules: Rules,
    registry: &RegistryClient,
    admin: &Admin,
    deadletter_topic: &str,
) -> Result<Routes, String> {
    let mut topics: Vec<&str> = rules.targets().iter().map(|t| t.topic.as_str()).collect();
    topics.push(deadletter_topic);
    admin.ensure_topics(&topics).await?;
    let mut schema_ids = Vec::with_capacity(rules.targets().len());
    for t in rules.targets() {
        let avsc = match t.projection {
            Projection::ContextEvent => ContextEvent::AVSC,
            Projection::MotionWindow => MotionWindow::AVSC,
        };
        let id = registry
            .register(&format!("{}-value", t.topic), avsc)
            .await
            .map_err(|e| format!("registering the {} schema for `{}`: {e}", t.projection.name(), t.topic))?;
        schema_ids.push(id);
    }
    Ok(Routes { rules, schema_ids })
}

/// Topic checks and creation through Kafka's admin API.
pub struct Admin {
    client: AdminClient<DefaultClientContext>,
    create: bool,
    partitions: i32,
    timeout: Duration,
}

impl Admin {
    pub fn new(kafka: &KafkaSettings, create: bool, partitions: i32, timeout: Duration) -> Result<Self, String> {
        let client = kafka
            .client()
            .create()
            .map_err(|e| format!("creating the admin client: {e}"))?;
        Ok(Admin {
            client,
            create,
            partitions,
            timeout,
        })
    }

    fn missing(&self, topics: &[&str]) -> Result<Vec<String>, String> {
        let client = &self.client;
        let metadata = tokio::task::block_in_place(|| client.inner().fetch_metadata(None, self.timeout))
            .map_err(|e| format!("reading topic metadata: {e}"))?;
        let known: std::collections::HashSet<&str> = metadata.topics().iter().map(|t| t.name()).collect();
        let mut missing: Vec<String> = topics
            .iter()
            .filter(|t| !known.contains(**t))
            .map(|t| (*t).to_owned())
            .collect();
        missing.sort();
        missing.dedup();
        Ok(missing)
    }

    pub async fn ensure_topics(&self, topics: &[&str]) -> Result<(), String> {
        let missing = self.missing(topics)?;
        if missing.is_empty() {
            return Ok(());
        }
        if !self.create {
            return Err(format!(
                "target topic{} {} missing. Create {} (scripts/kafka kafka-topics --create --topic {} --partitions {}) \
                 or let the router do it: create_topics = true (ROUTER_CREATE_TOPICS=true)",
                if missing.len() > 1 { "s" } else { "" },
                missing.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", "),
                if missing.len() > 1 { "them" } else { "it" },
                missing[0],
                self.partitions
            ));
        }
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|t| NewTopic::new(t, self.partitions, TopicReplication::Fixed(-1)))
            .collect();
        let results = self
            .client
            .create_topics(new.iter(), &AdminOptions::new().request_timeout(Some(self.timeout)))
            .await
            .map_err(|e| format!("creating topics {missing:?}: {e}"))?;
        for r in results {
            match r {
                Ok(t) => tracing::info!(topic = %t, partitions = self.partitions, "created target topic"),
                Err((t, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::info!(topic = %t, "target topic created meanwhile by someone else")
                }
                Err((t, e)) => return Err(format!("creating topic `{t}`: {e}")),
            }
        }
        // Wait until the broker's metadata shows them.
        let deadline = tokio::time::Instant::now() + self.timeout;
        while !self.missing(topics)?.is_empty() {
            if tokio::time::Instant::now() > deadline {
                return Err(format!("created topics {missing:?} did not appear in metadata"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

/// The outputs of `batch` under `routes`: records for targets and dead letters.
/// An event of an install in `forgotten`, captured up to its request, is
/// dropped (`router_forgotten_dropped_total`). A registry outage is `NotNow`: nothing of the batch is routed, it is read
/// again.
pub async fn route_batch(
    routes: &Arc<Routes>,
    registry: &RegistryClient,
    forgotten: &Forgotten,
    batch: &[OwnedMessage],
    deadletter_topic: &str,
) -> Result<Vec<Output>, NotNow> {
    let mut outputs = Vec::with_capacity(batch.len());
    for msg in batch {
        metrics::counter!("router_records_total").increment(1);
        let payload = msg.payload().unwrap_or_default();
        let (writer_id, event) = match registry.decode::<ContextEvent>(payload).await {
            Ok(decoded) => decoded,
            Err(e) if e.is_retryable() => return Err(NotNow(format!("the registry is unavailable: {e}"))),
            Err(e) => {
                outputs.push(dead_letter(msg, deadletter_topic, e.reason(), &e.to_string(), None));
                continue;
            }
        };
        if forgotten.drops(Some(&event.app_id), &event.install_id, Some(event.timestamp)) {
            metrics::counter!("router_forgotten_dropped_total").increment(1);
            continue;
        }
        let decision = routes.rules.evaluate(&event);
        for rule in &decision.fired {
            metrics::counter!("router_rule_fired_total", "rule" => rule.clone()).increment(1);
        }
        if let Some(reason) = &decision.dropped {
            metrics::counter!("router_dropped_total", "reason" => reason.clone()).increment(1);
            continue;
        }
        let key = event.install_id.to_string().into_bytes();
        for &t in &decision.targets {
            let target: &Target = &routes.rules.targets()[t];
            let schema_id = routes.schema_ids[t];
            let encoded = match target.projection {
                // Written with the target's schema already: the bytes as they are.
                Projection::ContextEvent if writer_id == schema_id => Ok(payload.to_vec()),
                Projection::ContextEvent => event.to_wire(schema_id).map_err(|e| e.to_string()),
                Projection::MotionWindow => match MotionWindow::from_event(&event) {
                    Some(w) => w.to_wire(schema_id).map_err(|e| e.to_string()),
                    None => Err("the event has no motion samples to project into a MotionWindow".into()),
                },
            };
            match encoded {
                Ok(value) => {
                    metrics::counter!("router_routed_total", "topic" => target.topic.clone()).increment(1);
                    outputs.push(Output {
                        topic: target.topic.clone(),
                        key: Some(key.clone()),
                        payload: value,
                        headers: Vec::new(),
                    });
                }
                Err(detail) => outputs.push(dead_letter(
                    msg,
                    deadletter_topic,
                    "projection_failed",
                    &format!("target `{}` ({}): {detail}", target.topic, target.projection.name()),
                    Some(&event),
                )),
            }
        }
    }
    Ok(outputs)
}

fn dead_letter(msg: &OwnedMessage, topic: &str, reason: &str, detail: &str, event: Option<&ContextEvent>) -> Output {
    metrics::counter!("router_deadletters_total", "reason" => reason.to_owned()).increment(1);
    let ids = event.map(|e| (e.app_id.clone(), e.event_id.to_string()));
    dl::record(
        msg,
        topic,
        "stream-router",
        reason,
        detail,
        ids.as_ref().map(|(a, e)| (a.as_str(), e.as_str())),
    )
}

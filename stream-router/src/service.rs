//! `stream-router run`: the loop. Read a batch from the source topic, route
//! it, commit its outputs and offsets in one Kafka transaction, repeat. A
//! changed rules file is picked up between batches; a broken one keeps the
//! rules in force, loudly.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use context_runtime::pipeline::{Pipeline, PipelineError, PipelineSettings};
use schema_registry::RegistryClient;
use tokio::sync::watch;

use crate::config::Settings;
use crate::router::{prepare, route_batch, Admin, Routes};
use crate::rules::Rules;

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads and validates the rules file.
pub fn load_rules(path: &Path) -> Result<Rules, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read the rules file {}: {e}", path.display()))?;
    Rules::parse(&text).map_err(|e| format!("{}:\n{e}", path.display()))
}

/// Runs until `shutdown` turns true; the batch in flight is committed or
/// given up (to be read again) first.
pub async fn run(
    s: Settings,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let rules = load_rules(&s.rules_file).map_err(anyhow::Error::msg)?;
    let registry = RegistryClient::new(&s.registry_url)?;
    let admin = Admin::new(&s.kafka_bootstrap, s.create_topics, s.new_topic_partitions, s.timeout)
        .map_err(anyhow::Error::msg)?;
    let mut routes = Arc::new(
        prepare(rules, &registry, &admin, &s.deadletter_topic)
            .await
            .map_err(anyhow::Error::msg)?,
    );
    let mut rules_mtime = modified(&s.rules_file);
    log_routes(&routes, "routing");

    let ready = Arc::new(AtomicBool::new(false));
    let flag = ready.clone();
    let admin_server = context_runtime::start_admin(s.admin_listen, metrics, move || {
        if flag.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("starting, or the last batch could not be committed".into())
        }
    })?;
    tracing::info!(admin = %admin_server.addr, "admin endpoints");

    let pipeline = Pipeline::start(&PipelineSettings {
        kafka_bootstrap: s.kafka_bootstrap.clone(),
        group_id: s.group_id.clone(),
        topics: vec![s.source_topic.clone()],
        metrics_prefix: "router",
        delivery: s.delivery,
        allow_fallback: s.allow_fallback,
        transactional_id: s.transactional_id.clone(),
        session_timeout: s.session_timeout,
        timeout: s.timeout,
    })
    .map_err(anyhow::Error::msg)?;
    ready.store(true, Ordering::Relaxed);

    let mut backoff = Duration::from_millis(200);
    let result = loop {
        if *shutdown.borrow() {
            break Ok(());
        }
        if modified(&s.rules_file) != rules_mtime {
            rules_mtime = modified(&s.rules_file);
            match reload(&s, &registry, &admin).await {
                Ok(new) => {
                    routes = Arc::new(new);
                    log_routes(&routes, "reloaded the rules");
                    metrics::counter!("router_rules_reloads_total", "outcome" => "ok").increment(1);
                }
                Err(e) => {
                    tracing::error!(error = %e, "the changed rules file is invalid; the rules in force stay until it is fixed");
                    metrics::counter!("router_rules_reloads_total", "outcome" => "refused").increment(1);
                }
            }
        }
        let batch = tokio::select! {
            _ = shutdown.changed() => break Ok(()),
            b = pipeline.next_batch(s.max_batch, s.linger, Duration::from_millis(500)) => b,
        };
        let batch = match batch {
            Ok(b) if b.is_empty() => continue,
            Ok(b) => b,
            Err(PipelineError::Retry(e)) => {
                tracing::warn!(error = %e, "reading a batch");
                continue;
            }
            Err(PipelineError::Fatal(e)) => break Err(anyhow::anyhow!(e)),
        };
        let started = std::time::Instant::now();
        let outcome = match route_batch(&routes, &registry, &batch, &s.deadletter_topic).await {
            Ok(outputs) => {
                let routed = started.elapsed();
                let committed = pipeline.commit(&batch, outputs).await;
                metrics::histogram!("router_route_seconds").record(routed.as_secs_f64());
                metrics::histogram!("router_commit_seconds").record((started.elapsed() - routed).as_secs_f64());
                tracing::debug!(records = batch.len(), route = ?routed, commit = ?(started.elapsed() - routed), "batch");
                committed
            }
            Err(not_now) => {
                // Nothing of it was produced; read it again after a pause.
                pipeline.rewind().and(Err(PipelineError::Retry(not_now.0)))
            }
        };
        match outcome {
            Ok(()) => {
                ready.store(true, Ordering::Relaxed);
                backoff = Duration::from_millis(200);
                metrics::counter!("router_batches_committed_total").increment(1);
            }
            Err(PipelineError::Retry(e)) => {
                ready.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in = ?backoff, "batch not committed; it will be read again");
                tokio::select! {
                    _ = shutdown.changed() => break Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(PipelineError::Fatal(e)) => break Err(anyhow::anyhow!(e)),
        }
    };
    tracing::info!("stopping");
    drop(pipeline);
    admin_server.stop().await;
    result
}

async fn reload(s: &Settings, registry: &RegistryClient, admin: &Admin) -> Result<Routes, String> {
    let rules = load_rules(&s.rules_file)?;
    prepare(rules, registry, admin, &s.deadletter_topic).await
}

fn log_routes(routes: &Routes, what: &str) {
    let targets: Vec<String> = routes
        .rules
        .targets()
        .iter()
        .map(|t| format!("{} ({})", t.topic, t.projection.name()))
        .collect();
    let rules: Vec<&str> = routes.rules.rule_names().collect();
    tracing::info!(?rules, ?targets, "{what}");
}

//! `stream-router run`: the loop. Read a batch from the source topic, route
//! it, commit its outputs and offsets in one Kafka transaction, repeat. A
//! changed rules file is picked up between batches; a broken one keeps the
//! rules in force, loudly.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use context_runtime::pipeline::{drive, DriveOptions, Pipeline, PipelineSettings, Stage};
use context_runtime::shutdown::Shutdown;
use rdkafka::message::OwnedMessage;
use schema_registry::RegistryClient;

use crate::config::Config;
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
    s: Config,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let rules = load_rules(&s.rules_file).map_err(anyhow::Error::msg)?;
    context_runtime::kafka::verify_at_start(&s.kafka, std::time::Duration::from_secs(10)).await?;
    let registry = RegistryClient::connect(&s.registry)?;
    let admin = Admin::new(&s.kafka, s.create_topics, s.new_topic_partitions, s.timeout).map_err(anyhow::Error::msg)?;
    let routes = Arc::new(
        prepare(rules, &registry, &admin, &s.deadletter_topic)
            .await
            .map_err(anyhow::Error::msg)?,
    );
    let forgotten = context_runtime::forget::follow_configured(&s.kafka, &s.forget_topic).await?;
    let rules_mtime = modified(&s.rules_file);
    log_routes(&routes, "routing");

    let ready = Arc::new(AtomicBool::new(false));
    let flag = ready.clone();
    let stall = context_runtime::stall::Watch::new(&s.group_id, s.stall());
    let (ready_stall, healthy_stall) = (stall.clone(), stall.clone());
    let admin_server = context_runtime::start_admin_checked(
        s.admin_listen,
        metrics,
        move || {
            if flag.load(Ordering::Relaxed) {
                ready_stall.ready()
            } else {
                Err("starting, or the last batch could not be committed".into())
            }
        },
        move || healthy_stall.healthy(),
    )?;
    tracing::info!(admin = %admin_server.addr, "admin endpoints");

    let pipeline = Pipeline::start(&PipelineSettings {
        kafka: s.kafka.clone(),
        group_id: s.group_id.clone(),
        topics: vec![s.source_topic.clone()],
        metrics_prefix: "router",
        delivery: s.delivery,
        allow_fallback: s.allow_fallback,
        transactional_id: s.transactional_id.clone(),
        session_timeout: s.session_timeout,
        timeout: s.timeout,
        deadletter_topic: s.deadletter_topic.clone(),
        service: "stream-router",
        max_record_bytes: s.max_record_bytes,
    })
    .map_err(anyhow::Error::msg)?;
    let _stall_watch = pipeline
        .watch_stalls(stall, &s.kafka, shutdown.clone())
        .map_err(anyhow::Error::msg)?;
    ready.store(true, Ordering::Relaxed);

    let mut stage = Router {
        s: &s,
        registry,
        admin,
        routes,
        forgotten,
        rules_mtime,
        retry_at: None,
    };
    let options = DriveOptions {
        max_batch: s.max_batch,
        linger: s.linger,
    };
    let result = drive(&pipeline, &mut stage, options, &ready, shutdown)
        .await
        .map_err(anyhow::Error::msg);
    tracing::info!("stopping");
    drop(pipeline);
    admin_server.stop().await;
    result
}

/// The router's part of the loop: the rules in force, re-read when their
/// file changes.
struct Router<'a> {
    s: &'a Config,
    registry: RegistryClient,
    admin: Admin,
    routes: Arc<Routes>,
    /// The forget ledger, kept current by its own thread.
    forgotten: Arc<context_runtime::forget::Forgotten>,
    rules_mtime: Option<SystemTime>,
    /// A reload of a valid file failed for want of the registry or the
    /// broker: tried again at this time, whether or not the file changes.
    retry_at: Option<std::time::Instant>,
}

/// How long after a failed reload of a valid rules file it is tried again.
const RELOAD_RETRY: Duration = Duration::from_secs(5);

impl Stage for Router<'_> {
    async fn refresh(&mut self) {
        let changed = modified(&self.s.rules_file) != self.rules_mtime;
        let retry_due = self.retry_at.is_some_and(|at| std::time::Instant::now() >= at);
        if !changed && !retry_due {
            return;
        }
        self.rules_mtime = modified(&self.s.rules_file);
        self.retry_at = None;
        let rules = match load_rules(&self.s.rules_file) {
            Ok(rules) => rules,
            Err(e) => {
                tracing::error!(error = %e, "the changed rules file is invalid; the rules in force stay until it is fixed");
                metrics::counter!("router_rules_reloads_total", "outcome" => "refused").increment(1);
                return;
            }
        };
        match prepare(rules, &self.registry, &self.admin, &self.s.deadletter_topic).await {
            Ok(new) => {
                self.routes = Arc::new(new);
                log_routes(&self.routes, "reloaded the rules");
                metrics::counter!("router_rules_reloads_total", "outcome" => "ok").increment(1);
            }
            Err(e) => {
                // The file is valid; its targets could not be prepared (the
                // registry or the broker away, a target topic missing): try
                // again shortly even if the file does not change.
                tracing::error!(error = %e, retry_in = ?RELOAD_RETRY, "the rules file could not be put in force; the rules in force stay, and it is tried again");
                metrics::counter!("router_rules_reloads_total", "outcome" => "failed").increment(1);
                self.retry_at = Some(std::time::Instant::now() + RELOAD_RETRY);
            }
        }
    }

    async fn transform(&mut self, batch: &[OwnedMessage]) -> Result<Vec<context_runtime::pipeline::Output>, String> {
        route_batch(
            &self.routes,
            &self.registry,
            &self.forgotten,
            batch,
            &self.s.deadletter_topic,
        )
        .await
        .map_err(|not_now| not_now.0)
    }
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

//! A Confluent-compatible Schema Registry whose state lives in a Kafka topic,
//! and the client the services use to talk to any such registry.
//!
//! - [`store`]: the state, rebuilt by applying `_schemas` records in order;
//! - [`log`]: the reader thread and the producer around the topic;
//! - [`registry`]: the operations (register, lookup, config, delete), with
//!   the id-claim protocol that keeps replicas from colliding;
//! - [`api`]: the REST API; [`client`]: the client; [`config`]: settings.

pub mod api;
pub mod auth;
pub mod client;
pub mod config;
pub mod error;
pub mod log;
pub mod registry;
pub mod store;
pub mod topic;

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{web, App, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;

pub use client::RegistryClient;
pub use config::Config;
pub use error::RegistryError;
pub use registry::Registry;

/// A running registry: its address and a handle to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub registry: Arc<Registry>,
    server: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting requests, finishes the ones in flight, and returns.
    pub async fn stop(self) -> std::io::Result<()> {
        self.server.stop(true).await;
        self.task.await.map_err(std::io::Error::other)?
    }

    /// Waits until the server ends by itself (SIGTERM or SIGINT).
    pub async fn wait(self) -> std::io::Result<()> {
        self.task.await.map_err(std::io::Error::other)?
    }

    /// Waits until the registry has read `_schemas` to the end it had at start.
    pub async fn wait_ready(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.registry.ready() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        true
    }
}

/// Starts the registry: checks that the state topic is compacted with one
/// partition (creating it when missing and allowed), starts reading it, and
/// serves the API. Readiness turns true once the topic is read.
pub async fn start(settings: Config, metrics: Option<PrometheusHandle>) -> anyhow::Result<Running> {
    let guard = match &settings.auth.users_file {
        Some(path) => Some(auth::Guard::start(path, settings.auth.anonymous).map_err(anyhow::Error::msg)?),
        None => {
            tracing::warn!(
                "the registry is OPEN: anyone who reaches {} may register, change compatibility and delete \
                 schemas. Set auth.users_file (SCHEMA_REGISTRY_AUTH_USERS_FILE) to require credentials",
                settings.listen
            );
            None
        }
    };
    context_runtime::kafka::verify_at_start(
        &settings.kafka,
        settings.timeout.max(std::time::Duration::from_secs(30)),
    )
    .await?;
    topic::ensure_state_topic(
        &settings.kafka,
        &settings.topic,
        settings.create_topic,
        settings.timeout,
    )
    .await?;
    let log = {
        let s = settings.clone();
        tokio::task::spawn_blocking(move || log::SchemaLog::start(&s.kafka, &s.topic, s.timeout)).await??
    };
    let registry = Arc::new(Registry::new(log, settings.default_compatibility));
    let data = web::Data::new(registry.clone());
    let metrics = web::Data::new(metrics);
    let guard = guard.map(web::Data::new);
    let server = HttpServer::new(move || {
        let mut app = App::new().app_data(data.clone()).app_data(metrics.clone());
        if let Some(g) = &guard {
            app = app.app_data(g.clone());
        }
        app.wrap(actix_web::middleware::from_fn(auth::check))
            .configure(api::routes)
    })
    .workers(2)
    .shutdown_timeout(10)
    .bind(settings.listen)?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("the server bound no address"))?;
    let server = server.run();
    let handle = server.handle();
    let task = tokio::spawn(server);
    tracing::info!(%addr, topic = %settings.topic, "schema registry listening");
    Ok(Running {
        addr,
        registry,
        server: handle,
        task,
    })
}

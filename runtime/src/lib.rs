//! What every service binary starts with, in one place. Each `main` reads:
//! parse the command line → [`config`] (file, then environment, every
//! problem at once) → telemetry ([`init_tracing`], [`install_metrics`]) →
//! `run(settings, shutdown)` with one [`shutdown::Shutdown`] fed by
//! SIGTERM/SIGINT.
//!
//! Connections: [`kafka`] (the `[kafka]` table and the one place a
//! librdkafka client is configured), [`registry`] (a schema registry's URL
//! and credentials).
//!
//! Also shared: the admin endpoints `/healthz`, `/readyz`, `/metrics`
//! ([`start_admin`]), [`backoff`] for every retry loop, [`clock`],
//! [`deadletter`] headers, and [`pipeline`]: consume → transform → produce
//! in Kafka transactions, with [`pipeline::drive`] as the loop.
//!
//! [`forget`] is the ledger of installs whose data is erased, which every
//! stage that reads data follows.
//!
//! [`topics`] is the platform's topic declaration and the `context-topics`
//! tool that applies it (`src/bin/context-topics.rs`).

pub mod backoff;
pub mod clock;
pub mod config;
pub mod deadletter;
pub mod forget;
pub mod kafka;
pub mod pipeline;
pub mod registry;
pub mod shutdown;
pub mod stall;
pub mod topics;
pub mod watched;

use std::io::IsTerminal;

use metrics_exporter_prometheus::PrometheusHandle;

/// Logs to stderr at `RUST_LOG` (default `info`): human-readable on a
/// terminal, JSON lines otherwise.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}

/// Installs the Prometheus recorder; `None` (with a warning on stderr) if one
/// is already installed.
pub fn install_metrics() -> Option<PrometheusHandle> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| eprintln!("metrics disabled: {e}"))
        .ok()
}

/// The admin endpoints of a consumer service.
pub struct Admin {
    pub addr: std::net::SocketAddr,
    handle: actix_web::dev::ServerHandle,
}

impl Admin {
    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}

type Readiness = std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync>;
/// A distinct type, so that actix tells it from [`Readiness`].
struct Health(Readiness);

/// Serves `/healthz` (always 200), `/readyz` (200, or 503 with the reason
/// `ready` gives) and `/metrics` (Prometheus text) on `addr`.
pub fn start_admin(
    addr: std::net::SocketAddr,
    metrics: Option<PrometheusHandle>,
    ready: impl Fn() -> Result<(), String> + Send + Sync + 'static,
) -> std::io::Result<Admin> {
    start_admin_checked(addr, metrics, ready, || Ok(()))
}

/// [`start_admin`] with a `/healthz` that fails (503 with the reason) while
/// `healthy` says so: a consumer stalled for too long ([`stall`]), which
/// Kubernetes' liveness probe then restarts.
pub fn start_admin_checked(
    addr: std::net::SocketAddr,
    metrics: Option<PrometheusHandle>,
    ready: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    healthy: impl Fn() -> Result<(), String> + Send + Sync + 'static,
) -> std::io::Result<Admin> {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let ready: Readiness = std::sync::Arc::new(ready);
    let healthy = web::Data::new(Health(std::sync::Arc::new(healthy)));
    let (ready, metrics) = (web::Data::new(ready), web::Data::new(metrics));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(ready.clone())
            .app_data(healthy.clone())
            .app_data(metrics.clone())
            .route(
                "/healthz",
                web::get().to(|h: web::Data<Health>| async move {
                    match (h.get_ref().0)() {
                        Ok(()) => HttpResponse::Ok().body("ok"),
                        Err(why) => HttpResponse::ServiceUnavailable().body(why),
                    }
                }),
            )
            .route(
                "/readyz",
                web::get().to(|r: web::Data<Readiness>| async move {
                    match (r.get_ref())() {
                        Ok(()) => HttpResponse::Ok().body("ready"),
                        Err(why) => HttpResponse::ServiceUnavailable().body(why),
                    }
                }),
            )
            .route(
                "/metrics",
                web::get().to(|m: web::Data<Option<PrometheusHandle>>| async move {
                    HttpResponse::Ok()
                        .content_type("text/plain; version=0.0.4")
                        .body(m.get_ref().as_ref().map(|h| h.render()).unwrap_or_default())
                }),
            )
    })
    .workers(1)
    .disable_signals()
    .bind(addr)?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("no admin address"))?;
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok(Admin { addr, handle })
}

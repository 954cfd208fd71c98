//! What every service binary starts with, in one place: logs (JSON when not
//! on a terminal), the Prometheus recorder, and reading its TOML
//! configuration file. Libraries never call these; binaries do.

use std::io::IsTerminal;
use std::path::Path;

use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;

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

/// The configuration file at `path`, or the defaults when there is none.
pub fn read_config<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, String> {
    match path {
        None => Ok(T::default()),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
        }
    }
}

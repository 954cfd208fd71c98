//! The keys file in use, reloaded when it changes on disk (a Kubernetes
//! Secret mounted as a file is updated in place). A file that does not parse
//! is logged and ignored: the gateway keeps serving with the keys it had.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::auth::KeyRing;

/// The current key ring, shared by all workers.
#[derive(Clone)]
pub struct Keys {
    ring: Arc<RwLock<Arc<KeyRing>>>,
}

fn modified(path: &PathBuf) -> Option<(SystemTime, u64)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

impl Keys {
    /// Loads the file now; fails if it cannot be read or parsed.
    pub fn load(path: &PathBuf) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read keys file {}: {e}", path.display()))?;
        let ring = KeyRing::parse(&text).map_err(|e| format!("keys file {}: {e}", path.display()))?;
        Ok(Keys {
            ring: Arc::new(RwLock::new(Arc::new(ring))),
        })
    }

    pub fn current(&self) -> Arc<KeyRing> {
        self.ring.read().expect("keys lock").clone()
    }

    /// Watches the file and swaps in new keys when it changes.
    pub fn watch(&self, path: PathBuf, every: Duration) -> tokio::task::JoinHandle<()> {
        let keys = self.clone();
        tokio::spawn(async move {
            let mut seen = modified(&path);
            loop {
                tokio::time::sleep(every).await;
                let now = modified(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                match std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|t| KeyRing::parse(&t))
                {
                    Ok(ring) => {
                        tracing::info!(keys = ring.len(), file = %path.display(), "reloaded API keys");
                        *keys.ring.write().expect("keys lock") = Arc::new(ring);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, file = %path.display(), "keys file is invalid; keeping the previous keys")
                    }
                }
            }
        })
    }
}

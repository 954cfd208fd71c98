//! The keys file in use, reloaded when its content changes on disk (a
//! Kubernetes Secret mounted as a file is updated in place). A content is
//! swapped in only once it has settled, parses and holds at least one key
//! (`context_runtime::watched`): a keys file being rewritten, truncated or
//! broken never answers 401 to every app; the gateway keeps the keys it had.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use context_runtime::watched::{Entries, Watched};

use crate::auth::KeyRing;

impl Entries for KeyRing {
    fn entries(&self) -> usize {
        self.len()
    }
}

/// The current key ring, shared by all workers.
#[derive(Clone)]
pub struct Keys(Watched<KeyRing>);

impl Keys {
    /// Loads the file now; fails if it cannot be read, parsed, or holds no key.
    pub fn load(path: &Path) -> Result<Self, String> {
        Watched::load(path, "keys file", KeyRing::parse).map(Keys)
    }

    pub fn current(&self) -> Arc<KeyRing> {
        self.0.current()
    }

    /// Watches the file and swaps in new keys when it changes.
    pub fn watch(&self, path: PathBuf, every: Duration) -> tokio::task::JoinHandle<()> {
        self.0.watch(path, every, |ring, path| {
            tracing::info!(keys = ring.len(), file = %path.display(), "reloaded API keys");
        })
    }
}

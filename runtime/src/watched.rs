//! A file of credentials in use (the gateway's API keys, the registry's
//! users), reloaded when its content changes on disk.
//!
//! An operator's slip must never lock everyone out: `cp new keys.toml`
//! truncates the file before it writes it, and an editor may save in two
//! steps. So a new content is swapped in only when
//! - it has stayed the same for two looks in a row (a file being written
//!   is not read half-way),
//! - it is not empty, parses, and holds at least one entry.
//!
//! Anything else is logged and the previous content stays in use. Changes
//! are found by content (a SHA-256 of the bytes), not by modification time,
//! so a same-length edit within the file system's time granularity, or a
//! Kubernetes Secret swapped through its symlink, is seen too.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// What a watched file holds once parsed.
pub trait Entries: Send + Sync + 'static {
    /// How many entries (keys, users) it holds; zero is never swapped in.
    fn entries(&self) -> usize;
}

type Parse<T> = fn(&str) -> Result<T, String>;

/// The content in use, shared by every worker.
pub struct Watched<T> {
    current: Arc<RwLock<Arc<T>>>,
    /// The SHA-256 of the content `load` read, so that a change between
    /// `load` and `watch` is still seen.
    loaded: [u8; 32],
    parse: Parse<T>,
    what: &'static str,
}

impl<T> Clone for Watched<T> {
    fn clone(&self) -> Self {
        Watched {
            current: self.current.clone(),
            loaded: self.loaded,
            parse: self.parse,
            what: self.what,
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl<T: Entries> Watched<T> {
    /// Reads and parses `path` now; `what` names it in messages ("keys
    /// file"). Fails when it cannot be read, does not parse or is empty.
    pub fn load(path: &Path, what: &'static str, parse: Parse<T>) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
        let value = parse(&text).map_err(|e| format!("{what} {}: {e}", path.display()))?;
        if value.entries() == 0 {
            return Err(format!("{what} {} holds no entries", path.display()));
        }
        Ok(Watched {
            current: Arc::new(RwLock::new(Arc::new(value))),
            loaded: digest(text.as_bytes()),
            parse,
            what,
        })
    }

    pub fn current(&self) -> Arc<T> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Looks at the file every `every` and swaps in a new content as the
    /// module says. `loaded` is called with each content swapped in.
    pub fn watch(&self, path: PathBuf, every: Duration, loaded: fn(&T, &Path)) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let read = |p: &Path| std::fs::read(p).map_err(|e| e.to_string());
            // The content in use, and a new one seen once.
            let mut in_use = Some(me.loaded);
            let mut pending: Option<[u8; 32]> = None;
            loop {
                tokio::time::sleep(every).await;
                let bytes = match read(&path) {
                    Ok(b) => b,
                    Err(e) => {
                        if pending.take().is_some() || in_use.is_some() {
                            tracing::warn!(file = %path.display(), error = %e, "{} cannot be read; keeping what is in use", me.what);
                        }
                        in_use = None;
                        continue;
                    }
                };
                let now = digest(&bytes);
                if Some(now) == in_use {
                    pending = None;
                    continue;
                }
                if pending != Some(now) {
                    // Seen for the first time: look again before using it.
                    pending = Some(now);
                    continue;
                }
                pending = None;
                in_use = Some(now);
                let text = String::from_utf8_lossy(&bytes);
                if text.trim().is_empty() {
                    tracing::error!(file = %path.display(), "{} is empty; keeping what is in use", me.what);
                    continue;
                }
                match (me.parse)(&text) {
                    Ok(value) if value.entries() == 0 => {
                        tracing::error!(file = %path.display(), "{} holds no entries; keeping what is in use", me.what)
                    }
                    Ok(value) => {
                        loaded(&value, &path);
                        *me.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
                    }
                    Err(e) => {
                        tracing::error!(file = %path.display(), error = %e, "{} is invalid; keeping what is in use", me.what)
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lines(Vec<String>);

    impl Entries for Lines {
        fn entries(&self) -> usize {
            self.0.len()
        }
    }

    fn parse(text: &str) -> Result<Lines, String> {
        if text.contains('!') {
            return Err("a line has a !".into());
        }
        Ok(Lines(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned)
                .collect(),
        ))
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    #[tokio::test]
    async fn only_settled_valid_non_empty_contents_are_swapped_in() {
        let dir = std::env::temp_dir().join(format!("context-watched-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, "a\nb\n").unwrap();
        let w = Watched::load(&path, "test file", parse).unwrap();
        let task = w.watch(path.clone(), Duration::from_millis(20), |_, _| {});
        // Truncated (as by cp), then whitespace, then invalid: all refused.
        for bad in ["", "  \n", "a\n!\n"] {
            std::fs::write(&path, bad).unwrap();
            settle().await;
            assert_eq!(w.current().0, ["a", "b"], "after {bad:?}");
        }
        // Same length, other content: seen by content, not by mtime.
        std::fs::write(&path, "a\nc\n").unwrap();
        settle().await;
        assert_eq!(w.current().0, ["a", "c"]);
        // Gone: the last content stays; back: used again.
        std::fs::remove_file(&path).unwrap();
        settle().await;
        assert_eq!(w.current().0, ["a", "c"]);
        std::fs::write(&path, "d\n").unwrap();
        settle().await;
        assert_eq!(w.current().0, ["d"]);
        task.abort();
        assert!(Watched::<Lines>::load(&dir.join("missing"), "test file", parse).is_err());
        std::fs::write(&path, "\n").unwrap();
        let empty = Watched::<Lines>::load(&path, "test file", parse)
            .err()
            .unwrap_or_default();
        assert!(empty.contains("no entries"), "{empty}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

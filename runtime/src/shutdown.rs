//! One shutdown token for a whole process: SIGTERM or SIGINT (or a test's
//! [`Trigger`]) asks every loop holding a clone of [`Shutdown`] to finish
//! its current step and stop.

use tokio::sync::watch;

/// Asks to stop; clones wait on the same request.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// Fires a [`Shutdown`]. Dropping it without firing leaves the token unfired.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

impl Trigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// A token fired by hand (tests, a sub-command with its own end).
    pub fn new() -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Trigger(tx), Shutdown(rx))
    }

    /// A token fired by SIGTERM or SIGINT. Needs a Tokio runtime.
    pub fn on_signals() -> Shutdown {
        let (trigger, shutdown) = Shutdown::new();
        // Installed here, not in the task: a SIGTERM right after this
        // returns is already ours.
        #[cfg(unix)]
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::spawn(async move {
            #[cfg(unix)]
            {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: stopping"),
                }
            }
            #[cfg(not(unix))]
            let _ = tokio::signal::ctrl_c().await;
            trigger.fire();
            // Keep the sender alive so late clones still see the request.
            std::future::pending::<()>().await;
        });
        shutdown
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Returns once stopping was asked for (at once if it already was);
    /// never, if its trigger is dropped unfired.
    pub async fn requested(&mut self) {
        if self.0.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_one_request() {
        let (trigger, mut a) = Shutdown::new();
        let mut b = a.clone();
        assert!(!a.is_requested());
        let waiting = tokio::spawn(async move { b.requested().await });
        trigger.fire();
        waiting.await.unwrap();
        a.requested().await;
        assert!(a.is_requested());
        drop(trigger);
        a.requested().await;
    }

    #[tokio::test]
    async fn a_dropped_trigger_never_fires() {
        let (trigger, mut s) = Shutdown::new();
        drop(trigger);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), s.requested()).await;
        assert!(waited.is_err());
    }
}

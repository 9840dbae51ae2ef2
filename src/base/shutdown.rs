//! The shutdown signal every task holds: a channel that is never sent on, only closed, and the
//! deadline by which shutdown must be done.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// A handle on the shutdown signal; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: async_channel::Receiver<()>,
    deadline: Arc<OnceLock<Instant>>,
}

/// Begins shutdown when [`Trigger::trigger`] is called or when it (every clone) is dropped.
#[derive(Debug, Clone)]
pub struct Trigger {
    tx: async_channel::Sender<()>,
    deadline: Arc<OnceLock<Instant>>,
}

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = async_channel::bounded(1);
    let deadline = Arc::new(OnceLock::new());
    (
        Trigger {
            tx,
            deadline: deadline.clone(),
        },
        Shutdown { rx, deadline },
    )
}

/// A shutdown for one part of the server (a listener that a reload removes): it begins with
/// `parent`'s, with its deadline, or earlier when its own trigger is pulled.
pub fn child(parent: &Shutdown) -> (Trigger, Shutdown) {
    use futures_lite::FutureExt;
    let (trigger, shutdown) = channel();
    let (parent, own, pull) = (parent.clone(), shutdown.clone(), trigger.clone());
    crate::base::runtime::spawn(async move {
        let from_parent = async {
            parent.wait().await;
            true
        }
        .or(async {
            own.wait().await;
            false
        })
        .await;
        if from_parent {
            pull.trigger(parent.deadline().unwrap_or_else(Instant::now));
        }
    })
    .detach();
    (trigger, shutdown)
}

impl Trigger {
    /// Begins shutdown, to be done by `deadline`.
    pub fn trigger(&self, deadline: Instant) {
        let _ = self.deadline.set(deadline);
        self.tx.close();
    }
}

impl Shutdown {
    pub fn is_triggered(&self) -> bool {
        self.rx.is_closed()
    }

    /// The deadline, once shutdown has begun.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline.get().copied()
    }

    /// True once shutdown has begun and its deadline has passed.
    pub fn expired(&self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// Resolves once shutdown has begun.
    pub async fn wait(&self) {
        while self.rx.recv().await.is_ok() {}
    }

    /// What `work` comes to, or `None` when shutdown begins first (`work` is then dropped).
    pub async fn unless<T>(&self, work: impl std::future::Future<Output = T>) -> Option<T> {
        use futures_lite::FutureExt;
        async { Some(work.await) }
            .or(async {
                self.wait().await;
                None
            })
            .await
    }
}

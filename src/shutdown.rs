//! The shutdown signal every task holds: a channel that is never sent on, only closed.

/// A handle on the shutdown signal; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: async_channel::Receiver<()>,
}

/// Begins shutdown when [`Trigger::trigger`] is called or when it is dropped.
#[derive(Debug)]
pub struct Trigger {
    tx: async_channel::Sender<()>,
}

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = async_channel::bounded(1);
    (Trigger { tx }, Shutdown { rx })
}

impl Trigger {
    pub fn trigger(&self) {
        self.tx.close();
    }
}

impl Shutdown {
    pub fn is_triggered(&self) -> bool {
        self.rx.is_closed()
    }

    /// Resolves once shutdown has begun.
    pub async fn wait(&self) {
        while self.rx.recv().await.is_ok() {}
    }
}

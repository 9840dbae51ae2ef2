//! Accepting connections and spawning one task per connection.

use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt;
use smol::net::TcpListener;

use crate::connection::{self, Pipeline, Shared};
use crate::rules::Origin;
use crate::runtime;
use crate::shutdown::Shutdown;

/// Accepts connections until shutdown begins. Every connection task holds a clone of `done`;
/// the caller learns that all of them have finished when the channel closes.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: Shutdown,
    done: async_channel::Sender<()>,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = async { Some(listener.accept().await) }
            .or(async {
                shutdown.wait().await;
                None
            })
            .await;
        let (stream, peer) = match accepted {
            None => break,
            Some(Ok(pair)) => {
                backoff = Duration::from_millis(10);
                pair
            }
            Some(Err(e)) => {
                // Out of file descriptors and the like: wait, then try again.
                log::error!("accept failed: {e}; retrying in {backoff:?}");
                smol::Timer::after(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let metrics = shared.metrics.clone();
        metrics
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics
            .connections_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let origin = Origin {
            peer_addr: Some(peer.to_string()),
        };
        let pipeline = Pipeline::new(shared.clone(), origin);
        let shutdown = shutdown.clone();
        let done = done.clone();
        log::debug!("connection from {peer}");
        runtime::spawn(async move {
            if let Err(e) = connection::run(stream, pipeline, shutdown).await {
                log::info!("connection from {peer} ended: {e}");
            }
            metrics
                .connections
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            drop(done);
        })
        .detach();
    }
}

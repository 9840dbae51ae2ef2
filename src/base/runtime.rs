//! The async runtime: one smol executor run on several threads. Everything runtime-specific that
//! is not a socket or a timer lives here.

use std::future::Future;

use smol::{Executor, Task};

static EXECUTOR: Executor<'static> = Executor::new();

/// Spawns a task on the shared executor.
pub fn spawn<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> Task<T> {
    EXECUTOR.spawn(future)
}

/// Runs `main` to completion on this thread while `threads` more threads run spawned tasks.
///
/// `main` (the server: signals, the shutdown and its deadline) has this thread to itself and
/// never runs a connection's task, so no flood can delay it; while it waits, this thread drives
/// the reactor (timers and socket events) for all.
pub fn block_on<T>(threads: usize, main: impl Future<Output = T>) -> T {
    let (stop, stopped) = async_channel::bounded::<()>(1);
    std::thread::scope(|scope| {
        for i in 1..=threads.max(1) {
            let stopped = stopped.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("hotdog-{i}"))
                .spawn_scoped(scope, move || {
                    smol::block_on(EXECUTOR.run(async {
                        let _ = stopped.recv().await;
                    }))
                });
            if let Err(e) = spawned {
                log::warn!("could not start worker thread {i}: {e}");
            }
        }
        let out = smol::block_on(main);
        stop.close();
        out
    })
}

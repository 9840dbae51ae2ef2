//! The running server: starts the stages (publisher, listeners, status server, statsd), handles
//! signals (SIGHUP reloads the TLS files; SIGINT and SIGTERM shut down), runs the shutdown in
//! order, and returns a [`Summary`] of every line it read.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{FutureExt, StreamExt};
use smol::Task;

use crate::config::{Config, Global};
use crate::connection::Shared;
use crate::listener::{self, Listener};
use crate::metrics::{self, Metrics};
use crate::publisher::{self, Health, Outbox, Publisher};
use crate::shutdown::{self, Shutdown};
use crate::tls::Acceptor;
use crate::{record, runtime, status, throttle};

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Publisher(#[from] publisher::Error),
    #[error(transparent)]
    Listener(#[from] listener::Error),
    /// Something the operating system would not give (a port, a thread, signal handlers).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// True when the configuration is what is wrong (librdkafka refused `global.kafka.conf`, a
    /// TLS file would not load): exit code 2 rather than 1.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Error::Publisher(publisher::Error::Conf(_)) | Error::Listener(listener::Error::Tls(_))
        )
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Where every line read ended, at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub received: u64,
    pub forwarded: u64,
    pub unrouted: u64,
    pub delivered: u64,
    pub failed: u64,
    pub dead_lettered: u64,
    pub dropped: u64,
    pub in_flight: i64,
    /// Records read that shutdown could not deliver in time (they are dead letters).
    pub undelivered: u64,
}

impl Summary {
    fn new(m: &Metrics, unacknowledged: u64) -> Summary {
        Summary {
            received: m.lines.load(Relaxed),
            forwarded: m.forwarded.load(Relaxed),
            unrouted: m.unrouted.load(Relaxed),
            delivered: m.delivered.load(Relaxed),
            failed: m.failed.load(Relaxed),
            dead_lettered: m.dead_lettered.load(Relaxed),
            dropped: m.udp_dropped.load(Relaxed),
            in_flight: m.in_flight(),
            undelivered: m
                .dead_lettered_for(record::SHUTDOWN_TIMEOUT)
                .max(unacknowledged),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received {} lines, forwarded {}, unrouted {}, delivered {}, failed {}, dead-lettered {}, dropped {}, in flight {}",
            self.received,
            self.forwarded,
            self.unrouted,
            self.delivered,
            self.failed,
            self.dead_lettered,
            self.dropped,
            self.in_flight
        )
    }
}

/// How often a broker is asked for metadata, for `/health`.
const HEALTH_EVERY: Duration = Duration::from_secs(2);
/// How often counters go to statsd.
const STATSD_EVERY: Duration = Duration::from_secs(1);

/// Runs the forwarder until SIGINT or SIGTERM, then shuts down in order.
pub async fn run(config: Config) -> Result<Summary, Error> {
    let Config { global, rules } = config;
    let metrics = Metrics::new();
    let (publisher, outbox) = Publisher::new(&global.kafka, metrics.clone())?;
    let health = Arc::new(Health::default());
    publisher
        .watch_health(
            health.clone(),
            HEALTH_EVERY,
            Duration::from_millis(global.kafka.timeout_ms.clamp(100, 5000)),
        )
        .map_err(io("cannot start the health probe"))?;
    let waiting = outbox.clone();
    metrics.watch_queues(
        Arc::new(move || i64::try_from(waiting.waiting()).unwrap_or(i64::MAX)),
        publisher.queue_len(),
    );
    let signals = async_signal::Signals::new([
        async_signal::Signal::Term,
        async_signal::Signal::Int,
        async_signal::Signal::Hup,
    ])
    .map_err(io("cannot install signal handlers"))?;
    let mut listeners = Vec::new();
    for l in &global.listen {
        listeners.push(Listener::bind(l).await?);
    }
    start_status(&global, &metrics, &health)?;
    let statsd = Statsd::start(&global, &metrics)?;
    let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
    log::info!(
        "hotdog {} listening on {} with {} rules",
        env!("CARGO_PKG_VERSION"),
        names.join(", "),
        rules.rules().len()
    );

    notify_systemd(sd_notify::NotifyState::Ready);

    let (trigger, shutdown) = shutdown::channel();
    let publishing = runtime::spawn(publisher.run(shutdown.clone()));
    let (done, all_done) = async_channel::bounded::<()>(1);
    let shared = Arc::new(Shared {
        rules: Arc::new(rules),
        metrics: metrics.clone(),
        outbox: outbox.clone(),
    });
    let acceptors: Vec<_> = listeners.iter().filter_map(Listener::acceptor).collect();
    let listening: Vec<_> = listeners
        .into_iter()
        .map(|l| runtime::spawn(l.serve(shared.clone(), shutdown.clone(), done.clone())))
        .collect();
    drop((shared, done));
    let reporting = runtime::spawn(report_suppressed_logs(shutdown.clone()));

    let stop = watch_signals(signals, acceptors).map_err(io("cannot start the signal thread"))?;
    let _ = stop.recv().await;
    notify_systemd(sd_notify::NotifyState::Stopping);
    let deadline = deadline_after(global.shutdown_timeout);
    trigger.trigger(deadline);
    let unacknowledged = shut_down(
        listening,
        all_done,
        &outbox,
        publishing,
        deadline,
        global.shutdown_timeout,
    )
    .await;
    statsd.stop().await;
    reporting.await;
    throttle::report_suppressed();
    let summary = Summary::new(&metrics, unacknowledged);
    log::info!("summary: {summary}");
    Ok(summary)
}

/// Tells systemd (`Type=notify`) that hotdog is ready, or stopping; nothing when it was not
/// started by systemd.
fn notify_systemd(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(false, &[state]) {
        log::warn!("cannot notify systemd: {e}");
    }
}

/// `timeout` from now, or as far as the clock goes.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// The HTTP status server, when `global.status` asks for one.
fn start_status(
    global: &Global,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
) -> Result<(), Error> {
    let Some(s) = &global.status else {
        return Ok(());
    };
    let at = format!("{}:{}", s.address, s.port);
    let sources = status::Sources {
        metrics: metrics.clone(),
        health: health.clone(),
    };
    let bound = status::serve(&at, sources)
        .map_err(io(format!("cannot start the status server on {at}")))?;
    log::info!("status server on http://{bound}/stats");
    Ok(())
}

/// The statsd reporter thread, when `global.metrics.statsd` asks for one.
struct Statsd {
    stop: async_channel::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Statsd {
    fn start(global: &Global, metrics: &Arc<Metrics>) -> Result<Statsd, Error> {
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let thread = match &global.metrics.statsd {
            Some(at) => Some(
                metrics::report_to_statsd(metrics.clone(), at, STATSD_EVERY, stopped)
                    .map_err(io(format!("cannot send metrics to statsd at {at}")))?,
            ),
            None => None,
        };
        Ok(Statsd { stop, thread })
    }

    /// Sends the last counts and waits for the thread.
    async fn stop(self) {
        self.stop.close();
        if let Some(t) = self.thread {
            let _ = smol::unblock(move || t.join()).await;
        }
    }
}

/// Logs the counts of repeated warnings held back, every interval until shutdown.
async fn report_suppressed_logs(shutdown: Shutdown) {
    loop {
        let stopped = async {
            shutdown.wait().await;
            true
        }
        .or(async {
            smol::Timer::after(throttle::INTERVAL).await;
            false
        })
        .await;
        if stopped {
            return;
        }
        throttle::report_suppressed();
    }
}

/// Handles signals on a thread of its own, so that no load on the executor can delay them:
/// SIGHUP reloads the TLS files; the returned channel closes at the first SIGINT or SIGTERM.
///
/// The thread lives as long as the process and is idle nearly always: while it waits, it
/// drives smol's reactor, so timers (the shutdown deadline) and socket events are seen on time
/// even when every executor thread is busy with a flood.
fn watch_signals(
    mut signals: async_signal::Signals,
    acceptors: Vec<Arc<Acceptor>>,
) -> std::io::Result<async_channel::Receiver<()>> {
    let (stop, stopped) = async_channel::bounded::<()>(1);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            smol::block_on(async {
                while let Some(sig) = signals.next().await {
                    match sig {
                        Ok(async_signal::Signal::Hup) => reload_tls(&acceptors),
                        Ok(sig) if stop.close() => log::info!("received {sig:?}; shutting down"),
                        Ok(sig) => log::info!("received {sig:?}; already shutting down"),
                        Err(e) => log::warn!("signal handling: {e}"),
                    }
                }
            });
        })?;
    Ok(stopped)
}

/// Re-reads every TLS listener's files (on the signal thread: file reads block).
fn reload_tls(acceptors: &[Arc<Acceptor>]) {
    for a in acceptors {
        match a.reload() {
            Ok(()) => log::info!("reloaded {}", a.settings().cert.display()),
            Err(e) => log::error!("TLS reload failed, keeping the old certificates: {e}"),
        }
    }
}

/// The shutdown, in order: listeners stop accepting; open connections send what they have
/// read (until the deadline); the outbox closes; the publisher delivers what it holds or
/// dead-letters it at the deadline. Returns how many records Kafka had not acknowledged then.
async fn shut_down(
    listening: Vec<Task<()>>,
    all_done: async_channel::Receiver<()>,
    outbox: &Outbox,
    publishing: Task<u64>,
    deadline: Instant,
    timeout: Duration,
) -> u64 {
    for l in listening {
        l.await;
    }
    let finished = async {
        let _ = all_done.recv().await;
        true
    }
    .or(async {
        smol::Timer::at(deadline).await;
        false
    })
    .await;
    if !finished {
        log::warn!("connections still open after {timeout:?}; closing them");
    }
    outbox.close();
    let unacknowledged = publishing.await;
    if unacknowledged > 0 {
        log::error!("{unacknowledged} records were not acknowledged before the shutdown timeout");
    }
    unacknowledged
}

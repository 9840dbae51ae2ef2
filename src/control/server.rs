//! The running server: starts the stages (publisher, listeners, status server, statsd), handles
//! signals (SIGHUP reloads the configuration and the TLS files; SIGINT and SIGTERM shut down),
//! carries out reloads (new rules in use, listeners started and stopped), runs the shutdown in
//! order, and returns a [`Summary`] of every line it read.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{FutureExt, StreamExt};
use smol::Task;

use std::path::PathBuf;

use crate::base::metrics::{self, Metrics};
use crate::base::shutdown::{self, Shutdown};
use crate::base::{runtime, throttle};
use crate::control::access::Access;
use crate::control::{reload, status};
use crate::listen::tls::Acceptor;
use crate::listen::{self, Listener};
use crate::publish::{self, Health, Outbox, Publisher};
use crate::session::Shared;
use hotdog_stages::config::{Config, Global};
use hotdog_stages::core as record;
use hotdog_stages::route::{Current, Rules};

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Publisher(#[from] publish::Error),
    #[error(transparent)]
    Listener(#[from] listen::Error),
    #[error(transparent)]
    Spool(#[from] crate::spool::Error),
    /// The status server's token or TLS files would not load.
    #[error("the status server: {0}")]
    Status(String),
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
            Error::Publisher(publish::Error::Conf(_) | publish::Error::DeadLetterFile(_))
                | Error::Listener(listen::Error::Tls(_))
                | Error::Status(_)
        ) || matches!(self, Error::Spool(e) if e.is_config())
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
    /// RELP sessions there were, and the messages left unanswered when theirs ended (their
    /// senders send them again).
    pub relp_sessions: u64,
    pub relp_unacknowledged: u64,
    /// Dead letters the dead-letter file refused until the end (logged whole instead).
    pub dead_letters_unwritten: u64,
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
            relp_sessions: m.relp_sessions_total.load(Relaxed),
            relp_unacknowledged: m.relp_unacknowledged.load(Relaxed),
            dead_letters_unwritten: m.dead_letter_unwritten.load(Relaxed),
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
        )?;
        if self.dead_letters_unwritten > 0 {
            write!(
                f,
                ", dead letters not written to the file {} (logged whole)",
                self.dead_letters_unwritten
            )?;
        }
        if self.relp_sessions > 0 {
            write!(
                f,
                ", RELP messages left unacknowledged {} (their senders send them again)",
                self.relp_unacknowledged
            )?;
        }
        Ok(())
    }
}

/// How often a broker is asked for metadata, for `/health`.
const HEALTH_EVERY: Duration = Duration::from_secs(2);
/// How often counters go to statsd.
const STATSD_EVERY: Duration = Duration::from_secs(1);

/// How the server was started, beyond the configuration itself.
#[derive(Debug, Clone)]
pub struct Options {
    /// The configuration file, read again on reload.
    pub config_path: PathBuf,
    /// Reload when the file changes (`--watch`; also `global.reload.watch`).
    pub watch: bool,
}

/// Runs the forwarder until SIGINT or SIGTERM, reloading the configuration on SIGHUP, `POST
/// /reload` or (watched) a change of the file, then shuts down in order.
pub async fn run(config: Config, options: Options) -> Result<Summary, Error> {
    let Config { global, rules } = config;
    let metrics = Metrics::new();
    metrics.config_generation.store(1, Relaxed);
    let (publisher, outbox) = start_publisher(&global, &metrics)?;
    let health = publisher.health();
    let kafka = publisher.reconfigure();
    let signals = async_signal::Signals::new([
        async_signal::Signal::Term,
        async_signal::Signal::Int,
        async_signal::Signal::Hup,
    ])
    .map_err(io("cannot install signal handlers"))?;
    let bound = bind_all(&global).await?;
    let (requests, requested) = reload::requests();
    let last_error = Arc::new(reload::LastError::default());
    let taps = crate::base::tap::Taps::new();
    let status = start_status(&global, &metrics, &health, &requests, &last_error, &taps)?;
    let statsd = Statsd::start(&global, &metrics)?;
    announce(&bound, &rules);
    if options.watch || global.reload.watch {
        reload::watch(
            options.config_path.clone(),
            global.reload.debounce,
            requests.clone(),
        )
        .map_err(io("cannot start watching the configuration file"))?;
    }

    notify_systemd(sd_notify::NotifyState::Ready);

    let (trigger, shutdown) = shutdown::channel();
    let publishing = runtime::spawn(publisher.run(shutdown.clone()));
    let (done, all_done) = async_channel::bounded::<()>(1);
    let shared = Arc::new(Shared {
        rules: Current::new(rules),
        metrics: metrics.clone(),
        outbox: outbox.clone(),
        taps: taps.clone(),
    });
    // Weak: the metrics outlive nothing that holds them, and hold no rules alive.
    let rules = Arc::downgrade(&shared);
    metrics.watch_rules(Arc::new(move || {
        rules
            .upgrade()
            .map_or_else(Vec::new, |shared| shared.rules.get().1.matches())
    }));
    let mut running = Running {
        path: options.config_path,
        global,
        listeners: Vec::new(),
        stopped: Vec::new(),
        shared,
        shutdown: shutdown.clone(),
        done,
        last_error,
        status,
        kafka,
    };
    for listener in bound {
        let started = running.start(listener);
        running.listeners.push(started);
    }
    let reporting = runtime::spawn(report_suppressed_logs(shutdown.clone()));

    let stop = watch_signals(signals, requests).map_err(io("cannot start the signal thread"))?;
    serve_reloads(&mut running, &requested, &stop).await;
    // Reloads asked for from now on are answered "shutting down".
    requested.close();
    notify_systemd(sd_notify::NotifyState::Stopping);
    let timeout = running.global.shutdown_timeout;
    let deadline = deadline_after(timeout);
    trigger.trigger(deadline);
    let listening = running.tasks();
    let unacknowledged =
        shut_down(listening, all_done, &outbox, publishing, deadline, timeout).await;
    statsd.stop().await;
    reporting.await;
    throttle::report_suppressed();
    let summary = Summary::new(&metrics, unacknowledged);
    log::info!("summary: {summary}");
    Ok(summary)
}

/// Every listener of the configuration, bound (none is served yet).
async fn bind_all(global: &Global) -> Result<Vec<Listener>, Error> {
    let mut bound = Vec::new();
    for l in &global.listen {
        bound.push(Listener::bind(l).await?);
    }
    Ok(bound)
}

/// The line that says hotdog is up, and where.
fn announce(bound: &[Listener], rules: &Rules) {
    let names: Vec<&str> = bound.iter().map(|l| l.name.as_str()).collect();
    log::info!(
        "hotdog {} listening on {} with {} rules",
        env!("CARGO_PKG_VERSION"),
        names.join(", "),
        rules.rules().len()
    );
}

/// The publisher, its health probe, and the queue gauges it feeds.
fn start_publisher(global: &Global, metrics: &Arc<Metrics>) -> Result<(Publisher, Outbox), Error> {
    let spool = match &global.spool {
        Some(config) => Some(crate::spool::Spool::open(config, metrics.clone())?),
        None => None,
    };
    let (publisher, outbox) = Publisher::new(&global.kafka, spool.as_ref(), metrics.clone())?;
    publisher
        .watch_health(
            HEALTH_EVERY,
            Duration::from_millis(global.kafka.timeout_ms.clamp(100, 5000)),
        )
        .map_err(io("cannot start the health probe"))?;
    let waiting = outbox.clone();
    metrics.watch_udp_kernel(Arc::new(|| {
        i64::try_from(crate::listen::kernel_dropped()).unwrap_or(i64::MAX)
    }));
    metrics.watch_queues(
        Arc::new(move || i64::try_from(waiting.waiting()).unwrap_or(i64::MAX)),
        publisher.queue_len(),
    );
    Ok((publisher, outbox))
}

/// Carries out the reloads asked for, answering each asker, until a signal stops hotdog (a
/// reload under way, perhaps stuck on a hung file read, is dropped then).
async fn serve_reloads(
    running: &mut Running,
    requested: &reload::Pending,
    stop: &async_channel::Receiver<()>,
) {
    loop {
        let next = async { requested.next().await }.or(stopped(stop)).await;
        let Some(replies) = next else { return };
        let reloaded = async { Some(running.reload().await) }.or(stopped(stop));
        let Some(outcome) = reloaded.await else {
            return;
        };
        for reply in replies {
            let _ = reply.try_send(outcome.clone());
        }
    }
}

/// The server's parts that a reload changes.
struct Running {
    path: PathBuf,
    /// The configuration in use (settings that need a restart keep their old values here).
    global: Global,
    /// In the order of `global.listen`.
    listeners: Vec<Listening>,
    /// Listeners a reload removed, finishing as at shutdown.
    stopped: Vec<Task<()>>,
    shared: Arc<Shared>,
    shutdown: Shutdown,
    /// Every connection task holds a clone (see [`Listener::serve`]); dropped at shutdown.
    done: async_channel::Sender<()>,
    last_error: Arc<reload::LastError>,
    /// The status server's access rules (its token and TLS files are read again on reload).
    status: Option<Arc<Access>>,
    /// The producers' settings, which a reload may change (and their files, read again).
    kafka: crate::publish::Reconfigure,
}

/// A listener being served.
struct Listening {
    name: String,
    stop: shutdown::Trigger,
    task: Task<()>,
    acceptor: Option<Arc<Acceptor>>,
    /// Its quota, which a reload replaces without a restart.
    quota: Arc<crate::session::QuotaSlot>,
}

impl Running {
    fn start(&self, listener: Listener) -> Listening {
        let (stop, shutdown) = shutdown::child(&self.shutdown);
        let name = listener.name.clone();
        let acceptor = listener.acceptor();
        let quota = listener.quota();
        let task = runtime::spawn(listener.serve(self.shared.clone(), shutdown, self.done.clone()));
        Listening {
            name,
            stop,
            task,
            acceptor,
            quota,
        }
    }

    /// Re-reads the TLS files (as every SIGHUP always has), then the configuration file: when it
    /// is valid, puts its rules in use, starts and stops listeners, and reports what it could not
    /// change; when it is not, changes nothing.
    async fn reload(&mut self) -> Result<reload::Report, reload::Failure> {
        let acceptors: Vec<_> = self
            .listeners
            .iter()
            .filter_map(|l| l.acceptor.clone())
            .collect();
        let status = self.status.clone();
        smol::unblock(move || {
            reload_tls(&acceptors);
            if let Some(s) = status {
                s.reload();
            }
        })
        .await;
        let metrics = self.shared.metrics.clone();
        let outcome = self.try_reload().await;
        match &outcome {
            Ok(report) => {
                metrics.config_reloads.fetch_add(1, Relaxed);
                metrics.config_generation.store(report.generation, Relaxed);
                self.last_error.set(None);
                log::info!("reloaded {}: {report}", self.path.display());
                if !report.restart_needed.is_empty() {
                    log::warn!(
                        "{}: these settings changed and keep their old values until hotdog restarts: {}",
                        self.path.display(),
                        report.restart_needed.join(", ")
                    );
                }
            }
            Err(errors) => {
                metrics.config_reload_failed.fetch_add(1, Relaxed);
                for e in errors {
                    log::error!("{e}");
                }
                let generation = self.shared.rules.generation();
                log::error!(
                    "reload of {} failed with {} error(s); still running generation {generation}",
                    self.path.display(),
                    errors.len()
                );
                self.last_error.set(Some(errors.join("\n")));
            }
        }
        outcome
    }

    /// Stops the listeners `stop` names (taking them out of `old`) with `deadline` for their
    /// connections; their names.
    fn stop_listeners(
        &mut self,
        old: &mut [Option<Listening>],
        stop: &[usize],
        deadline: Instant,
    ) -> Vec<String> {
        let mut stopped = Vec::new();
        for &o in stop {
            if let Some(l) = old[o].take() {
                l.stop.trigger(deadline);
                stopped.push(l.name);
                // Listeners stopped by earlier reloads that have finished are let go.
                self.stopped.retain(|t| !t.is_finished());
                self.stopped.push(l.task);
            }
        }
        stopped
    }

    async fn try_reload(&mut self) -> Result<reload::Report, reload::Failure> {
        let path = self.path.clone();
        let config = smol::unblock(move || Config::load(&path, &crate::control::outside()))
            .await
            .map_err(|errors| errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
        let Config {
            global: new,
            mut rules,
        } = config;
        crate::publish::Reconfigure::check(&new.kafka.conf).map_err(|e| vec![e])?;
        let plan = reload::plan(&self.global, &new);
        // Every new listener binds before anything changes: one that cannot changes nothing.
        let mut bound = Vec::new();
        for (l, running) in new.listen.iter().zip(&plan.listeners) {
            if running.is_none() {
                bound.push(Listener::bind(l).await.map_err(|e| vec![e.to_string()])?);
            }
        }
        // The publisher keeps its topic (a change needs a restart), and so do the rules.
        rules.set_default_topic(&self.global.kafka.topic);
        let count = rules.rules().len();
        let generation = self.shared.rules.replace(rules);

        let deadline = deadline_after(new.shutdown_timeout);
        let mut old: Vec<Option<Listening>> = std::mem::take(&mut self.listeners)
            .into_iter()
            .map(Some)
            .collect();
        let stopped = self.stop_listeners(&mut old, &plan.stop, deadline);
        let mut started = Vec::new();
        let mut bound = bound.into_iter();
        let mut listen = Vec::new();
        for (l, running) in new.listen.into_iter().zip(plan.listeners) {
            let kept = running.and_then(|o| Some((old[o].take()?, self.global.listen[o].clone())));
            match kept {
                Some((listening, mut settings)) => {
                    // Quotas change in place: every connection takes the new one from its next
                    // line on.
                    listening.quota.set(l.quota.as_ref());
                    settings.quota = l.quota;
                    self.listeners.push(listening);
                    listen.push(settings);
                }
                None => {
                    let Some(listener) = bound.next() else {
                        continue;
                    };
                    started.push(listener.name.clone());
                    let listening = self.start(listener);
                    self.listeners.push(listening);
                    listen.push(l);
                }
            }
        }
        self.global.listen = listen;
        self.global.shutdown_timeout = new.shutdown_timeout;
        let kafka = self.kafka.clone();
        let conf = new.kafka.conf.clone();
        let renewed = smol::unblock(move || kafka.apply(&conf)).await;
        self.global.kafka.conf = new.kafka.conf;
        Ok(reload::Report {
            generation,
            rules: count,
            started,
            stopped,
            restart_needed: plan.restart,
            kafka_renewed: renewed,
        })
    }

    /// Every listener's task, running or stopped, for the shutdown to wait for; the `done`
    /// channel of the connections is left to close with their last one.
    fn tasks(self) -> Vec<Task<()>> {
        let Running {
            listeners,
            mut stopped,
            ..
        } = self;
        stopped.extend(listeners.into_iter().map(|l| l.task));
        stopped
    }
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
    requests: &reload::Requests,
    last_error: &Arc<reload::LastError>,
    taps: &Arc<crate::base::tap::Taps>,
) -> Result<Option<Arc<Access>>, Error> {
    let Some(s) = &global.status else {
        return Ok(None);
    };
    let at = format!("{}:{}", s.address, s.port);
    let access = Arc::new(Access::new(s).map_err(Error::Status)?);
    let sources = status::Sources {
        metrics: metrics.clone(),
        health: health.clone(),
        reload: requests.clone(),
        last_reload_error: last_error.clone(),
        access: access.clone(),
        taps: taps.clone(),
    };
    let bound = status::serve(&at, sources)
        .map_err(io(format!("cannot start the status server on {at}")))?;
    let scheme = if s.tls.is_some() { "https" } else { "http" };
    log::info!("status server on {scheme}://{bound}/stats");
    if let Some(why) = s.control_off() {
        log::warn!("{why}");
    }
    Ok(Some(access))
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
/// SIGHUP asks for a reload; the returned channel closes at the first SIGINT or SIGTERM.
///
/// The thread lives as long as the process and is idle nearly always: while it waits, it
/// drives smol's reactor, so timers (the shutdown deadline) and socket events are seen on time
/// even when every executor thread is busy with a flood.
/// `None` once SIGINT or SIGTERM came (`stop` from [`watch_signals`]): what is raced against
/// it is dropped.
async fn stopped<T>(stop: &async_channel::Receiver<()>) -> Option<T> {
    let _ = stop.recv().await;
    None
}

fn watch_signals(
    mut signals: async_signal::Signals,
    requests: reload::Requests,
) -> std::io::Result<async_channel::Receiver<()>> {
    let (stop, stopped) = async_channel::bounded::<()>(1);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            smol::block_on(async {
                while let Some(sig) = signals.next().await {
                    match sig {
                        Ok(async_signal::Signal::Hup) => requests.ask(),
                        Ok(sig) if stop.close() => log::info!("received {sig:?}; shutting down"),
                        Ok(sig) => log::info!("received {sig:?}; already shutting down"),
                        Err(e) => log::warn!("signal handling: {e}"),
                    }
                }
            });
        })?;
    Ok(stopped)
}

/// Re-reads every TLS listener's files (blocks: off the executor).
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

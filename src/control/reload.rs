//! Reloading the configuration while hotdog runs: what a new configuration changes in the
//! running server ([`plan`], pure), the report a reload gives, and the watcher that asks for a
//! reload when the file changes. The server carries the plan out (`server::Running::reload`).

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use hotdog_stages::config::{Global, Listen};

/// What a new configuration changes in the running server.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// For each listener of the new configuration, the running one it is (an index into the old
    /// configuration's), or `None` when it is new and must be started.
    pub listeners: Vec<Option<usize>>,
    /// The old configuration's listeners that the new one does not have: they stop.
    pub stop: Vec<usize>,
    /// Settings that changed but cannot change while hotdog runs (`global.kafka.topic`,
    /// `global.listen[1].max_connections`, ...): the old values stay until a restart.
    pub restart: Vec<String>,
}

/// A listener is the same one when it has the same protocol, address and port; its other
/// settings cannot change while it runs.
fn same_socket(a: &Listen, b: &Listen) -> bool {
    a.protocol.name() == b.protocol.name() && a.address == b.address && a.port == b.port
}

/// What changes from `old` (the configuration in use) to `new` (the file as it is now).
pub fn plan(old: &Global, new: &Global) -> Plan {
    let mut plan = Plan::default();
    let mut taken = vec![false; old.listen.len()];
    for (i, l) in new.listen.iter().enumerate() {
        let found = (0..old.listen.len()).find(|&o| !taken[o] && same_socket(&old.listen[o], l));
        if let Some(o) = found {
            taken[o] = true;
            listener_changes(&old.listen[o], l, &format!("global.listen[{i}]"), &mut plan);
        }
        plan.listeners.push(found);
    }
    plan.stop = (0..old.listen.len()).filter(|&o| !taken[o]).collect();
    let (a, b) = (&old.kafka, &new.kafka);
    let fixed = [
        ("global.kafka.topic", a.topic != b.topic),
        ("global.kafka.buffer", a.buffer != b.buffer),
        ("global.kafka.timeout_ms", a.timeout_ms != b.timeout_ms),
        ("global.kafka.dead_letter", a.dead_letter != b.dead_letter),
        ("global.kafka.max_topics", a.max_topics != b.max_topics),
        ("global.metrics", old.metrics != new.metrics),
        ("global.status", old.status != new.status),
        ("global.reload", old.reload != new.reload),
        ("global.spool", old.spool != new.spool),
    ];
    plan.restart.extend(
        fixed
            .into_iter()
            .filter(|(_, changed)| *changed)
            .map(|(key, _)| key.to_string()),
    );
    plan
}

fn listener_changes(old: &Listen, new: &Listen, at: &str, plan: &mut Plan) {
    let fields = [
        ("tls", old.protocol != new.protocol),
        (
            "max_message_size",
            old.max_message_size != new.max_message_size,
        ),
        (
            "max_connections",
            old.max_connections != new.max_connections,
        ),
        (
            "max_connections_per_source",
            old.max_connections_per_source != new.max_connections_per_source,
        ),
        ("tcp_keepalive", old.tcp_keepalive != new.tcp_keepalive),
        ("idle_timeout", old.idle_timeout != new.idle_timeout),
        ("proxy_protocol", old.proxy_protocol != new.proxy_protocol),
        ("timezone", old.timezone != new.timezone),
        ("ack", old.ack != new.ack),
    ];
    for (key, changed) in fields {
        if changed {
            plan.restart.push(format!("{at}.{key}"));
        }
    }
}

/// What a reload did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The generation now in use (the `/reload` answer has it already, beside the report).
    #[serde(skip_serializing)]
    pub generation: u64,
    pub rules: usize,
    /// Listeners started and stopped (`tcp 127.0.0.1:1514`).
    pub started: Vec<String>,
    pub stopped: Vec<String>,
    /// Settings that changed in the file and keep their old values until a restart.
    pub restart_needed: Vec<String>,
    /// `global.kafka.conf`, or a file it names, changed: new producers are made with it.
    pub kafka_renewed: bool,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "generation {}, {} rules", self.generation, self.rules)?;
        if !self.started.is_empty() {
            write!(f, "; started {}", self.started.join(", "))?;
        }
        if !self.stopped.is_empty() {
            write!(f, "; stopped {}", self.stopped.join(", "))?;
        }
        if self.kafka_renewed {
            write!(
                f,
                "; the Kafka settings or their files changed: new producers are made with them"
            )?;
        }
        if !self.restart_needed.is_empty() {
            write!(
                f,
                "; changed but kept until a restart: {}",
                self.restart_needed.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Why a reload changed nothing: every error (`file:line:column: message` for the file).
pub type Failure = Vec<String>;

/// Where the outcome of a reload goes: to each HTTP client waiting for it (a signal or the file
/// watcher waits for none).
type Reply = async_channel::Sender<Result<Report, Failure>>;

/// The way to ask for a reload. Every request that comes while a reload runs (or before one
/// begins) shares the one reload after it: that one reads the file after all of them.
#[derive(Clone)]
pub struct Requests(std::sync::Arc<Asked>);

/// The requests not taken yet, and the wake-up of the server's loop.
struct Asked {
    waiting: Mutex<Vec<Reply>>,
    wake: async_channel::Sender<()>,
}

/// The server's end: [`Pending::next`] gives every request made since the last call.
pub struct Pending {
    asked: std::sync::Arc<Asked>,
    woken: async_channel::Receiver<()>,
}

pub fn requests() -> (Requests, Pending) {
    let (wake, woken) = async_channel::bounded(1);
    let asked = std::sync::Arc::new(Asked {
        waiting: Mutex::new(Vec::new()),
        wake,
    });
    (Requests(asked.clone()), Pending { asked, woken })
}

impl Requests {
    /// Asks for a reload without waiting for it (a signal, the watcher).
    pub fn ask(&self) {
        // A wake-up already waiting covers this request too.
        let _ = self.0.wake.try_send(());
    }

    /// Reloads and says how it went; `None` when the server is shutting down.
    pub async fn reload(&self) -> Option<Result<Report, Failure>> {
        let (reply, outcome) = async_channel::bounded(1);
        {
            let mut waiting = self.0.waiting.lock().unwrap_or_else(|p| p.into_inner());
            if self.0.wake.is_closed() {
                return None;
            }
            waiting.push(reply);
        }
        let _ = self.0.wake.try_send(());
        outcome.recv().await.ok()
    }
}

impl Pending {
    /// Waits for a request, then takes it with every other one made so far (those waiting for
    /// an answer get it from the one reload that follows); `None` once closed.
    pub async fn next(&self) -> Option<Vec<Reply>> {
        self.woken.recv().await.ok()?;
        Some(std::mem::take(
            &mut *self.asked.waiting.lock().unwrap_or_else(|p| p.into_inner()),
        ))
    }

    /// No more reloads: every request waiting and every later one is answered `None`.
    pub fn close(&self) {
        let mut waiting = self.asked.waiting.lock().unwrap_or_else(|p| p.into_inner());
        self.woken.close();
        waiting.clear();
    }
}

/// The last reload's error, until one succeeds; for `/stats` and `/health`.
#[derive(Debug, Default)]
pub struct LastError(Mutex<Option<String>>);

impl LastError {
    pub fn set(&self, error: Option<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// How often the watched file's metadata is looked at.
const POLL: Duration = Duration::from_millis(100);

/// What tells that a file changed: its modification time, length and inode (an editor that
/// saves by renaming a new file over the old changes the inode); `None` while it is missing.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Watches `path` on a thread of its own and asks for a reload once it has changed and then
/// stayed unchanged for `debounce` (an editor that saves in several writes causes one reload,
/// of the whole file). A file that is missing for a moment (renamed over) is waited for.
pub fn watch(path: PathBuf, debounce: Duration, requests: Requests) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || {
            let mut seen = stamp(&path);
            // The stamp that changed and when it was first seen, until it is stable.
            let mut changed: Option<(Stamp, std::time::Instant)> = None;
            loop {
                std::thread::sleep(POLL);
                let now = stamp(&path);
                if now == seen {
                    changed = None;
                    continue;
                }
                match changed {
                    Some((s, since)) if s == now => {
                        if since.elapsed() >= debounce && now.is_some() {
                            log::info!("{} changed; reloading", path.display());
                            requests.ask();
                            seen = now;
                            changed = None;
                        }
                    }
                    _ => changed = Some((now, std::time::Instant::now())),
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotdog_stages::config::Config;

    fn global(listen: &str, kafka_extra: &str) -> Global {
        let text = format!(
            "global:\n  listen:\n{listen}  kafka:\n    conf:\n      bootstrap.servers: b\n{kafka_extra}rules: []\n"
        );
        Config::parse("t.yml", &text, |_| None)
            .expect("valid config")
            .global
    }

    const TWO: &str = "    - port: 1514\n    - port: 1515\n      protocol: udp\n";

    #[test]
    fn the_same_file_changes_nothing() {
        let g = global(TWO, "");
        assert_eq!(
            plan(&g, &g),
            Plan {
                listeners: vec![Some(0), Some(1)],
                stop: vec![],
                restart: vec![],
            }
        );
    }

    #[test]
    fn listeners_are_matched_by_protocol_address_and_port() {
        let old = global(TWO, "");
        // 1515 is now TCP (a new listener; the UDP one stops), 1516 is new, 1514 moved.
        let new = global(
            "    - port: 1516\n    - port: 1515\n    - port: 1514\n      max_connections: 5\n",
            "",
        );
        assert_eq!(
            plan(&old, &new),
            Plan {
                listeners: vec![None, None, Some(0)],
                stop: vec![1],
                restart: vec!["global.listen[2].max_connections".into()],
            }
        );
    }

    #[test]
    fn port_zero_listeners_are_matched_in_order() {
        let old = global("    - port: 0\n    - port: 0\n", "");
        let new = global("    - port: 0\n", "");
        let p = plan(&old, &new);
        assert_eq!(p.listeners, vec![Some(0)]);
        assert_eq!(p.stop, vec![1]);
    }

    /// `global.kafka.conf` is not among them: new producers are made with a new one.
    #[test]
    fn settings_that_need_a_restart_are_named() {
        let old = global(TWO, "");
        let new = global(
            TWO,
            "      linger.ms: '5'\n    topic: other\n    buffer: 7\n    max_topics: 9\n",
        );
        assert_eq!(
            plan(&old, &new).restart,
            vec![
                "global.kafka.topic",
                "global.kafka.buffer",
                "global.kafka.max_topics"
            ]
        );
    }
}

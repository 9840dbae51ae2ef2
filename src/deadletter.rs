//! The dead-letter file: records that could not go to the dead-letter topic (there is none, it
//! refused them too, or shutdown ran out of time) are appended to the JSON-lines file
//! `global.kafka.dead_letter.file`, one write per line. With no file, the record is logged whole
//! at error level. Every one is counted: nothing disappears without a trace.
//!
//! This module only receives dead letters; producing to the dead-letter topic is the
//! publisher's (it owns the Kafka producers).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::record::DeadLetter;

/// How many dead letters may wait for the writer; a sender waits when it is full.
const QUEUE: usize = 1024;

enum Msg {
    Letter(DeadLetter),
    Finish(std::sync::mpsc::Sender<()>),
}

/// Where dead letters for the file are sent; cheap to clone. The queue is bounded: a burst of
/// refused records makes the senders wait instead of growing memory.
#[derive(Clone)]
pub struct Sink {
    tx: async_channel::Sender<Msg>,
    metrics: Arc<Metrics>,
}

impl Sink {
    /// Sends from a task, waiting (not blocking) while the queue is full. Counts its reason:
    /// every dead letter for the file passes here.
    pub async fn send(&self, letter: DeadLetter) {
        self.metrics.dead_letter_reason(&letter.reason);
        if let Err(async_channel::SendError(Msg::Letter(l))) =
            self.tx.send(Msg::Letter(letter)).await
        {
            log_letter(&l);
        }
    }

    /// Waits (blocking) until every dead letter sent so far has been written.
    pub fn finish(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.tx.send_blocking(Msg::Finish(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(30));
        }
    }
}

/// Starts the writer thread for `file` (none: dead letters are logged).
pub fn start(file: Option<PathBuf>, metrics: Arc<Metrics>) -> std::io::Result<Sink> {
    let (tx, rx) = async_channel::bounded::<Msg>(QUEUE);
    let sink = Sink {
        tx,
        metrics: metrics.clone(),
    };
    std::thread::Builder::new()
        .name("dead-letter".into())
        .spawn(move || {
            let mut open = None;
            while let Ok(msg) = rx.recv_blocking() {
                let mut letter = match msg {
                    Msg::Letter(l) => l,
                    Msg::Finish(done) => {
                        let _ = done.send(());
                        continue;
                    }
                };
                let ack = std::mem::take(&mut letter.record.ack);
                match write_file(file.as_ref(), &mut open, &letter) {
                    // Written, or logged whole where no file is configured: either way where
                    // the operator said dead letters go, so a sender waiting for it hears so.
                    Ok(written) => {
                        if !written {
                            log_letter(&letter);
                        }
                        ack.settle();
                    }
                    // Not where it should be: a sender waiting for it is never told it is safe
                    // (the dropped share says so), and sends it again.
                    Err(e) => {
                        log::error!("cannot write the dead-letter file: {e}");
                        log_letter(&letter);
                    }
                }
                metrics.dead_lettered(&letter.record.topic);
            }
        })?;
    Ok(sink)
}

fn json(letter: &DeadLetter) -> serde_json::Value {
    let r = &letter.record;
    let headers: serde_json::Map<String, serde_json::Value> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::json!({
        "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "topic": &*r.topic,
        "key": r.key,
        "payload": r.payload_text(),
        "headers": headers,
        "reason": letter.reason,
    })
}

/// Appends to the dead-letter file; false when there is none.
fn write_file(
    path: Option<&PathBuf>,
    open: &mut Option<std::fs::File>,
    letter: &DeadLetter,
) -> std::io::Result<bool> {
    let Some(path) = path else {
        return Ok(false);
    };
    let f = match open {
        Some(f) => f,
        None => open.insert(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
    };
    // One write per line, unbuffered: a dead letter is on disk once it is counted.
    let mut line = serde_json::to_vec(&json(letter))?;
    line.push(b'\n');
    f.write_all(&line)?;
    Ok(true)
}

fn log_letter(letter: &DeadLetter) {
    log::error!(
        "dead letter (no dead-letter file configured): {}",
        json(letter)
    );
}

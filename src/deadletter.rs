//! Dead letters: records Kafka refused for good, or that could not be delivered before the
//! shutdown timeout. They go to `global.kafka.dead_letter.topic` (with the original topic and the
//! reason in headers) and, when that is not possible, to the JSON-lines file
//! `global.kafka.dead_letter.file`. With neither, the record is logged whole at error level.
//! Every one is counted: nothing disappears without a trace.

use std::io::Write;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, ThreadedProducer};

use crate::metrics::Metrics;
use crate::rules::Record;

/// `global.kafka.dead_letter`.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `topic`: where refused records are produced, with headers `hotdog-original-topic` and
    /// `hotdog-reason`.
    pub topic: Option<String>,
    /// `file`: a JSON-lines file for records that cannot go to the dead-letter topic.
    pub file: Option<std::path::PathBuf>,
}

/// One record that will not reach its topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub record: Record,
    pub reason: String,
    /// True when Kafka cannot be used for it (the dead-letter topic refused it, or shutdown
    /// ran out of time): straight to the file.
    pub file_only: bool,
}

enum Msg {
    Letter(DeadLetter),
    Finish(mpsc::Sender<()>),
}

/// Where dead letters are sent; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Sink {
    tx: mpsc::Sender<Msg>,
}

impl Sink {
    pub fn send(&self, letter: DeadLetter) {
        if let Err(mpsc::SendError(Msg::Letter(l))) = self.tx.send(Msg::Letter(letter)) {
            // The writer is gone (only after shutdown): the log is the last place left.
            log_letter(&l);
        }
    }

    /// Waits until every dead letter sent so far has been written or handed to Kafka.
    pub fn finish(&self) {
        let (done, wait) = mpsc::channel();
        if self.tx.send(Msg::Finish(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(30));
        }
    }
}

/// What a delivery report is about: one of the connections' records (with its topic's counters),
/// or a dead letter (with the topic it was meant for).
#[derive(Debug)]
pub enum Tag {
    Record(Arc<crate::metrics::TopicCounters>),
    DeadLetter(String),
}

/// Starts the dead-letter writer thread. `producer` is set once the producer exists (the
/// producer's delivery callback needs the sink first).
pub fn start(
    settings: Settings,
    metrics: Arc<Metrics>,
    producer: Arc<std::sync::OnceLock<Arc<ThreadedProducer<crate::publisher::Reports>>>>,
) -> std::io::Result<Sink> {
    let (tx, rx) = mpsc::channel::<Msg>();
    std::thread::Builder::new()
        .name("dead-letter".into())
        .spawn(move || {
            let mut file = None;
            for msg in rx {
                let letter = match msg {
                    Msg::Letter(l) => l,
                    Msg::Finish(done) => {
                        let _ = done.send(());
                        continue;
                    }
                };
                metrics.dead_letter_reason(&letter.reason);
                if let (Some(topic), false, Some(p)) =
                    (&settings.topic, letter.file_only, producer.get())
                {
                    if produce(p, topic, &letter) {
                        // Counted as dead-lettered when the topic acknowledges it.
                        continue;
                    }
                }
                match write_file(&settings, &mut file, &letter) {
                    Ok(true) => {
                        metrics.dead_lettered(&letter.record.topic);
                    }
                    Ok(false) => {
                        log_letter(&letter);
                        metrics.dead_lettered(&letter.record.topic);
                    }
                    Err(e) => {
                        log::error!("cannot write the dead-letter file: {e}");
                        log_letter(&letter);
                        metrics.dead_lettered(&letter.record.topic);
                    }
                }
            }
        })?;
    Ok(Sink { tx })
}

/// Produces to the dead-letter topic; false when librdkafka will not take it.
fn produce(
    producer: &ThreadedProducer<crate::publisher::Reports>,
    topic: &str,
    letter: &DeadLetter,
) -> bool {
    let r = &letter.record;
    let headers = r.headers.iter().fold(
        OwnedHeaders::new_with_capacity(r.headers.len() + 2)
            .insert(Header {
                key: "hotdog-original-topic",
                value: Some(r.topic.as_ref()),
            })
            .insert(Header {
                key: "hotdog-reason",
                value: Some(letter.reason.as_str()),
            }),
        |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_str()),
            })
        },
    );
    for _ in 0..1000 {
        let tag = Arc::new(Tag::DeadLetter(r.topic.to_string()));
        let mut rec: BaseRecord<'_, str, str, Arc<Tag>> = BaseRecord::with_opaque_to(topic, tag)
            .payload(r.payload.as_str())
            .headers(headers.clone());
        if let Some(k) = &r.key {
            rec = rec.key(k.as_str());
        }
        match producer.send(rec) {
            Ok(()) => return true,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => {
                log::warn!("the dead-letter topic {topic} refused a record: {e}");
                return false;
            }
        }
    }
    false
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
        "payload": r.payload,
        "headers": headers,
        "reason": letter.reason,
    })
}

/// Appends to the dead-letter file; false when there is none.
fn write_file(
    settings: &Settings,
    file: &mut Option<std::fs::File>,
    letter: &DeadLetter,
) -> std::io::Result<bool> {
    let Some(path) = &settings.file else {
        return Ok(false);
    };
    if file.is_none() {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        *file = Some(f);
    }
    if let Some(f) = file.as_mut() {
        // One write per line, unbuffered: a dead letter is on disk once it is counted.
        let mut line = serde_json::to_vec(&json(letter))?;
        line.push(b'\n');
        f.write_all(&line)?;
    }
    Ok(true)
}

fn log_letter(letter: &DeadLetter) {
    log::error!(
        "dead letter (no dead-letter file configured): {}",
        json(letter)
    );
}

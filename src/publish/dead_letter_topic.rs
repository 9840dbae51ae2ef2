//! The dead-letter topic: records that will not reach their own topic, with why, produced by a
//! producer of their own; what that topic refuses goes to the dead-letter file.

use super::*;
use hotdog_stages::core::Outcome;

/// What the dead-letter producer keeps with each dead letter: the topic it was meant for and
/// the time its line was read.
pub(super) struct Letter {
    pub(super) original: String,
    pub(super) read_ms: i64,
    pub(super) ack: Ack,
}

/// A dead letter's payload is copied by librdkafka: its tag owns none.
impl producer::OwnsPayload for Letter {
    fn payload(&self) -> &[u8] {
        &[]
    }
}

/// Why a dead letter is one, as its `hotdog-reason` header says.
fn reason_of(m: &rdkafka::message::BorrowedMessage<'_>) -> String {
    m.headers()
        .and_then(|h| h.iter().find(|h| h.key == "hotdog-reason"))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// Counts delivery reports of the dead-letter topic; runs on its producer's thread. The opaque
/// of every record is its [`Letter`].
pub(super) struct DeadLetterReports {
    pub(super) metrics: Arc<Metrics>,
    pub(super) file: Sink,
    pub(super) generation: Arc<Generation>,
    pub(super) pending: Pending<DeadLetter>,
    pub(super) expired: Arc<AtomicBool>,
}

impl ClientContext for DeadLetterReports {
    fn error(&self, error: KafkaError, reason: &str) {
        client_error(&self.generation, error, reason);
    }
}

impl ProducerContext for DeadLetterReports {
    type DeliveryOpaque = Box<Letter>;

    fn delivery(&self, result: &DeliveryResult<'_>, letter: Box<Letter>) {
        let Letter {
            original,
            read_ms,
            ack,
        } = *letter;
        // The record as it was meant for its own topic.
        let original_record = |m: &rdkafka::message::BorrowedMessage<'_>, ack| Record {
            topic: Name::Owned(original.clone()),
            ..record_of(m, None, read_ms, false, ack)
        };
        match result {
            Ok(m) => {
                self.metrics.dead_lettered(&original);
                ack.settle(Outcome::DeadLettered {
                    reason: &reason_of(m),
                    to: m.topic(),
                });
                throttle::DEAD_LETTER.warn(format_args!(
                    "dead letter for {original} written to {}",
                    m.topic()
                ));
            }
            Err((e, m)) if to_resend(&self.generation, e, &self.expired) => {
                let letter = DeadLetter {
                    record: original_record(m, ack),
                    reason: reason_of(m),
                    file_only: false,
                };
                keep(&self.pending, letter);
            }
            Err((e, m)) => {
                throttle::DEAD_LETTER.warn(format_args!(
                    "the dead-letter topic did not take a record: {e}"
                ));
                let letter = DeadLetter {
                    record: original_record(m, ack),
                    reason: format!("dead_letter_topic_{}", error_kind(e)),
                    file_only: true,
                };
                smol::block_on(self.file.send(letter));
            }
        }
    }
}

/// The record a delivery report is about, read at `read_ms`, rebuilt to be sent again
/// (`all_headers`) or for a dead letter (hotdog's own `hotdog-` headers left out), with its
/// share of a waiting message back. Its payload is the one `lent`, or a copy of librdkafka's.
pub(super) fn record_of<M: rdkafka::message::Message>(
    m: &M,
    lent: Option<(Bytes, Block)>,
    read_ms: i64,
    all_headers: bool,
    ack: Ack,
) -> Record {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .filter(|h| all_headers || !h.key.starts_with("hotdog-"))
                .map(|h| {
                    (
                        h.key.to_string().into(),
                        h.value.map(text).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let (payload, block) = lent.unwrap_or_else(|| {
        let copy = m.payload().map(Bytes::copy_from_slice);
        (copy.unwrap_or_default(), Block::default())
    });
    Record {
        topic: m.topic().to_string().into(),
        key: m.key().map(text),
        payload,
        block,
        headers,
        read_ms,
        ack,
    }
}

/// Where every dead letter goes: the dead-letter topic when there is one and Kafka may still
/// be used for it, else the file. Reasons are counted here, once per letter.
pub(super) struct DeadLetters {
    /// The dead-letter topic and the producer that writes to it.
    pub(super) topic: Option<(String, Renewable<DeadLetterReports>)>,
    pub(super) file: Sink,
    pub(super) metrics: Arc<Metrics>,
    /// Set once shutdown ran out of time: dead letters go straight to the file.
    pub(super) expired: Arc<AtomicBool>,
    /// Dead letters the dead-letter producer did not write because it hit a fatal error.
    pub(super) pending: Pending<DeadLetter>,
    pub(super) hook: TestHook,
}

/// What became of an attempt to produce a dead letter to the topic.
pub(super) enum Attempt {
    Produced,
    QueueFull(DeadLetter),
    ToFile(DeadLetter),
}

impl DeadLetters {
    /// How long a dead letter waits for room in the dead-letter producer's queue before it goes
    /// to the file instead.
    const QUEUE_FULL_WAIT: Duration = Duration::from_secs(5);

    /// Sends `letter` on; waits (without blocking) while the dead-letter producer's queue or
    /// the file's queue is full. Its reason is counted where it goes (the file's sink counts its
    /// own).
    pub(super) async fn send(&self, letter: DeadLetter) {
        let until = Instant::now() + Self::QUEUE_FULL_WAIT;
        let mut letter = letter;
        loop {
            match self.produce(letter) {
                Attempt::Produced => return,
                Attempt::QueueFull(l) if Instant::now() < until => {
                    letter = l;
                    smol::Timer::after(Duration::from_millis(5)).await;
                }
                Attempt::QueueFull(l) | Attempt::ToFile(l) => {
                    letter = l;
                    break;
                }
            }
        }
        self.file.send(letter).await;
    }

    pub(super) fn produce(&self, mut letter: DeadLetter) -> Attempt {
        let Some((topic, renewable)) = &self.topic else {
            return Attempt::ToFile(letter);
        };
        if letter.file_only || self.expired.load(Ordering::Acquire) {
            return Attempt::ToFile(letter);
        }
        let producer = renewable.current();
        let ack = std::mem::take(&mut letter.record.ack);
        let r = &letter.record;
        let mut headers: Vec<(Name, String)> = Vec::with_capacity(r.headers.len() + 2);
        headers.push(("hotdog-original-topic".into(), r.topic.to_string()));
        headers.push(("hotdog-reason".into(), letter.reason.clone()));
        headers.extend(r.headers.iter().cloned());
        if let Some((name, id)) = ack.spool_id() {
            let id = crate::spool::RecordId::new(name, id);
            headers.push((
                crate::spool::ID_HEADER.into(),
                String::from_utf8_lossy(id.as_bytes()).into_owned(),
            ));
        }
        let letter_tag = Box::new(Letter {
            original: r.topic.to_string(),
            read_ms: r.read_ms,
            ack,
        });
        let envelope = producer::Envelope {
            topic,
            key: r.key.as_deref(),
            headers: &headers,
            extra: None,
            timestamp: r.read_ms.max(0),
        };
        let payload = producer::Payload::Copied(&r.payload);
        // Refused: the record's share goes back with it.
        let sent = producer::send(&producer, &envelope, payload, letter_tag)
            .map_err(|(e, refused)| (e, refused.ack))
            .map_err(|(e, ack)| {
                letter.record.ack = ack;
                e
            });
        match sent {
            Ok(()) => {
                self.metrics.dead_letter_reason(&letter.reason);
                if self.hook.count(1) {
                    producer::inject_fatal(&producer);
                }
                Attempt::Produced
            }
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                Attempt::QueueFull(letter)
            }
            // Kept for the next producer, which the publisher makes.
            Err(_) if renewable.is_fatal() => {
                keep(&self.pending, letter);
                Attempt::Produced
            }
            Err(e) => {
                throttle::DEAD_LETTER.warn(format_args!(
                    "the dead-letter topic {topic} refused a record: {e}"
                ));
                Attempt::ToFile(letter)
            }
        }
    }
}

//! Delivery reports: librdkafka's answer for each record, on its thread. Delivered records are
//! counted and their senders told; a record that failed for good becomes a dead letter; one
//! that a replaced producer purged is sent again by the next.

use super::*;
use hotdog_stages::core::{AckClock, Outcome};

/// What the publisher keeps with each record it hands to librdkafka, for its delivery report:
/// its payload when it is lent (librdkafka reads it without a copy of its own until then), its
/// topic's counters, and what a failed report no longer says (librdkafka gives no timestamp for
/// a record that failed) or never did (the order it was produced in).
pub(super) struct Tag {
    /// The payload lent to librdkafka and its block; `None` when librdkafka copied it.
    pub(super) lent: Option<(Bytes, Block)>,
    pub(super) counters: Arc<TopicCounters>,
    pub(super) read_ms: i64,
    /// The publisher's count of records produced: records sent again go oldest first.
    pub(super) seq: u64,
    /// The record's share of a message its sender waits for (RELP).
    pub(super) ack: Ack,
}

impl Tag {
    /// The tag of `record` (the `seq`th produced): its payload lent when its block may be, and
    /// its share of a waiting message.
    pub(super) fn of(record: &mut Record, counters: &Arc<TopicCounters>, seq: u64) -> Box<Tag> {
        let lent = record.block.lendable().then(|| {
            let payload = std::mem::take(&mut record.payload);
            (payload, std::mem::take(&mut record.block))
        });
        Box::new(Tag {
            lent,
            counters: counters.clone(),
            read_ms: record.read_ms,
            seq,
            ack: std::mem::take(&mut record.ack),
        })
    }

    /// `record` whole again, for a record that leaves without being produced: its payload
    /// back, if it was lent, and its share of a waiting message.
    pub(super) fn give_back(&mut self, mut record: Record) -> Record {
        if let Some((payload, block)) = self.lent.take() {
            (record.payload, record.block) = (payload, block);
        }
        record.ack = std::mem::take(&mut self.ack);
        record
    }
}

impl producer::OwnsPayload for Tag {
    fn payload(&self) -> &[u8] {
        self.lent.as_ref().map_or(&[], |(payload, _)| payload)
    }
}

/// Counts delivery reports of the connections' records; runs on librdkafka's thread. The
/// opaque of every record is its [`Tag`].
pub(super) struct Reports {
    pub(super) metrics: Arc<Metrics>,
    pub(super) clock: AckClock,
    pub(super) dead: Arc<DeadLetters>,
    pub(super) generation: Arc<Generation>,
    pub(super) pending: Pending<(u64, Record)>,
    /// Told when a broker refuses hotdog's login.
    pub(super) health: Arc<Health>,
}

impl ClientContext for Reports {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication) {
            self.health.refused(reason);
        }
        client_error(&self.generation, error, reason);
    }
}

/// librdkafka's errors about the cluster (every broker down, ...), which it repeats many times
/// a second while they last: logged through a throttle. A fatal error also marks the producer
/// for renewal.
pub(super) fn client_error(generation: &Generation, error: KafkaError, reason: &str) {
    if generation.on_error() {
        log::error!("librdkafka: {error}: {reason}");
        return;
    }
    throttle::KAFKA_CLIENT.log(
        log::Level::Error,
        format_args!("librdkafka: {error}: {reason}"),
    );
}

/// True when a failed delivery report is about a record to send again on a new producer:
/// its producer hit a fatal error (librdkafka then fails what it still had queued), or the
/// record was purged before the shutdown deadline, which only a renewal does.
pub(super) fn to_resend(generation: &Generation, error: &KafkaError, expired: &AtomicBool) -> bool {
    (generation.is_fatal() || purged(error)) && !expired.load(Ordering::Acquire)
}

/// True when librdkafka failed a record because it was purged, not because of Kafka.
pub(super) fn purged(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
    )
}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<Tag>;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: Box<Tag>) {
        let Tag {
            lent,
            counters,
            read_ms,
            seq,
            ack,
        } = *tag;
        match result {
            Ok(m) => {
                self.metrics.delivered(&counters);
                ack.settle(Outcome::Delivered {
                    partition: m.partition(),
                    offset: m.offset(),
                });
                if read_ms > 0 {
                    let now = self.clock.now(read_ms);
                    self.metrics
                        .latency
                        .observe(u64::try_from(now - read_ms).unwrap_or(0));
                }
            }
            Err((e, m)) if to_resend(&self.generation, e, &self.dead.expired) => {
                keep(&self.pending, (seq, record_of(m, lent, read_ms, true, ack)));
            }
            Err((e, m)) => {
                let kind = error_kind(e);
                let purged = purged(e);
                throttle::KAFKA_REFUSED.warn(format_args!(
                    "Kafka did not take a record for topic {}: {e}",
                    m.topic()
                ));
                self.metrics.failed(m.topic(), &kind);
                let record = record_of(m, lent, read_ms, false, ack);
                // Purged once shutdown ran out of time: not in Kafka, so a sender that waits
                // for it (RELP) is not answered, as for every record shutdown had no time for.
                let letter = if purged {
                    DeadLetter::shutdown_timeout(record)
                } else {
                    DeadLetter {
                        record,
                        reason: kind,
                        file_only: false,
                    }
                };
                smol::block_on(self.dead.send(letter));
            }
        }
    }
}

//! The one Kafka publisher task: it owns the librdkafka producer, takes batches of records from
//! the bounded channel the connections feed, and counts delivery reports.
//!
//! When librdkafka's own queue is full, the publisher waits and retries the same record, so the
//! channel fills up and the connections stop reading their sockets: backpressure reaches the
//! senders and nothing is dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::metrics::Metrics;
use crate::rules::Record;

/// What the connections send to the publisher.
pub type Batch = Vec<Record>;

/// Counts delivery reports; runs on librdkafka's polling thread.
pub struct Reports {
    metrics: Arc<Metrics>,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => self.metrics.delivered(m.topic()),
            Err((e, m)) => {
                log::warn!("Kafka did not take a record for topic {}: {e}", m.topic());
                self.metrics.failed(m.topic(), &error_kind(e));
            }
        }
    }
}

/// A short name for an error, used in metric names (`kafka.producer.error.<kind>`).
pub fn error_kind(e: &KafkaError) -> String {
    match e.rdkafka_error_code() {
        Some(code) => format!("{code:?}").to_lowercase(),
        None => "other".to_string(),
    }
}

pub struct Publisher {
    producer: Arc<ThreadedProducer<Reports>>,
    metrics: Arc<Metrics>,
}

impl Publisher {
    /// Creates the producer with every `conf` key. This does not need a reachable broker.
    pub fn new(
        conf: &std::collections::BTreeMap<String, String>,
        metrics: Arc<Metrics>,
    ) -> Result<Publisher, KafkaError> {
        let mut config = ClientConfig::new();
        // Retry for as long as it takes unless the operator says otherwise: librdkafka's own
        // default gives up on a record after five minutes without a broker.
        if !conf.contains_key("message.timeout.ms") && !conf.contains_key("delivery.timeout.ms") {
            config.set("message.timeout.ms", "0");
        }
        for (k, v) in conf {
            config.set(k, v);
        }
        let producer = config.create_with_context(Reports {
            metrics: metrics.clone(),
        })?;
        Ok(Publisher {
            producer: Arc::new(producer),
            metrics,
        })
    }

    /// Asks a broker for metadata, waiting up to `timeout`; the error says why none answered.
    pub fn probe(
        &self,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<(), KafkaError>> + Send + 'static {
        let producer = self.producer.clone();
        smol::unblock(move || producer.client().fetch_metadata(None, timeout).map(|_| ()))
    }

    /// Publishes every batch until the channel is closed (every connection is gone), then
    /// waits up to `flush_timeout` for Kafka to acknowledge what is still in flight. Returns
    /// how many records were still unacknowledged at the end.
    pub async fn run(self, rx: async_channel::Receiver<Batch>, flush_timeout: Duration) -> i32 {
        while let Ok(batch) = rx.recv().await {
            let mut topic_run: Option<(Arc<str>, u64)> = None;
            for record in batch {
                if !self.send(&record).await {
                    continue;
                }
                match &mut topic_run {
                    Some((t, n)) if Arc::ptr_eq(t, &record.topic) || **t == *record.topic => {
                        *n += 1
                    }
                    _ => {
                        if let Some((t, n)) = topic_run.take() {
                            self.metrics.submitted(&t, n);
                        }
                        topic_run = Some((record.topic.clone(), 1));
                    }
                }
            }
            if let Some((t, n)) = topic_run {
                self.metrics.submitted(&t, n);
            }
        }
        self.flush(flush_timeout).await
    }

    /// Hands one record to librdkafka, waiting while its queue is full; false when refused.
    async fn send(&self, record: &Record) -> bool {
        let mut backoff = Duration::from_millis(1);
        loop {
            let mut r: BaseRecord<'_, str, str> =
                BaseRecord::to(&record.topic).payload(record.payload.as_str());
            if let Some(k) = &record.key {
                r = r.key(k.as_str());
            }
            if !record.headers.is_empty() {
                let headers = record.headers.iter().fold(
                    OwnedHeaders::new_with_capacity(record.headers.len()),
                    |h, (name, value)| {
                        h.insert(Header {
                            key: name,
                            value: Some(value.as_str()),
                        })
                    },
                );
                r = r.headers(headers);
            }
            match self.producer.send(r) {
                Ok(()) => return true,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    smol::Timer::after(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                }
                Err((e, _)) => {
                    log::warn!("Kafka refused a record for topic {}: {e}", record.topic);
                    self.metrics.failed(&record.topic, &error_kind(&e));
                    return false;
                }
            }
        }
    }

    async fn flush(&self, timeout: Duration) -> i32 {
        let producer = self.producer.clone();
        let deadline = Instant::now() + timeout;
        smol::unblock(move || {
            // Flush in short steps so that progress is visible in the log.
            while producer.in_flight_count() > 0 && Instant::now() < deadline {
                let step = deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_secs(1));
                if producer.flush(step).is_err() {
                    log::info!(
                        "waiting for Kafka to acknowledge {} records",
                        producer.in_flight_count()
                    );
                }
            }
            producer.in_flight_count()
        })
        .await
    }
}

//! Reads partition 0 of a topic from the beginning and reports how many records it holds and
//! how many distinct sequence numbers (`seq=N` or `"seq":N`) below N they carry. Used by
//! dev/bench.py to check that every line arrived; reads until N records came or nothing new
//! came for 10 s (tansu's high watermark cannot be trusted after batched produce).
//!
//! `cargo run --release --example count -- BROKER TOPIC N`

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// The sequence number of a text payload, of a JSON one, or of an OpenTelemetry protobuf
/// record (`format: otlp_proto`) whose body holds one.
fn seq(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload)
        .ok()
        .and_then(seq_in)
        .or_else(|| seq_in_otlp(payload))
}

fn seq_in_otlp(payload: &[u8]) -> Option<u64> {
    use hotdog_stages::encode::otlp::{ExportLogsServiceRequest, Value};
    let request: ExportLogsServiceRequest = prost::Message::decode(payload).ok()?;
    let record = request
        .resource_logs
        .first()?
        .scope_logs
        .first()?
        .log_records
        .first()?;
    match record.body.as_ref()?.value.as_ref()? {
        Value::StringValue(text) => seq_in(text),
        Value::KvlistValue(list) => list
            .values
            .iter()
            .find(|kv| kv.key == "seq")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::IntValue(n) => u64::try_from(*n).ok(),
                _ => None,
            }),
        _ => None,
    }
}

fn seq_in(text: &str) -> Option<u64> {
    let at = text.find("seq")?;
    let digits: String = text[at + 3..]
        .trim_start_matches(['=', '"', ':'])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, broker, topic, n] = &args[..] else {
        eprintln!("usage: count BROKER TOPIC N");
        std::process::exit(2);
    };
    let Ok(n) = n.parse::<u64>() else {
        eprintln!("N must be a number");
        std::process::exit(2);
    };
    let consumer: BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", "hotdog-bench-count")
        .set("enable.auto.commit", "false")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("consumer: {e}");
            std::process::exit(1);
        }
    };
    let mut tpl = TopicPartitionList::new();
    if let Err(e) = tpl
        .add_partition_offset(topic, 0, Offset::Beginning)
        .and_then(|()| consumer.assign(&tpl))
    {
        eprintln!("assign: {e}");
        std::process::exit(1);
    }
    let mut records = 0u64;
    let mut seen = HashSet::new();
    let mut last = Instant::now();
    while records < n && last.elapsed() < Duration::from_secs(10) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            records += 1;
            last = Instant::now();
            if let Some(s) = m.payload().and_then(seq).filter(|s| *s < n) {
                seen.insert(s);
            }
        }
    }
    println!("{records} {}", seen.len());
}

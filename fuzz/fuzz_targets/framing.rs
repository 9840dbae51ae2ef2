//! Framing: any bytes, cut at any read boundaries, with any `max_message_size` and any
//! `framing`, never panic, and every frame is at most `max` bytes.
#![no_main]

use hotdog_stages::frame::lines::{Framer, Framing, Step};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let max = usize::from(first) + 1;
    // The second byte picks how much arrives per read.
    let chunk = rest.first().map_or(1, |b| usize::from(*b) + 1);
    // The third picks the framing.
    let framing = rest
        .get(1)
        .and_then(|b| Framing::from_name(Framing::NAMES[usize::from(*b) % Framing::NAMES.len()]))
        .unwrap_or_default();
    let mut framer = Framer::with(max, framing);
    let mut buf: Vec<u8> = Vec::new();
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        let mut start = 0;
        loop {
            match framer.next_frame(&buf[start..]) {
                Step::Frame { data, consumed, .. } => {
                    assert!(data.len() <= max, "a frame longer than max");
                    assert!(consumed > 0 && consumed <= buf.len() - start);
                    start += consumed;
                }
                Step::Skip { consumed } => {
                    assert!(consumed > 0 && consumed <= buf.len() - start);
                    start += consumed;
                }
                Step::NeedMore => break,
            }
        }
        buf.drain(..start);
    }
    if let Some(last) = framer.finish(&buf) {
        assert!(last.len() <= max.max(buf.len()));
    }
});

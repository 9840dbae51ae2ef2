//! PROXY protocol headers: any first bytes of a connection are a header, the start of one, not
//! one, or malformed; a header's length is within what was given.
//!
//! And a header then silence: the input is cut into chunks that arrive at times it says, after
//! which the peer says nothing more. Whatever came, the wait for the rest has a deadline (none
//! only for a quiet client that is not a load balancer, on a listener without `idle_timeout`,
//! before its first byte), within the PROXY timeout of its start, and what is buffered stays
//! shorter than the longest header.
#![no_main]

use std::time::Duration;

use hotdog_stages::frame::proxy::{deadline, parse, Expiry, Parsed, MAX_HEADER, TIMEOUT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Parsed::Header { len, .. } = parse(data) {
        assert!(len <= data.len());
    }
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let trusted = flags & 1 != 0;
    let idle = (flags & 2 != 0).then(|| Duration::from_millis(u64::from(flags >> 2) * 100));
    // Chunks: a length byte, a gap byte (tenths of a second since the last), then the bytes.
    let mut now = Duration::ZERO;
    let mut first_byte = None;
    let mut buf = Vec::new();
    let mut input = rest;
    loop {
        let wait = deadline(trusted, idle, first_byte);
        if let Some((at, expiry)) = wait {
            match (first_byte, expiry) {
                (None, Expiry::Idle) => assert_eq!(Some(at), idle),
                (None, Expiry::Header) => assert!(trusted && at == TIMEOUT),
                (Some(_), Expiry::Idle) => panic!("idle after a byte came"),
                (Some(f), Expiry::Header) => {
                    assert!(at <= if trusted { TIMEOUT } else { f + TIMEOUT })
                }
            }
        } else {
            assert!(first_byte.is_none() && !trusted && idle.is_none());
        }
        let [n, gap, tail @ ..] = input else {
            // Silence from here on: only a quiet stranger without idle_timeout waits for good.
            assert!(wait.is_some() || (buf.is_empty() && !trusted && idle.is_none()));
            return;
        };
        let n = usize::from(*n).min(tail.len());
        now += Duration::from_millis(u64::from(*gap) * 100);
        if wait.is_some_and(|(at, _)| now >= at) || n == 0 {
            // The deadline won, or the peer closed: the wait is over either way.
            return;
        }
        buf.extend_from_slice(&tail[..n]);
        input = &tail[n..];
        first_byte.get_or_insert(now);
        match parse(&buf) {
            Parsed::Incomplete => assert!(buf.len() < MAX_HEADER),
            Parsed::Header { len, .. } => {
                assert!(len <= buf.len());
                return;
            }
            Parsed::NotProxy | Parsed::Malformed(_) => return,
        }
    }
});

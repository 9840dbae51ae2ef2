//! RELP session input: any bytes are cut into frames and run through a session's checks until
//! the session would end; nothing panics, aborts, overflows or hangs, and every frame cut lies
//! inside the input.
#![no_main]

use hotdog_stages::frame::relp::{cut, Cut, Session};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the data limit, from none to more than any input.
    let Some((&limit, mut rest)) = data.split_first() else {
        return;
    };
    let max = usize::from(limit) * 64;
    let mut session = Session::default();
    loop {
        match cut(rest, max) {
            Cut::Frame { frame, consumed } => {
                assert!(consumed > 0 && consumed <= rest.len());
                assert!(frame.data.len() <= max);
                if session.command(&frame).is_err() {
                    return;
                }
                rest = &rest[consumed..];
            }
            Cut::NeedMore | Cut::Malformed(_) => return,
        }
    }
});

//! PROXY protocol headers: any first bytes of a connection are a header, the start of one, not
//! one, or malformed; a header's length is within what was given.
#![no_main]

use hotdog::proxy::{parse, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Parsed::Header { len, .. } = parse(data) {
        assert!(len <= data.len());
    }
});

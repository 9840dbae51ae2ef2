//! Configuration decoding with rule compilation (regexes, JMESPath, templates): any text is a
//! configuration or a list of located errors; nothing panics, aborts, overflows or hangs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match hotdog_stages::config::Config::parse("fuzz.yml", text, |_| None) {
        Ok(config) => {
            // A configuration that loads runs a line through its rules.
            let msg = hotdog_stages::parse::syslog::parse("<13>Nov 23 12:00:00 host app[1]: {\"a\":1} fuzz");
            let origin = hotdog_stages::core::Origin::default();
            if let (Some(routed), _) = config.rules.apply(&msg, &origin, None) {
                let _ = hotdog_stages::encode::record(routed, &msg, &origin, Default::default());
            }
        }
        Err(errors) => assert!(!errors.0.is_empty(), "refused without an error"),
    }
});

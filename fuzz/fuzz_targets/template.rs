//! Templates: any source compiles or is refused with a message, and a compiled one renders
//! without panicking.
#![no_main]

use std::borrow::Cow;

use hotdog_stages::route::template::{Lookup, Templates};
use libfuzzer_sys::fuzz_target;

struct Vars;

impl Lookup for Vars {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        match name {
            "msg" => Some(Cow::Borrowed("a \"quoted\" {{message}} & more")),
            "hostname" => Some(Cow::Borrowed("web1")),
            _ => None,
        }
    }
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"msg": "a \"quoted\" {{message}} & more", "hostname": "web1"})
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let mut templates = Templates::new();
    if let Ok(t) = templates.compile(source) {
        let _ = templates.render(&t, &Vars);
    }
});

//! What runs the stages: the server that starts and stops them from a configuration and
//! carries out what a reload changes, and the status server that shows them.

pub mod access;
pub mod client;
pub mod reload;
pub mod server;
pub mod status;
pub mod tap;
pub mod top;

use hotdog_stages::config::Outside;

/// The real world for a configuration being loaded: the environment, and the TLS and
/// dead-letter modules' checks of the files it names.
pub fn outside() -> Outside<'static> {
    fn var(k: &str) -> Option<String> {
        std::env::var(k).ok()
    }
    Outside {
        var: &var,
        check_tls: &crate::listen::tls::check,
        check_output: &crate::publish::deadletter::check,
    }
}

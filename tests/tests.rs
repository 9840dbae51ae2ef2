//! Integration tests: the real `hotdog` binary, a real broker, syslog over TCP.
//! One test binary; helpers in `util`.

mod util;

mod access;
mod cli;
mod delivery;
mod edges;
mod exactly_once;
mod fairness;
mod forward;
mod limits;
mod proxy;
mod records;
mod reload;
mod relp;
mod rsyslog;
mod sasl;
mod senders;
mod service;
mod spool;
mod status;
mod tap;
mod tls;
mod top;

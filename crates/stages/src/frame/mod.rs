//! Bytes into frames: syslog lines (LF or octet-counted), RELP frames, and the PROXY header
//! that a load balancer sends first.

pub mod lines;
pub mod proxy;
pub mod relp;

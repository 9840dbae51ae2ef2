//! A frame into a syslog message (RFC 5424, RFC 3164, or the line as it came) and the
//! message's time.

pub mod syslog;
pub mod time;

//! Parsing one syslog frame (RFC 5424, RFC 3164 and its common variants) into a [`Message`] that
//! borrows the frame. No I/O, no allocation.
//!
//! A frame that is neither is not an error: it becomes a message of format
//! [`Format::Unparsed`] whose `msg` is the whole frame, so rules still see it.

/// Which grammar a frame was read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Rfc5424,
    Rfc3164,
    /// Neither: `msg` is the whole frame and every other field is empty.
    Unparsed,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Rfc5424 => "rfc5424",
            Format::Rfc3164 => "rfc3164",
            Format::Unparsed => "unparsed",
        }
    }
}

/// One syslog message; every field borrows the frame it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub format: Format,
    /// `PRI` split into facility (0..=23) and severity (0..=7).
    pub facility: Option<u8>,
    pub severity: Option<u8>,
    /// The RFC 5424 version (1), `None` for the other formats.
    pub version: Option<u16>,
    pub timestamp: Option<&'a str>,
    pub hostname: Option<&'a str>,
    pub appname: Option<&'a str>,
    pub procid: Option<&'a str>,
    pub msgid: Option<&'a str>,
    /// RFC 5424 structured data, as written (`[id k="v"]...`), `None` for `-`.
    pub structured_data: Option<&'a str>,
    pub msg: &'a str,
}

const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];
const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

impl<'a> Message<'a> {
    /// A message that is only a body (what an unparseable frame becomes).
    pub fn unparsed(line: &'a str) -> Self {
        Message {
            format: Format::Unparsed,
            facility: None,
            severity: None,
            version: None,
            timestamp: None,
            hostname: None,
            appname: None,
            procid: None,
            msgid: None,
            structured_data: None,
            msg: line,
        }
    }

    /// The severity keyword (`err`, `info`, ...), as rules and templates see it.
    pub fn severity_name(&self) -> Option<&'static str> {
        self.severity.map(|s| SEVERITIES[usize::from(s)])
    }

    /// The facility keyword (`user`, `local0`, ...), as rules and templates see it.
    pub fn facility_name(&self) -> Option<&'static str> {
        self.facility.map(|f| FACILITIES[usize::from(f)])
    }
}

/// Parses one frame; never fails (see [`Format::Unparsed`]).
pub fn parse(line: &str) -> Message<'_> {
    let Some((pri, rest)) = priority(line) else {
        return Message::unparsed(line);
    };
    let facility = Some(pri / 8);
    let severity = Some(pri % 8);
    if let Some(after_version) = rest.strip_prefix("1 ") {
        if let Some(mut m) = rfc5424(after_version) {
            m.facility = facility;
            m.severity = severity;
            return m;
        }
        return Message::unparsed(line);
    }
    let mut m = rfc3164(rest);
    m.facility = facility;
    m.severity = severity;
    m
}

/// `<PRI>` with PRI in 0..=191, and the rest of the line.
fn priority(line: &str) -> Option<(u8, &str)> {
    let rest = line.strip_prefix('<')?;
    let end = rest.bytes().take(4).position(|b| b == b'>')?;
    let digits = &rest[..end];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let pri: u16 = digits.parse().ok()?;
    let pri = u8::try_from(pri).ok().filter(|p| *p <= 191)?;
    Some((pri, &rest[end + 1..]))
}

/// Where the first space is. Fields are short: a plain byte loop beats a general searcher.
fn space(s: &str) -> Option<usize> {
    s.bytes().position(|b| b == b' ')
}

/// Splits off the next space-delimited field; `-` is the NILVALUE.
fn field(s: &str) -> Option<(Option<&str>, &str)> {
    let (value, rest) = match space(s) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    };
    if value.is_empty() {
        return None;
    }
    Some(((value != "-").then_some(value), rest))
}

fn rfc5424(s: &str) -> Option<Message<'_>> {
    let (timestamp, s) = field(s)?;
    let (hostname, s) = field(s)?;
    let (appname, s) = field(s)?;
    let (procid, s) = field(s)?;
    let (msgid, s) = field(s)?;
    let (structured_data, msg) = if let Some(rest) = s.strip_prefix('-') {
        (None, rest)
    } else {
        let len = structured_data_len(s)?;
        (Some(&s[..len]), &s[len..])
    };
    let msg = match msg.strip_prefix(' ') {
        Some(m) => m,
        None if msg.is_empty() => msg,
        None => return None,
    };
    let msg = msg.strip_prefix('\u{feff}').unwrap_or(msg);
    Some(Message {
        format: Format::Rfc5424,
        facility: None,
        severity: None,
        version: Some(1),
        timestamp,
        hostname,
        appname,
        procid,
        msgid,
        structured_data,
        msg,
    })
}

/// The length of the SD-ELEMENTs at the start of `s` (`[id k="v" ...]...`), honouring the
/// `\"`, `\\` and `\]` escapes inside values.
fn structured_data_len(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while bytes.get(i) == Some(&b'[') {
        let mut in_value = false;
        i += 1;
        loop {
            match *bytes.get(i)? {
                b'\\' if in_value => i += 1,
                b'"' => in_value = !in_value,
                b']' if !in_value => break,
                _ => {}
            }
            i += 1;
        }
        i += 1;
    }
    (i > 0).then_some(i)
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// RFC 3164 after the PRI, best effort, as real senders write it:
/// `Mmm dd hh:mm:ss HOST TAG[PID]: MSG`, with an RFC 3339 timestamp instead (rsyslog's
/// forwarding format), with or without the hostname, with a year or fractional seconds after
/// the time, or with no header at all (then everything is the body).
fn rfc3164(s: &str) -> Message<'_> {
    let mut m = Message::unparsed(s);
    m.format = Format::Rfc3164;
    let Some((timestamp, rest)) = bsd_timestamp(s).or_else(|| rfc3339_timestamp(s)) else {
        // No timestamp: the content may still start with a tag.
        tag(&mut m, s);
        return m;
    };
    m.timestamp = Some(timestamp);
    // The hostname is there unless the next word is already the tag (`sshd[12]:` or `su:`).
    let word_end = space(rest).unwrap_or(rest.len());
    let word = &rest[..word_end];
    let is_tag = word.ends_with(':') || word.contains('[');
    if !word.is_empty() && !is_tag {
        m.hostname = Some(word);
        tag(&mut m, rest.get(word_end + 1..).unwrap_or(""));
    } else {
        tag(&mut m, rest);
    }
    m
}

/// `TAG[PID]: MSG` or `TAG: MSG`; otherwise the whole of `s` is the message.
fn tag<'a>(m: &mut Message<'a>, s: &'a str) {
    m.msg = s;
    let end = s
        .bytes()
        .position(|b| matches!(b, b'[' | b':' | b' '))
        .unwrap_or(s.len());
    if end == 0 || end > 48 {
        return;
    }
    let name = &s[..end];
    let rest = &s[end..];
    let (procid, rest) = match rest.strip_prefix('[') {
        Some(r) => match r.find(']') {
            Some(close) => (Some(&r[..close]), &r[close + 1..]),
            None => return,
        },
        None => (None, rest),
    };
    let Some(msg) = rest.strip_prefix(':') else {
        return;
    };
    m.appname = Some(name);
    m.procid = procid;
    m.msg = msg.strip_prefix(' ').unwrap_or(msg);
}

/// `Mmm dd hh:mm:ss` (day space-padded or not), optionally followed by `.fff` or ` yyyy`.
fn bsd_timestamp(s: &str) -> Option<(&str, &str)> {
    let b = s.as_bytes();
    if b.len() < 15 || !MONTHS.contains(&s.get(..3)?) || b[3] != b' ' {
        return None;
    }
    let mut i = 4;
    if b[i] == b' ' {
        i += 1;
    }
    let day_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if !(1..=2).contains(&(i - day_start)) || b.get(i) != Some(&b' ') {
        return None;
    }
    i += 1;
    let time = b.get(i..i + 8)?;
    let shape_ok = time.iter().enumerate().all(|(k, c)| {
        if k == 2 || k == 5 {
            *c == b':'
        } else {
            c.is_ascii_digit()
        }
    });
    if !shape_ok {
        return None;
    }
    i += 8;
    if b.get(i) == Some(&b'.') {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    if b.get(i) == Some(&b' ')
        && b.get(i + 1..i + 5)
            .is_some_and(|y| y.iter().all(u8::is_ascii_digit))
        && b.get(i + 5) == Some(&b' ')
    {
        i += 5;
    }
    let rest = match b.get(i) {
        None => "",
        Some(b' ') => &s[i + 1..],
        Some(_) => return None,
    };
    Some((&s[..i], rest))
}

/// An RFC 3339 timestamp (`2024-05-01T12:00:00.123+02:00`) as the first word.
fn rfc3339_timestamp(s: &str) -> Option<(&str, &str)> {
    let b = s.as_bytes();
    let date_ok = b.len() >= 19
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b't')
        && b[13] == b':';
    if !date_ok {
        return None;
    }
    let end = space(s).unwrap_or(s.len());
    Some((&s[..end], s.get(end + 1..).unwrap_or("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5424_full() {
        let line = "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 \
                    [exampleSDID@32473 iut=\"3\" eventSource=\"Appl\\]ication\"][x@1 a=\"b\"] \u{feff}An application event";
        let m = parse(line);
        assert_eq!(m.format, Format::Rfc5424);
        assert_eq!(m.facility_name(), Some("local4"));
        assert_eq!(m.severity_name(), Some("notice"));
        assert_eq!(m.version, Some(1));
        assert_eq!(m.timestamp, Some("2003-10-11T22:14:15.003Z"));
        assert_eq!(m.hostname, Some("mymachine.example.com"));
        assert_eq!(m.appname, Some("evntslog"));
        assert_eq!(m.procid, None);
        assert_eq!(m.msgid, Some("ID47"));
        assert_eq!(
            m.structured_data,
            Some("[exampleSDID@32473 iut=\"3\" eventSource=\"Appl\\]ication\"][x@1 a=\"b\"]")
        );
        assert_eq!(m.msg, "An application event");
    }

    #[test]
    fn rfc5424_nil_everything_and_no_msg() {
        let m = parse("<34>1 - - - - - -");
        assert_eq!(m.format, Format::Rfc5424);
        assert_eq!(m.severity, Some(2));
        assert_eq!(m.facility, Some(4));
        assert_eq!((m.timestamp, m.hostname, m.appname), (None, None, None));
        assert_eq!(m.msg, "");
    }

    #[test]
    fn rfc5424_broken_header_is_unparsed_whole_line() {
        for line in [
            "<34>1 2020-01-01T00:00:00Z host",
            "<34>1 - - - - - [unterminated",
        ] {
            let m = parse(line);
            assert_eq!(m.format, Format::Unparsed, "{line}");
            assert_eq!(m.msg, line);
        }
    }

    #[test]
    fn rfc3164_classic() {
        let m = parse("<34>Oct 11 22:14:15 mymachine su[123]: 'su root' failed for lonvick");
        assert_eq!(m.format, Format::Rfc3164);
        assert_eq!(m.timestamp, Some("Oct 11 22:14:15"));
        assert_eq!(m.hostname, Some("mymachine"));
        assert_eq!(m.appname, Some("su"));
        assert_eq!(m.procid, Some("123"));
        assert_eq!(m.msg, "'su root' failed for lonvick");
    }

    #[test]
    fn rfc3164_variants() {
        let m = parse("<13>Feb  5 17:32:18 host kernel: boot");
        assert_eq!(
            (m.timestamp, m.hostname, m.appname, m.msg),
            (
                Some("Feb  5 17:32:18"),
                Some("host"),
                Some("kernel"),
                "boot"
            )
        );
        // No hostname (what `logger` sends to a local socket).
        let m = parse("<13>Feb 15 17:32:18 sshd[99]: Accepted key");
        assert_eq!(
            (m.hostname, m.appname, m.procid, m.msg),
            (None, Some("sshd"), Some("99"), "Accepted key")
        );
        // rsyslog's RSYSLOG_ForwardFormat.
        let m = parse("<30>2024-05-01T12:00:00.123456+02:00 web1 nginx[7]: GET /");
        assert_eq!(
            (m.timestamp, m.hostname, m.appname, m.msg),
            (
                Some("2024-05-01T12:00:00.123456+02:00"),
                Some("web1"),
                Some("nginx"),
                "GET /"
            )
        );
        // Year and milliseconds after the time (network gear).
        let m = parse("<187>Mar  1 01:02:03.456 2024 sw1 LINK: down");
        assert_eq!(
            (m.timestamp, m.hostname, m.appname, m.msg),
            (
                Some("Mar  1 01:02:03.456 2024"),
                Some("sw1"),
                Some("LINK"),
                "down"
            )
        );
        // No header at all after PRI.
        let m = parse("<13>hello world");
        assert_eq!(m.format, Format::Rfc3164);
        assert_eq!((m.appname, m.msg), (None, "hello world"));
        // A body without a tag keeps every word.
        let m = parse("<13>Feb 15 17:32:18 host just words here");
        assert_eq!((m.appname, m.msg), (None, "just words here"));
    }

    #[test]
    fn no_priority_is_unparsed() {
        for line in ["hello world", "", "<>x", "<999>x", "<12", "{\"a\":1}"] {
            let m = parse(line);
            assert_eq!(m.format, Format::Unparsed, "{line}");
            assert_eq!(m.msg, line);
        }
    }

    #[test]
    fn odd_input_never_panics() {
        for line in [
            "<0>",
            "<191>1 ",
            "<1>1 - - - - - [",
            "<1>Jan",
            "<1>Jan 1 ",
            "<1>é:",
            "<1>a[b",
        ] {
            let _ = parse(line);
        }
    }
}

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
    /// When the frame was not valid UTF-8: the original bytes of `msg` (which holds them with
    /// U+FFFD in place of what was not UTF-8). A record whose payload is the message body as it
    /// came carries these.
    pub msg_bytes: Option<&'a [u8]>,
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
            msg_bytes: None,
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
    if let Some((version, after_version)) = version(rest) {
        if let Some(mut m) = rfc5424(after_version) {
            m.version = Some(version);
            m.facility = facility;
            m.severity = severity;
            return m;
        }
        // `1 ` is RFC 5424 for sure: a broken one is not read as anything else. Another
        // number may just start an RFC 3164 message without a header (`<13>2 disks failed`).
        if version == 1 {
            return Message::unparsed(line);
        }
    }
    let mut m = rfc3164(rest);
    m.facility = facility;
    m.severity = severity;
    m
}

/// RFC 5424's `VERSION SP`: a number from 1 to 999 without a leading zero.
fn version(s: &str) -> Option<(u16, &str)> {
    let end = s.bytes().take(4).position(|b| b == b' ')?;
    let digits = &s[..end];
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, &s[end + 1..]))
}

/// Parses a frame read as bytes, given `text`, its `String::from_utf8_lossy`: when bytes had to
/// be replaced, the message keeps the original bytes of its body ([`Message::msg_bytes`]).
pub fn parse_frame<'a>(frame: &'a [u8], text: &'a std::borrow::Cow<'a, str>) -> Message<'a> {
    let mut m = parse(text);
    if let std::borrow::Cow::Owned(_) = text {
        m.msg_bytes = Some(original_bytes(frame, text, m.msg));
    }
    m
}

/// The bytes of `raw` that `part` (a slice of `lossy`, which is `raw` with what was not UTF-8
/// replaced by U+FFFD, and which ends where `lossy` ends) was made from.
pub fn original_bytes<'r>(raw: &'r [u8], lossy: &str, part: &str) -> &'r [u8] {
    let offset = (part.as_ptr() as usize).wrapping_sub(lossy.as_ptr() as usize);
    if offset > lossy.len() {
        return raw;
    }
    // Walk both: valid runs are the same bytes; each invalid run became one U+FFFD (3 bytes).
    let (mut in_lossy, mut in_raw) = (0usize, 0usize);
    for chunk in raw.utf8_chunks() {
        let valid = chunk.valid().len();
        if offset <= in_lossy + valid {
            return &raw[in_raw + (offset - in_lossy)..];
        }
        in_lossy += valid;
        in_raw += valid;
        let invalid = chunk.invalid().len();
        if invalid > 0 {
            if offset < in_lossy + 3 {
                return &raw[in_raw..];
            }
            in_lossy += 3;
            in_raw += invalid;
        }
    }
    &raw[raw.len().min(in_raw)..]
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

/// Splits off the next space-delimited header field of at most `max` printable US-ASCII
/// characters (RFC 5424's `1*maxPRINTUSASCII`); `-` is the NILVALUE.
fn field(s: &str, max: usize) -> Option<(Option<&str>, &str)> {
    let (value, rest) = match space(s) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    };
    if value.is_empty() || value.len() > max || !value.bytes().all(|b| (33..=126).contains(&b)) {
        return None;
    }
    Some(((value != "-").then_some(value), rest))
}

/// RFC 5424 after `VERSION SP`: `TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP
/// STRUCTURED-DATA [SP MSG]`, each field within the ABNF's limits.
fn rfc5424(s: &str) -> Option<Message<'_>> {
    let (timestamp, s) = field(s, 32)?;
    if timestamp.is_some_and(|t| !is_rfc5424_timestamp(t)) {
        return None;
    }
    let (hostname, s) = field(s, 255)?;
    let (appname, s) = field(s, 48)?;
    let (procid, s) = field(s, 128)?;
    let (msgid, s) = field(s, 32)?;
    let (structured_data, msg) = if let Some(rest) = s.strip_prefix('-') {
        (None, rest)
    } else {
        let len = scan_structured_data(s, |_| {})?;
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
        msg_bytes: None,
    })
}

/// RFC 5424's `FULL-DATE "T" FULL-TIME`: `2003-10-11T22:14:15.003Z` or with an offset
/// (`-07:00`), at most 6 digits of fraction, `T` and `Z` upper case.
fn is_rfc5424_timestamp(t: &str) -> bool {
    let b = t.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let shape = digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && b.get(10) == Some(&b'T')
        && digits(11..13)
        && b.get(13) == Some(&b':')
        && digits(14..16)
        && b.get(16) == Some(&b':')
        && digits(17..19);
    if !shape {
        return false;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if !(1..=6).contains(&(i - start)) {
            return false;
        }
    }
    match &b[i..] {
        b"Z" => true,
        [b'+' | b'-', ..] => {
            b.len() == i + 6 && digits(i + 1..i + 3) && b[i + 3] == b':' && digits(i + 4..i + 6)
        }
        _ => false,
    }
}

/// A part of structured data, as [`scan_structured_data`] reads it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sd<'a> {
    /// An SD-ELEMENT begins, with this SD-ID.
    Element(&'a str),
    /// One of its SD-PARAMs: name and value, still escaped (see [`unescape`]).
    Param(&'a str, &'a str),
}

/// Reads RFC 5424 `1*SD-ELEMENT` at the start of `s` and returns its length; `None` when it
/// breaks the grammar. `visit` sees every element and param as it is read.
#[inline(always)]
fn scan_structured_data<'a>(s: &'a str, mut visit: impl FnMut(Sd<'a>)) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    // `SD-NAME`: 1 to 32 printable US-ASCII characters but `=`, space, `]` and `"`.
    // A plain loop: `take(33).position(..)` compiled to one several times slower.
    let name = |start: usize| -> Option<usize> {
        let mut end = start;
        while let Some(&c) = b.get(end) {
            if !(33..=126).contains(&c) || matches!(c, b'=' | b']' | b'"') {
                break;
            }
            end += 1;
        }
        (1..=32).contains(&(end - start)).then_some(end)
    };
    while b.get(i) == Some(&b'[') {
        let id_end = name(i + 1)?;
        visit(Sd::Element(&s[i + 1..id_end]));
        i = id_end;
        loop {
            match b.get(i)? {
                b']' => break,
                b' ' => {
                    let name_end = name(i + 1)?;
                    let param_name = &s[i + 1..name_end];
                    if b.get(name_end..name_end + 2) != Some(b"=\"") {
                        return None;
                    }
                    let start = name_end + 2;
                    let mut j = start;
                    loop {
                        match b.get(j)? {
                            b'\\' => j += 2,
                            b'"' => break,
                            // An unescaped `]` in a value breaks the grammar.
                            b']' => return None,
                            _ => j += 1,
                        }
                    }
                    visit(Sd::Param(param_name, s.get(start..j)?));
                    i = j + 1;
                }
                _ => return None,
            }
        }
        i += 1;
    }
    (i > 0).then_some(i)
}

/// A PARAM-VALUE without its escapes: `\"`, `\\` and `\]` stand for the character after the
/// backslash; a backslash before anything else is kept, as RFC 5424 says.
fn unescape(raw: &str) -> std::borrow::Cow<'_, str> {
    if !raw.contains('\\') {
        return std::borrow::Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(e @ ('"' | '\\' | ']')) => out.push(e),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// One part of structured data, in the order written: an SD-ELEMENT begins with its SD-ID, and
/// its params follow, values unescaped.
pub enum SdPart<'a> {
    Element(&'a str),
    Param(&'a str, std::borrow::Cow<'a, str>),
}

/// Visits the parts of `structured_data` in order, without allocating; true when they can be
/// written as they come: no SD-ID twice, no param twice in one element, and at most 24 parts.
/// Otherwise nothing is visited, and [`sd_elements`] is for grouping them. Each caller has a
/// copy of its own (it is generic), inlined where it is called.
#[inline(always)]
pub fn sd_parts(structured_data: &str, mut visit: impl FnMut(SdPart<'_>)) -> bool {
    // Up to this many parts are kept on the stack; more are grouped.
    const MOST: usize = 24;
    let mut parts = [Sd::Element(""); MOST];
    let mut n = 0;
    let mut fits = true;
    let _ = scan_structured_data(structured_data, |part| {
        if n < MOST {
            parts[n] = part;
            n += 1;
        } else {
            fits = false;
        }
    });
    let parts = &parts[..n];
    let repeats = |i: usize| match parts[i] {
        Sd::Element(id) => parts[..i].contains(&Sd::Element(id)),
        Sd::Param(name, _) => parts[..i]
            .iter()
            .rev()
            .take_while(|p| matches!(p, Sd::Param(..)))
            .any(|p| matches!(p, Sd::Param(other, _) if *other == name)),
    };
    if !fits || (0..n).any(repeats) {
        return false;
    }
    for part in parts {
        visit(match *part {
            Sd::Element(id) => SdPart::Element(id),
            Sd::Param(name, raw) => SdPart::Param(name, unescape(raw)),
        });
    }
    true
}

/// One SD-ELEMENT: its SD-ID and its params in order, values unescaped.
pub type SdElement<'a> = (&'a str, Vec<(&'a str, std::borrow::Cow<'a, str>)>);

/// The SD-ELEMENTs of `structured_data` (as [`Message::structured_data`] holds it), in order.
/// Structured data is only taken apart when a rule, a template or a record format asks.
pub fn sd_elements(structured_data: &str) -> Vec<SdElement<'_>> {
    let mut out: Vec<SdElement<'_>> = Vec::new();
    // The message's parser has already checked the grammar.
    let _ = scan_structured_data(structured_data, |part| match part {
        Sd::Element(id) => out.push((id, Vec::new())),
        Sd::Param(name, raw) => {
            if let Some((_, params)) = out.last_mut() {
                params.push((name, unescape(raw)));
            }
        }
    });
    out
}

/// The value of param `name` of the first element `id` of `structured_data`.
pub fn sd_value<'a>(
    structured_data: &'a str,
    id: &str,
    name: &str,
) -> Option<std::borrow::Cow<'a, str>> {
    let mut current = "";
    let mut found = None;
    let _ = scan_structured_data(structured_data, |part| match part {
        Sd::Element(i) => current = i,
        Sd::Param(n, raw) if found.is_none() && current == id && n == name => {
            found = Some(unescape(raw));
        }
        Sd::Param(..) => {}
    });
    found
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
    fn rfc5424_versions_follow_the_abnf() {
        let m = parse("<13>2 - - - - - - next version");
        assert_eq!(
            (m.format, m.version, m.msg),
            (Format::Rfc5424, Some(2), "next version")
        );
        let m = parse("<13>999 - - - - - -");
        assert_eq!(m.version, Some(999));
        // Not a VERSION (leading zero, four digits): read as RFC 3164 without a header.
        for line in ["<13>01 - - - - - - x", "<13>1000 - - - - - - x"] {
            let m = parse(line);
            assert_eq!((m.format, m.version), (Format::Rfc3164, None), "{line}");
        }
        // A number that is not followed by an RFC 5424 header is the start of a message.
        let m = parse("<13>2 disks failed");
        assert_eq!((m.format, m.msg), (Format::Rfc3164, "2 disks failed"));
        // `1 ` is RFC 5424 for sure: broken, it is the whole line, unparsed.
        let m = parse("<13>1 disks failed");
        assert_eq!((m.format, m.msg), (Format::Unparsed, "<13>1 disks failed"));
    }

    #[test]
    fn rfc5424_header_fields_keep_their_length_limits_and_characters() {
        let at = |host: &str, app: &str, proc_: &str, id: &str| {
            parse(&format!("<13>1 - {host} {app} {proc_} {id} - m")).format
        };
        let (h, a, p, i) = (
            "h".repeat(255),
            "a".repeat(48),
            "p".repeat(128),
            "i".repeat(32),
        );
        assert_eq!(at(&h, &a, &p, &i), Format::Rfc5424);
        assert_eq!(at(&format!("{h}h"), &a, &p, &i), Format::Unparsed);
        assert_eq!(at(&h, &format!("{a}a"), &p, &i), Format::Unparsed);
        assert_eq!(at(&h, &a, &format!("{p}p"), &i), Format::Unparsed);
        assert_eq!(at(&h, &a, &p, &format!("{i}i")), Format::Unparsed);
        // PRINTUSASCII only: no control characters, no non-ASCII.
        assert_eq!(at("ho\u{7f}st", "a", "p", "i"), Format::Unparsed);
        assert_eq!(at("hôst", "a", "p", "i"), Format::Unparsed);
    }

    #[test]
    fn rfc5424_timestamps_follow_the_abnf() {
        for ok in [
            "2003-10-11T22:14:15.003Z",
            "2003-10-11T22:14:15Z",
            "2003-08-24T05:14:15.000003-07:00",
            "1985-04-12T23:20:50.52+05:30",
        ] {
            let line = format!("<13>1 {ok} h a - - -");
            let m = parse(&line);
            assert_eq!((m.format, m.timestamp), (Format::Rfc5424, Some(ok)), "{ok}");
        }
        for bad in [
            "2003-10-11t22:14:15Z",
            "2003-10-11T22:14:15z",
            "2003-08-24T05:14:15.0000003-07:00",
            "2003-10-11T22:14:15",
            "2003-10-11T22:14:15.Z",
            "2003-10-11T22:14:15+0700",
            "Oct 11 22:14:15",
        ] {
            let line = format!("<13>1 {bad} h a - - -");
            let m = parse(&line);
            assert_eq!(m.format, Format::Unparsed, "{bad}");
        }
    }

    #[test]
    fn structured_data_follows_the_abnf_and_is_unescaped_on_demand() {
        let line = r#"<13>1 - h a - - [ex@32473 iut="3" q="say \"hi\" \\ \] \n"][origin ip="10.0.0.1" ip="10.0.0.2"][empty] body"#;
        let m = parse(line);
        assert_eq!(m.format, Format::Rfc5424);
        assert_eq!(m.msg, "body");
        let sd = m.structured_data.expect("structured data");
        let elements = sd_elements(sd);
        let flat: Vec<(&str, Vec<(&str, &str)>)> = elements
            .iter()
            .map(|(id, ps)| (*id, ps.iter().map(|(n, v)| (*n, v.as_ref())).collect()))
            .collect();
        assert_eq!(
            flat,
            [
                ("ex@32473", vec![("iut", "3"), ("q", r#"say "hi" \ ] \n"#)]),
                ("origin", vec![("ip", "10.0.0.1"), ("ip", "10.0.0.2")]),
                ("empty", vec![]),
            ]
        );
        assert_eq!(sd_value(sd, "origin", "ip").as_deref(), Some("10.0.0.1"));
        assert_eq!(
            sd_value(sd, "ex@32473", "q").as_deref(),
            Some(r#"say "hi" \ ] \n"#)
        );
        assert_eq!(sd_value(sd, "origin", "none"), None);
        for bad in [
            r#"[id k="unescaped ] bracket"]"#,
            r#"[id k="v" ]"#,
            "[id k=v]",
            r#"[id k="unterminated]"#,
            &format!(r#"[{} k="v"]"#, "x".repeat(33)),
            &format!(r#"[id {}="v"]"#, "k".repeat(33)),
            r#"[i=d k="v"]"#,
            "[]",
            r#"[id k="v"]x"#,
        ] {
            let line = format!("<13>1 - h a - - {bad}");
            let m = parse(&line);
            assert_eq!(m.format, Format::Unparsed, "{bad}");
        }
        // SD-NAMEs of 32 characters, the most there can be.
        let (id, name) = ("x".repeat(32), "k".repeat(32));
        let line = format!(r#"<13>1 - h a - - [{id} {name}="v"] m"#);
        let m = parse(&line);
        assert_eq!(m.format, Format::Rfc5424);
        assert_eq!(
            sd_value(m.structured_data.unwrap(), &id, &name).as_deref(),
            Some("v")
        );
        // A BOM starts a UTF-8 MSG; it is not part of the text.
        let m = parse("<13>1 - h a - - - \u{feff}text");
        assert_eq!(m.msg, "text");
    }

    #[test]
    fn the_original_bytes_of_a_part_of_a_lossy_line_are_found() {
        for raw in [
            &b"<13>Oct 11 22:14:15 h app: caf\xe9 ok"[..],
            b"<13>Oct 11 22:14:15 \xff\xfe app: body \xc3",
            b"<13>1 - h a - - - \xef\xbb\xbfbom then \x80",
            b"<13>\xe9",
        ] {
            let lossy = String::from_utf8_lossy(raw);
            let m = parse(&lossy);
            let original = original_bytes(raw, &lossy, m.msg);
            assert_eq!(String::from_utf8_lossy(original), m.msg, "{raw:?}");
            assert!(raw.ends_with(original));
        }
        let raw = b"<13>Oct 11 22:14:15 h app: caf\xe9";
        let lossy = String::from_utf8_lossy(raw);
        assert_eq!(original_bytes(raw, &lossy, parse(&lossy).msg), b"caf\xe9");
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
    fn odd_input_is_read_as_far_as_it_goes_and_never_invents_text() {
        // (line, format, PRI kept, msg): an RFC 5424 line broken after its version is not taken
        // for RFC 3164 (the line is kept whole), and a message is always the line's own tail.
        for (line, format, pri, msg) in [
            ("<0>", Format::Rfc3164, Some((0, 0)), ""),
            ("<191>1 ", Format::Unparsed, None, "<191>1 "),
            (
                "<1>1 - - - - - [",
                Format::Unparsed,
                None,
                "<1>1 - - - - - [",
            ),
            ("<1>Jan", Format::Rfc3164, Some((0, 1)), "Jan"),
            ("<1>Jan 1 ", Format::Rfc3164, Some((0, 1)), "Jan 1 "),
            ("<1>é:", Format::Rfc3164, Some((0, 1)), ""),
            ("<1>a[b", Format::Rfc3164, Some((0, 1)), "a[b"),
        ] {
            let m = parse(line);
            assert_eq!(m.format, format, "{line:?}");
            assert_eq!(m.facility.zip(m.severity), pri, "{line:?}");
            assert_eq!(m.msg, msg, "{line:?}");
            assert!(line.ends_with(m.msg), "{line:?}");
        }
    }
}

//! The message's time: its timestamp read as an instant (RFC 5424 and RFC 3339 as written,
//! RFC 3164 in the listener's zone and the nearest year) and normalised to RFC 3339, with a
//! per-thread cache for the lines of a burst, which share their timestamp. Pure: no I/O.

use std::time::SystemTime;

use crate::core::Origin;
use crate::parse::syslog::{self, Message};
/// When the line was read (the origin's clock), or now.
pub fn read_at(origin: &Origin) -> SystemTime {
    origin.clock.unwrap_or_else(crate::core::now)
}

/// The message's timestamp as an instant in its own offset: an RFC 5424 / RFC 3339 timestamp as
/// written; an RFC 3164 one (`Mmm dd hh:mm:ss`, perhaps `.fff` and a year) in the listener's
/// time zone (UTC by default), in the year written or else the year that puts it nearest to
/// when hotdog read the line (a December 31 line read on January 1 is from the old year).
pub fn message_time(msg: &Message<'_>, origin: &Origin) -> Option<jiff::Zoned> {
    with_message_time(msg, origin, jiff::Zoned::clone)
}

/// `f` given [`message_time`], which it borrows from this thread's cache of RFC 3164 times.
pub fn with_message_time<R>(
    msg: &Message<'_>,
    origin: &Origin,
    f: impl FnOnce(&jiff::Zoned) -> R,
) -> Option<R> {
    let text = msg.timestamp?;
    match written_time(text) {
        Some(written) => written.as_ref().map(f),
        None => bsd_cached(text, origin, |t| t.zoned().map(f))?,
    }
}

/// `Some` when `text` is an RFC 3339 timestamp: the instant in the offset the sender wrote.
fn written_time(text: &str) -> Option<Option<jiff::Zoned>> {
    // An RFC 3164 time starts with its month's name: not worth a failed parse.
    if !text.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let t = text.parse::<jiff::Timestamp>().ok()?;
    Some(offset_of(text).map(|offset| t.to_zoned(jiff::tz::TimeZone::fixed(offset))))
}

/// The instant of an RFC 5424 timestamp (its shape checked by the parser) in nanoseconds since
/// the epoch. Its whole seconds are jiff's reading of the text without the fraction, kept for
/// the next line on this thread with the same seconds and offset (the lines of a burst share
/// them); the fraction's digits are added to them.
pub fn rfc5424_nanos(text: &str) -> Option<i128> {
    // `YYYY-MM-DDThh:mm:ss` is 19 bytes, then perhaps `.` and 1 to 6 digits, then the offset.
    let whole = text.get(..19)?;
    let rest = &text[19..];
    let (fraction, offset) = match rest.strip_prefix('.') {
        Some(after) => after.split_at(after.bytes().take_while(u8::is_ascii_digit).count()),
        None => ("", rest),
    };
    if fraction.len() > 9 {
        return None;
    }
    let seconds = RFC5424_SECONDS.with(|cell| {
        let mut cache = cell.borrow_mut();
        let (key, seconds) = &mut *cache;
        if key.get(..19) != Some(whole) || key.get(19..) != Some(offset) {
            key.clear();
            key.push_str(whole);
            key.push_str(offset);
            *seconds = key.parse::<jiff::Timestamp>().ok().map(|t| t.as_second());
        }
        *seconds
    })?;
    let nanos = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0, |n, d| n * 10 + i128::from(d - b'0'));
    Some(i128::from(seconds) * 1_000_000_000 + nanos)
}

/// The RFC 3164 time last worked out on this thread. The lines of a burst mostly share their
/// timestamp text, their listener's zone and the second they were read in, so their time.
struct BsdTime {
    text: String,
    zone: jiff::tz::TimeZone,
    read: jiff::Timestamp,
    /// The read times it is for: the second `read` is in.
    second: std::ops::Range<SystemTime>,
    zoned: Option<Option<jiff::Zoned>>,
    rfc3339: Option<Option<String>>,
}

impl BsdTime {
    fn zoned(&mut self) -> Option<&jiff::Zoned> {
        let (text, zone, read) = (&self.text, &self.zone, self.read);
        self.zoned
            .get_or_insert_with(|| bsd_time(text, zone, read))
            .as_ref()
    }

    fn rfc3339(&mut self) -> Option<&str> {
        if self.rfc3339.is_none() {
            self.rfc3339 = Some(self.zoned().map(rfc3339));
        }
        self.rfc3339.as_ref().and_then(Option::as_deref)
    }

    /// The time of `text` in `zone` read at `read`, worked out when asked for.
    fn new(text: &str, zone: &jiff::tz::TimeZone, read: SystemTime) -> Option<BsdTime> {
        let at = jiff::Timestamp::try_from(read).ok()?;
        let start = SystemTime::from(jiff::Timestamp::from_second(at.as_second()).ok()?);
        Some(BsdTime {
            text: text.to_string(),
            zone: zone.clone(),
            read: at,
            second: start..start.checked_add(std::time::Duration::from_secs(1))?,
            zoned: None,
            rfc3339: None,
        })
    }

    /// True when it is the time of `text` in `zone` read at `read`: the same text, zone (by
    /// IANA name) and second.
    fn is_for(&self, text: &str, zone: &jiff::tz::TimeZone, read: SystemTime) -> bool {
        self.second.contains(&read)
            && self.text == text
            && self.zone.iana_name() == zone.iana_name()
    }
}

thread_local! {
    /// The text (without its fraction) and whole seconds of the last RFC 5424 timestamp read
    /// on this thread.
    static RFC5424_SECONDS: std::cell::RefCell<(String, Option<i64>)> =
        const { std::cell::RefCell::new((String::new(), None)) };
    static BSD_TIME: std::cell::RefCell<Option<BsdTime>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` on the time of the RFC 3164 `text` read by `origin` (in its listener's zone, UTC
/// by default), from this thread's cache when that is for the same text, zone and second. A
/// zone without an IANA name is never cached. `None` when the read time is out of range.
fn bsd_cached<T>(text: &str, origin: &Origin, f: impl FnOnce(&mut BsdTime) -> T) -> Option<T> {
    let utc = jiff::tz::TimeZone::UTC;
    let zone = origin.zone.as_ref().unwrap_or(&utc);
    let read = read_at(origin);
    if zone.iana_name().is_none() {
        return BsdTime::new(text, zone, read).as_mut().map(f);
    }
    BSD_TIME.with(|cell| {
        let mut cache = cell.borrow_mut();
        if !cache.as_ref().is_some_and(|c| c.is_for(text, zone, read)) {
            *cache = BsdTime::new(text, zone, read);
        }
        cache.as_mut().map(f)
    })
}

/// The offset at the end of an RFC 3339 timestamp (`Z`, `+02:00`).
fn offset_of(text: &str) -> Option<jiff::tz::Offset> {
    if text.ends_with(['Z', 'z']) {
        return Some(jiff::tz::Offset::UTC);
    }
    let sign_at = text.rfind(['+', '-'])?;
    let (sign, rest) = text[sign_at..].split_at(1);
    let (h, m) = rest.split_once(':')?;
    let seconds = h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60;
    jiff::tz::Offset::from_seconds(if sign == "-" { -seconds } else { seconds }).ok()
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Mmm dd hh:mm:ss[.fff][ yyyy]` in `zone`, the year from the text or nearest to `read`.
fn bsd_time(text: &str, zone: &jiff::tz::TimeZone, read: jiff::Timestamp) -> Option<jiff::Zoned> {
    let mut words = text.split_whitespace();
    let name = words.next()?;
    let month = MONTHS.iter().position(|m| *m == name)? + 1;
    let day: i8 = words.next()?.parse().ok()?;
    let time = words.next()?;
    let year: Option<i16> = words.next().and_then(|y| y.parse().ok());
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut parts = hms.split(':').map(|p| p.parse::<i8>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    let nanos: i32 = if fraction.is_empty() {
        0
    } else {
        let digits = &fraction[..fraction.len().min(9)];
        digits.parse::<i32>().ok()? * 10i32.pow(9 - digits.len() as u32)
    };
    let at = |year: i16| {
        jiff::civil::DateTime::new(year, month as i8, day, h, m, s, nanos)
            .ok()
            .and_then(|dt| dt.to_zoned(zone.clone()).ok())
    };
    if let Some(y) = year {
        return at(y);
    }
    let this = read.to_zoned(zone.clone()).year();
    [this - 1, this, this + 1]
        .into_iter()
        .filter_map(at)
        .min_by_key(|z| (z.timestamp().as_second() - read.as_second()).unsigned_abs())
}

/// The message's time in RFC 3339 with its offset, for templates and the JSON envelope: an
/// RFC 5424 timestamp is one already (the parser checked it) and is taken as written.
pub fn normalised_time<'m>(
    msg: &Message<'m>,
    origin: &Origin,
) -> Option<std::borrow::Cow<'m, str>> {
    if msg.format == syslog::Format::Rfc5424 {
        return msg.timestamp.map(std::borrow::Cow::Borrowed);
    }
    with_normalised_time(msg, origin, |t| std::borrow::Cow::Owned(t.to_string()))
}

/// `f` given [`normalised_time`], which it borrows from this thread's cache of RFC 3164 times.
pub fn with_normalised_time<R>(
    msg: &Message<'_>,
    origin: &Origin,
    f: impl FnOnce(&str) -> R,
) -> Option<R> {
    let text = msg.timestamp?;
    if msg.format == syslog::Format::Rfc5424 {
        return Some(f(text));
    }
    match written_time(text) {
        Some(written) => written.map(|z| f(&rfc3339(&z))),
        None => bsd_cached(text, origin, |t| t.rfc3339().map(f))?,
    }
}

/// The message's time in RFC 3339 with its offset (`2024-05-01T12:00:00.123+02:00`).
pub fn rfc3339(z: &jiff::Zoned) -> String {
    let offset = z.offset();
    let base = z.datetime().strftime("%Y-%m-%dT%H:%M:%S%.f").to_string();
    if offset == jiff::tz::Offset::UTC {
        format!("{base}Z")
    } else {
        let secs = offset.seconds();
        let sign = if secs < 0 { '-' } else { '+' };
        let secs = secs.unsigned_abs();
        format!("{base}{sign}{:02}:{:02}", secs / 3600, secs % 3600 / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(read: &str, zone: Option<&str>) -> Origin {
        Origin {
            clock: Some(SystemTime::from(read.parse::<jiff::Timestamp>().unwrap())),
            zone: zone.map(|z| jiff::tz::TimeZone::get(z).unwrap()),
            ..Origin::default()
        }
    }
    fn time_of(line: &str, origin: &Origin) -> Option<String> {
        message_time(&syslog::parse(line), origin).map(|z| rfc3339(&z))
    }
    #[test]
    fn a_cached_rfc3164_time_is_only_reused_for_the_same_text_zone_and_second() {
        let line = "<13>Dec 31 23:59:59 h a: x";
        let paris = at("2025-01-01T00:00:30Z", Some("Europe/Paris"));
        let utc = at("2025-01-01T00:00:30Z", None);
        let later = at("2025-09-01T00:00:30Z", None);
        for _ in 0..2 {
            assert_eq!(
                time_of(line, &paris).as_deref(),
                Some("2024-12-31T23:59:59+01:00")
            );
            assert_eq!(time_of(line, &utc).as_deref(), Some("2024-12-31T23:59:59Z"));
            // Eight months on, the nearest December 31 is the one to come.
            assert_eq!(
                time_of(line, &later).as_deref(),
                Some("2025-12-31T23:59:59Z")
            );
            assert_eq!(
                time_of("<13>Dec 31 23:59:58 h a: x", &utc).as_deref(),
                Some("2024-12-31T23:59:58Z")
            );
            // message_time (OTLP) and normalised_time share the cache.
            let msg = syslog::parse(line);
            assert_eq!(
                message_time(&msg, &paris).map(|z| rfc3339(&z)).as_deref(),
                Some("2024-12-31T23:59:59+01:00")
            );
        }
    }
    #[test]
    fn rfc3164_years_are_the_nearest_to_when_the_line_was_read() {
        let new_year = at("2025-01-01T00:00:30Z", None);
        assert_eq!(
            time_of("<13>Dec 31 23:59:59 h a: late", &new_year).as_deref(),
            Some("2024-12-31T23:59:59Z")
        );
        assert_eq!(
            time_of("<13>Jan  1 00:00:10 h a: on time", &new_year).as_deref(),
            Some("2025-01-01T00:00:10Z")
        );
        // A clock a little ahead of hotdog's, on New Year's Eve.
        let eve = at("2024-12-31T23:59:50Z", None);
        assert_eq!(
            time_of("<13>Jan  1 00:00:05 h a: early", &eve).as_deref(),
            Some("2025-01-01T00:00:05Z")
        );
        // A year written after the time wins; fractions are kept.
        assert_eq!(
            time_of("<13>Mar  1 01:02:03.456 2019 sw1 LINK: down", &new_year).as_deref(),
            Some("2019-03-01T01:02:03.456Z")
        );
        // February 29 only exists in a leap year: the nearest one that has it.
        let leap = at("2024-03-01T00:00:00Z", None);
        assert_eq!(
            time_of("<13>Feb 29 12:00:00 h a: x", &leap).as_deref(),
            Some("2024-02-29T12:00:00Z")
        );
    }
    #[test]
    fn rfc3164_times_are_read_in_the_listeners_zone() {
        let paris = at("2024-07-01T12:00:00Z", Some("Europe/Paris"));
        assert_eq!(
            time_of("<13>Jul  1 14:00:00 h a: summer", &paris).as_deref(),
            Some("2024-07-01T14:00:00+02:00")
        );
        let ny = at("2024-01-15T12:00:00Z", Some("America/New_York"));
        assert_eq!(
            time_of("<13>Jan 15 07:00:00 h a: winter", &ny).as_deref(),
            Some("2024-01-15T07:00:00-05:00")
        );
    }
    #[test]
    fn rfc5424_and_rfc3339_times_keep_their_offset() {
        let o = at("2024-07-01T12:00:00Z", Some("Europe/Paris"));
        assert_eq!(
            time_of("<13>1 2003-08-24T05:14:15.000003-07:00 h a - - -", &o).as_deref(),
            Some("2003-08-24T05:14:15.000003-07:00")
        );
        assert_eq!(
            time_of("<13>2024-05-01T12:00:00.123+02:00 web1 nginx: x", &o).as_deref(),
            Some("2024-05-01T12:00:00.123+02:00")
        );
        assert_eq!(time_of("<13>1 - h a - - -", &o), None);
    }
    #[test]
    fn an_rfc5424_time_in_nanoseconds_is_what_jiff_reads() {
        // In an order that hits and misses the cache of whole seconds.
        let times = [
            "2003-10-11T22:14:15.003Z",
            "2003-10-11T22:14:15.000004Z",
            "2003-10-11T22:14:15Z",
            "2003-10-11T22:14:15.5+02:00",
            "2003-10-11T22:14:15.123456-07:30",
            "2003-10-11T22:14:16.1Z",
            "2016-12-31T23:59:60.25Z",
            "1969-12-31T23:59:59.5Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999-00:00",
            "2003-02-30T00:00:00Z",
            "2003-10-11T24:00:00Z",
            "2003-10-11T22:14:15.003+25:00",
        ];
        for text in times.iter().chain(&times) {
            let jiff = text
                .parse::<jiff::Timestamp>()
                .ok()
                .map(|t| t.as_nanosecond());
            assert_eq!(rfc5424_nanos(text), jiff, "{text}");
        }
    }
}

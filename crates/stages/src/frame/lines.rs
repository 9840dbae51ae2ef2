//! Splitting a byte stream into syslog frames.
//!
//! Two framings are in use on TCP (RFC 6587): delimited ("non-transparent framing": each message
//! ends with `\n`, what `logger` and most plain senders do, or with a NUL, what some appliances
//! and go-syslog senders do) and octet-counted (`LEN SP MSG`, what rsyslog and syslog-ng use for
//! RFC 5425 / TLS). By default ([`Framing::Auto`]) they are told apart frame by frame: a frame that
//! starts with a non-zero digit, more digits, a space and `<` (a syslog PRI) is octet-counted;
//! anything else runs up to the next `\n` or NUL, so a plain line that begins `404 Not found` is a
//! line. A listener may pin one framing.
//!
//! The framer never holds more than `max` bytes of a frame: a longer frame is cut to `max` bytes,
//! handed out marked as truncated, and the rest of it is skipped.
//!
//! This module does no I/O: the caller owns the buffer, appends what it reads, and asks for frames.

/// What [`Framer::next_frame`] found at the start of the buffer it was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// A whole frame (or the first `max` bytes of a longer one). `consumed` bytes of the buffer
    /// are used up, including the frame's header and delimiter.
    Frame {
        data: &'a [u8],
        truncated: bool,
        consumed: usize,
    },
    /// Bytes that belong to no frame (the tail of a truncated frame, blank lines); drop them.
    Skip { consumed: usize },
    /// The buffer ends inside a frame: read more and call again with the same bytes in front.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At a frame boundary.
    Start,
    /// Skipping the rest of a truncated newline-delimited frame, up to and including its `\n`.
    DiscardLine,
    /// Skipping the rest of a truncated octet-counted frame: this many bytes are left.
    DiscardBytes(usize),
}

/// The longest length prefix accepted: ten digits covers any frame a sender could mean.
const MAX_LEN_DIGITS: usize = 10;

/// How a listener cuts its stream into frames (its `framing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// Octet-counted where a frame starts `LEN SP <`, else up to the next `\n` or NUL.
    #[default]
    Auto,
    /// Up to the next `\n` only (a NUL inside a message stays in it).
    Lf,
    /// `LEN SP MSG` whatever follows the space; a frame without a count runs up to the next
    /// `\n`, as the sender that lost count most likely meant.
    OctetCounted,
    /// Up to the next NUL only (a `\n` inside a message stays in it: multi-line messages).
    Nul,
}

impl Framing {
    pub const NAMES: [&'static str; 4] = ["auto", "lf", "octet_counted", "nul"];

    pub fn from_name(name: &str) -> Option<Framing> {
        Some(match name {
            "auto" => Framing::Auto,
            "lf" => Framing::Lf,
            "octet_counted" => Framing::OctetCounted,
            "nul" => Framing::Nul,
            _ => return None,
        })
    }

    /// Where the delimited frame at the start of `buf` ends (its delimiter), if it does there.
    fn delimiter(self, buf: &[u8]) -> Option<usize> {
        match self {
            Framing::Auto => memchr::memchr2(b'\n', b'\0', buf),
            Framing::Lf | Framing::OctetCounted => memchr(b'\n', buf),
            Framing::Nul => memchr(b'\0', buf),
        }
    }
}

/// Splits frames out of a byte buffer; keeps the little state needed between reads.
#[derive(Debug, Clone)]
pub struct Framer {
    max: usize,
    framing: Framing,
    state: State,
}

impl Framer {
    /// A framer that cuts frames to at most `max` bytes (at least 1), telling the framings
    /// apart frame by frame ([`Framing::Auto`]).
    pub fn new(max: usize) -> Self {
        Self::with(max, Framing::Auto)
    }

    /// A framer that cuts frames as `framing` says, to at most `max` bytes (at least 1).
    pub fn with(max: usize, framing: Framing) -> Self {
        Framer {
            max: max.max(1),
            framing,
            state: State::Start,
        }
    }

    /// The next step for `buf`, the bytes not yet consumed.
    pub fn next_frame<'a>(&mut self, buf: &'a [u8]) -> Step<'a> {
        if buf.is_empty() {
            return Step::NeedMore;
        }
        match self.state {
            State::DiscardLine => match self.framing.delimiter(buf) {
                Some(nl) => {
                    self.state = State::Start;
                    Step::Skip { consumed: nl + 1 }
                }
                None => Step::Skip {
                    consumed: buf.len(),
                },
            },
            State::DiscardBytes(left) => {
                let n = left.min(buf.len());
                self.state = if n == left {
                    State::Start
                } else {
                    State::DiscardBytes(left - n)
                };
                Step::Skip { consumed: n }
            }
            State::Start => self.start(buf),
        }
    }

    /// What is left in the buffer when the peer closed the connection: a last newline-delimited
    /// frame without its `\n`, or `None`. An incomplete octet-counted frame is handed out as it is
    /// (it is all the sender will ever send of it).
    pub fn finish<'a>(&mut self, buf: &'a [u8]) -> Option<&'a [u8]> {
        let state = std::mem::replace(&mut self.state, State::Start);
        if state != State::Start || buf.is_empty() {
            return None;
        }
        let data = match self.octet_header(buf) {
            Some((hdr, _)) => &buf[hdr..],
            None => buf,
        };
        let data = trim_frame(data);
        if data.is_empty() {
            None
        } else {
            Some(&data[..data.len().min(self.max)])
        }
    }

    fn start<'a>(&mut self, buf: &'a [u8]) -> Step<'a> {
        // Blank lines and stray delimiters between frames (some senders put `\n` after an
        // octet-counted frame, or send keep-alive newlines).
        let blank = buf
            .iter()
            .position(|&b| !matches!(b, b'\n' | b'\r' | b'\0'))
            .unwrap_or(buf.len());
        if blank > 0 {
            return Step::Skip { consumed: blank };
        }
        match self.octet_header(buf) {
            Some((hdr, len)) => self.octet_counted(buf, hdr, len),
            None if self.partial_header(buf) => Step::NeedMore,
            None => self.newline_delimited(buf),
        }
    }

    /// The octet count at the start of `buf`, where this framing looks for one.
    fn octet_header(&self, buf: &[u8]) -> Option<(usize, usize)> {
        match self.framing {
            Framing::Lf | Framing::Nul => None,
            Framing::OctetCounted => octet_header(buf),
            Framing::Auto => octet_header(buf).filter(|&(hdr, _)| buf.get(hdr) == Some(&b'<')),
        }
    }

    /// True while `buf` could still become an octet count once more bytes arrive.
    fn partial_header(&self, buf: &[u8]) -> bool {
        match self.framing {
            Framing::Lf | Framing::Nul => false,
            Framing::OctetCounted => looks_like_partial_header(buf),
            // The count and its space, and not yet what follows.
            Framing::Auto => {
                looks_like_partial_header(buf)
                    || octet_header(buf).is_some_and(|(hdr, _)| hdr == buf.len())
            }
        }
    }

    fn octet_counted<'a>(&mut self, buf: &'a [u8], hdr: usize, len: usize) -> Step<'a> {
        let body = &buf[hdr..];
        if len <= self.max {
            if body.len() < len {
                return Step::NeedMore;
            }
            return Step::Frame {
                data: trim_frame(&body[..len]),
                truncated: false,
                consumed: hdr + len,
            };
        }
        if body.len() < self.max {
            return Step::NeedMore;
        }
        self.state = State::DiscardBytes(len - self.max);
        Step::Frame {
            data: &body[..self.max],
            truncated: true,
            consumed: hdr + self.max,
        }
    }

    fn newline_delimited<'a>(&mut self, buf: &'a [u8]) -> Step<'a> {
        let window = &buf[..buf.len().min(self.max + 1)];
        match self.framing.delimiter(window) {
            Some(nl) if nl <= self.max => Step::Frame {
                data: trim_frame(&buf[..nl]),
                truncated: false,
                consumed: nl + 1,
            },
            _ if buf.len() > self.max => {
                self.state = State::DiscardLine;
                Step::Frame {
                    data: &buf[..self.max],
                    truncated: true,
                    consumed: self.max,
                }
            }
            _ => Step::NeedMore,
        }
    }
}

/// `Some((header length, frame length))` when `buf` starts with an RFC 6587 octet count.
fn octet_header(buf: &[u8]) -> Option<(usize, usize)> {
    if !matches!(buf.first(), Some(b'1'..=b'9')) {
        return None;
    }
    let digits = buf
        .iter()
        .take(MAX_LEN_DIGITS + 1)
        .position(|b| !b.is_ascii_digit())?;
    if digits > MAX_LEN_DIGITS || buf[digits] != b' ' {
        return None;
    }
    let len = buf[..digits]
        .iter()
        .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
    Some((digits + 1, len))
}

/// True while `buf` could still become an octet count once more bytes arrive (only digits so far).
fn looks_like_partial_header(buf: &[u8]) -> bool {
    matches!(buf.first(), Some(b'1'..=b'9'))
        && buf.len() <= MAX_LEN_DIGITS
        && buf.iter().all(u8::is_ascii_digit)
}

/// A datagram's frame (UDP: one message per datagram): at most `max` bytes of it, trimmed as a
/// stream's frames are, and whether it was cut; `None` when nothing is left.
pub fn datagram(data: &[u8], max: usize) -> Option<(&[u8], bool)> {
    let frame = trim_frame(&data[..data.len().min(max)]);
    (!frame.is_empty()).then_some((frame, data.len() > max))
}

/// Drops the `\r`, NUL and `\n` that senders leave at the end of a frame.
fn trim_frame(mut data: &[u8]) -> &[u8] {
    while let [rest @ .., b'\r' | b'\0' | b'\n'] = data {
        data = rest;
    }
    data
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    memchr::memchr(needle, haystack)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in chunks of `chunk` bytes and collects (frame, truncated).
    fn frames(max: usize, input: &[u8], chunk: usize) -> Vec<(String, bool)> {
        framed(Framing::Auto, max, input, chunk)
    }

    fn framed(framing: Framing, max: usize, input: &[u8], chunk: usize) -> Vec<(String, bool)> {
        let mut framer = Framer::with(max, framing);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            buf.extend_from_slice(piece);
            let mut pos = 0;
            loop {
                match framer.next_frame(&buf[pos..]) {
                    Step::Frame {
                        data,
                        truncated,
                        consumed,
                    } => {
                        out.push((String::from_utf8_lossy(data).into_owned(), truncated));
                        pos += consumed;
                    }
                    Step::Skip { consumed } => pos += consumed,
                    Step::NeedMore => break,
                }
            }
            buf.drain(..pos);
            assert!(buf.len() <= max + chunk + MAX_LEN_DIGITS + 1, "buffer grew");
        }
        if let Some(last) = framer.finish(&buf) {
            out.push((String::from_utf8_lossy(last).into_owned(), false));
        }
        out
    }

    fn plain(list: &[&str]) -> Vec<(String, bool)> {
        list.iter().map(|s| (s.to_string(), false)).collect()
    }

    /// `input` makes the frames `expected` however it is cut into reads.
    fn in_any_chunking(input: &[u8], expected: &[&str]) {
        for chunk in 1..input.len() {
            assert_eq!(frames(1024, input, chunk), plain(expected), "chunk {chunk}");
        }
    }

    #[test]
    fn newline_frames_in_any_chunking() {
        let input = b"<13>one\n<13>two\r\n<13>three\0\n\n<13>four";
        in_any_chunking(input, &["<13>one", "<13>two", "<13>three", "<13>four"]);
    }

    #[test]
    fn octet_counted_frames_in_any_chunking() {
        let input = b"7 <13>one9 <13>t\nwo!8 <13>four\n";
        in_any_chunking(input, &["<13>one", "<13>t\nwo!", "<13>four"]);
    }

    #[test]
    fn mixed_framings_are_detected_per_frame() {
        let input = b"7 <13>one\n<13>two\n9 <13>three";
        assert_eq!(
            frames(1024, input, 3),
            plain(&["<13>one", "<13>two", "<13>three"])
        );
    }

    #[test]
    fn digits_without_space_are_a_newline_frame() {
        assert_eq!(frames(1024, b"12345\n0 x\n", 4), plain(&["12345", "0 x"]));
    }

    #[test]
    fn long_newline_frame_is_truncated_and_the_rest_skipped() {
        let long = "x".repeat(50);
        let input = format!("<13>{long}\n<13>next\n");
        for chunk in [1, 7, 16, 100] {
            assert_eq!(
                frames(16, input.as_bytes(), chunk),
                vec![
                    (format!("<13>{}", &long[..12]), true),
                    ("<13>next".to_string(), false)
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn long_octet_frame_is_truncated_and_the_rest_skipped() {
        let body = format!("<13>{}", "y".repeat(46));
        let input = format!("{} {body}8 <13>next", body.len());
        for chunk in [1, 5, 64] {
            assert_eq!(
                frames(16, input.as_bytes(), chunk),
                vec![
                    (body[..16].to_string(), true),
                    ("<13>next".to_string(), false)
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn frame_of_exactly_max_is_not_truncated() {
        let body = format!("<13>{}", "z".repeat(12));
        assert_eq!(
            frames(16, format!("{body}\n16 {body}").as_bytes(), 5),
            plain(&[&body, &body])
        );
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        let out = frames(16, b"9999999999 <13>abc", 4);
        assert_eq!(out, plain(&["<13>abc"]));
    }

    #[test]
    fn nul_terminated_messages_are_frames_of_their_own() {
        let input = b"<13>one\0<13>two\0\0<13>three\n<13>four\0";
        in_any_chunking(input, &["<13>one", "<13>two", "<13>three", "<13>four"]);
    }

    #[test]
    fn a_line_that_starts_with_digits_and_a_space_is_a_line() {
        // `404 Not found` is no octet count: what follows the space is not a PRI.
        let input = b"404 Not found here\n200 OK\n<13>next\n12 <13>counted";
        in_any_chunking(
            input,
            &["404 Not found here", "200 OK", "<13>next", "<13>counted"],
        );
    }

    #[test]
    fn a_pinned_framing_cuts_only_as_it_says() {
        let input = b"11 <13>a\nb\0c\n9 nopri\0\n";
        assert_eq!(
            framed(Framing::Lf, 1024, input, 3),
            plain(&["11 <13>a", "b\0c", "9 nopri"])
        );
        assert_eq!(
            framed(Framing::Nul, 1024, input, 3),
            plain(&["11 <13>a\nb", "c\n9 nopri"])
        );
        // Counted whatever follows the space; a frame without a count is a line.
        assert_eq!(
            framed(
                Framing::OctetCounted,
                1024,
                b"5 nopri3 abcplain line\n4 <1>x",
                2
            ),
            plain(&["nopri", "abc", "plain line", "<1>x"])
        );
        // Auto: the count takes its 11 bytes, delimiters and all.
        assert_eq!(
            framed(Framing::Auto, 1024, input, 3),
            plain(&["<13>a\nb\0c\n9", " nopri"])
        );
        for name in Framing::NAMES {
            assert!(Framing::from_name(name).is_some(), "{name}");
        }
        assert_eq!(Framing::from_name("octet"), None);
    }

    #[test]
    fn a_datagram_is_trimmed_and_cut_as_a_streams_frame_is() {
        assert_eq!(
            datagram(b"<13>hi\r\n\0", 100),
            Some((&b"<13>hi"[..], false))
        );
        assert_eq!(datagram(b"<13>hello\n", 6), Some((&b"<13>he"[..], true)));
        assert_eq!(datagram(b"\r\n", 100), None);
        assert_eq!(datagram(b"", 100), None);
    }
}

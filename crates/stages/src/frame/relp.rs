//! RELP, the Reliable Event Logging Protocol of librelp and rsyslog's omrelp, as its server
//! speaks it: frames cut out of a byte buffer, a session's commands checked in order, the
//! offers of `open` answered, and responses written. No I/O: the session loop in
//! [`crate::connection`] reads and writes.
//!
//! A frame is `TXNR SP COMMAND SP DATALEN [SP DATA] LF`: TXNR and DATALEN of at most nine
//! digits, COMMAND of 1 to 32 letters. A client numbers its commands from 1, one more each
//! (after 999,999,999 comes 1 again); TXNR 0 is a hint, which gets no response. The server
//! answers every command with `TXNR rsp DATALEN DATA LF`, in the order the commands came,
//! `200 OK` for a `syslog` message it has made safe. A client keeps every message not yet
//! answered and sends it again on its next session; a frame that breaks these rules ends the
//! session.

use std::fmt::Write as _;

/// The highest transaction number; the next one is 1.
pub const MAX_TXNR: u32 = 999_999_999;
/// The RELP version hotdog speaks (librelp's: versions 0 and 1 have the same frames).
const VERSION: u32 = 1;

/// One frame, borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub txnr: u32,
    pub command: &'a [u8],
    pub data: &'a [u8],
}

/// What [`cut`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Cut<'a> {
    /// A whole frame, which took `consumed` bytes.
    Frame { frame: Frame<'a>, consumed: usize },
    /// The frame goes on past the end of the buffer.
    NeedMore,
    /// Not RELP, or a frame that breaks its grammar or `max_data`: the session ends.
    Malformed(String),
}

/// Cuts the frame at the start of `buf`. A frame whose DATALEN passes `max_data` is refused as
/// soon as its header is read, before any of its data is buffered.
pub fn cut(buf: &[u8], max_data: usize) -> Cut<'_> {
    let (txnr, at) = match number(buf, 0, "TXNR") {
        Ok(n) => n,
        Err(cut) => return cut,
    };
    if buf[at] != b' ' {
        return malformed("a space after TXNR", buf, at);
    }
    let at = at + 1;
    let command_len = buf[at..]
        .iter()
        .take(33)
        .take_while(|b| b.is_ascii_alphabetic())
        .count();
    let after = at + command_len;
    match buf.get(after) {
        None if command_len <= 32 => return Cut::NeedMore,
        Some(b' ') if (1..=32).contains(&command_len) => {}
        _ => return malformed("a command of 1 to 32 letters and a space", buf, after),
    }
    let command = &buf[at..after];
    let (len, at) = match number(buf, after + 1, "DATALEN") {
        Ok(n) => n,
        Err(cut) => return cut,
    };
    let len = len as usize;
    if len > max_data {
        return Cut::Malformed(format!(
            "a frame of {len} bytes of data, more than the {max_data} this listener takes \
             (max_message_size)"
        ));
    }
    // DATALEN, then the data after a space (none when DATALEN is 0), then LF.
    let data_at = if len == 0 { at } else { at + 1 };
    let Some(&end) = buf.get(data_at + len) else {
        if len > 0 && buf.get(at).is_some_and(|b| *b != b' ') {
            return malformed("a space after DATALEN", buf, at);
        }
        return Cut::NeedMore;
    };
    if len > 0 && buf[at] != b' ' {
        return malformed("a space after DATALEN", buf, at);
    }
    if end != b'\n' {
        return malformed(
            "LF at the end of the frame (DATALEN is wrong?)",
            buf,
            data_at + len,
        );
    }
    Cut::Frame {
        frame: Frame {
            txnr,
            command,
            data: &buf[data_at..data_at + len],
        },
        consumed: data_at + len + 1,
    }
}

/// A number of 1 to 9 digits at `at`, ended by a non-digit; with where that is.
fn number<'a>(buf: &'a [u8], at: usize, what: &str) -> Result<(u32, usize), Cut<'a>> {
    let digits = buf
        .get(at..)
        .unwrap_or_default()
        .iter()
        .take(10)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits > 9 {
        return Err(Cut::Malformed(format!("{what} of more than 9 digits")));
    }
    let end = at + digits;
    if end >= buf.len() {
        return Err(Cut::NeedMore);
    }
    if digits == 0 {
        return Err(malformed(&format!("{what} (digits)"), buf, end));
    }
    let n = buf[at..end]
        .iter()
        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    Ok((n, end))
}

fn malformed<'a>(expected: &str, buf: &[u8], at: usize) -> Cut<'a> {
    let got = match buf.get(at) {
        Some(b) if b.is_ascii_graphic() => format!("`{}`", char::from(*b)),
        Some(b) => format!("byte 0x{b:02x}"),
        None => "the end".into(),
    };
    Cut::Malformed(format!("expected {expected} at byte {at}, found {got}"))
}

/// What a session must do with a command that [`Session::command`] accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// `open`: answer with this response (offers) in the command's turn.
    Open(Vec<u8>),
    /// `syslog`: forward this message; answer `200 OK` once it is safe.
    Syslog(&'a [u8]),
    /// `close`: answer in its turn, then end the session.
    Close,
    /// A hint (TXNR 0): nothing to do.
    Hint,
}

/// The order of a session's commands: `open` first and once, then `syslog` messages, then
/// `close`, each with the next transaction number.
#[derive(Debug, Default)]
pub struct Session {
    /// The transaction number the next command must have; 0 before the first.
    last: u32,
    open: bool,
}

impl Session {
    /// Checks `frame` against the session; `Err` with why the session must end.
    pub fn command<'a>(&mut self, frame: &Frame<'a>) -> Result<Step<'a>, String> {
        if frame.txnr == 0 {
            // Transaction number 0 is for hints, which need no answer; a command that does
            // (a message above all) is not taken unanswered and uncounted.
            return match frame.command {
                b"open" | b"syslog" | b"close" => Err(format!(
                    "`{}` with transaction number 0, which only hints have",
                    String::from_utf8_lossy(frame.command)
                )),
                _ => Ok(Step::Hint),
            };
        }
        let expected = if self.last == MAX_TXNR {
            1
        } else {
            self.last + 1
        };
        if frame.txnr != expected {
            return Err(format!(
                "transaction number {} where {expected} was next",
                frame.txnr
            ));
        }
        self.last = frame.txnr;
        match (frame.command, self.open) {
            (b"open", false) => {
                self.open = true;
                answer_offers(frame.data).map(Step::Open)
            }
            (b"open", true) => Err("a second open in one session".into()),
            (b"syslog", true) => Ok(Step::Syslog(frame.data)),
            (b"close", true) => Ok(Step::Close),
            (_, false) => Err("a command before open".into()),
            (other, true) => Err(format!(
                "the command `{}`, which hotdog does not take (it takes syslog and close)",
                String::from_utf8_lossy(other)
            )),
        }
    }
}

/// The response to `open`: `200 OK` and the offers hotdog accepts, or why the client's are
/// not enough (it must offer `relp_version` and the `syslog` command).
fn answer_offers(data: &[u8]) -> Result<Vec<u8>, String> {
    let text = String::from_utf8_lossy(data);
    let mut version = None;
    let mut syslog = false;
    for offer in text.split('\n').filter(|o| !o.is_empty()) {
        let (name, values) = offer.split_once('=').unwrap_or((offer, ""));
        match name {
            "relp_version" => {
                version = Some(
                    values
                        .parse::<u32>()
                        .map_err(|_| format!("relp_version `{values}` is not a number"))?,
                );
            }
            "commands" => syslog |= values.split(',').any(|c| c == "syslog"),
            // relp_software and offers hotdog does not know: nothing to answer.
            _ => {}
        }
    }
    let Some(version) = version else {
        return Err("an open without relp_version".into());
    };
    if version > VERSION {
        return Err(format!(
            "relp_version {version}, which hotdog does not speak (it speaks 0 and {VERSION})"
        ));
    }
    if !syslog {
        return Err("an open whose commands do not include syslog".into());
    }
    let mut out = String::from("200 OK\n");
    let _ = write!(
        out,
        "relp_version={}\nrelp_software=hotdog,{}\ncommands=syslog",
        version,
        env!("CARGO_PKG_VERSION")
    );
    Ok(out.into_bytes())
}

/// Appends the response `TXNR rsp DATALEN DATA` to `out`.
pub fn respond(out: &mut Vec<u8>, txnr: u32, data: &[u8]) {
    frame(out, txnr, "rsp", data);
}

/// Appends the `200 OK` of a `syslog` message.
pub fn ok(out: &mut Vec<u8>, txnr: u32) {
    respond(out, txnr, b"200 OK");
}

/// Appends the hint that the server closes the session, with why (librelp's client takes it
/// as "session broken" and sends what it has not had answered again on a new session).
pub fn serverclose(out: &mut Vec<u8>, why: &str) {
    frame(out, 0, "serverclose", why.as_bytes());
}

fn frame(out: &mut Vec<u8>, txnr: u32, command: &str, data: &[u8]) {
    // Every `200 OK` goes through here: numbers written without the formatting machinery.
    let mut number = itoa::Buffer::new();
    out.extend_from_slice(number.format(txnr).as_bytes());
    out.push(b' ');
    out.extend_from_slice(command.as_bytes());
    out.push(b' ');
    out.extend_from_slice(number.format(data.len()).as_bytes());
    if !data.is_empty() {
        out.push(b' ');
        out.extend_from_slice(data);
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(buf: &[u8]) -> (Frame<'_>, usize) {
        match cut(buf, 1000) {
            Cut::Frame { frame, consumed } => (frame, consumed),
            other => panic!("not a frame: {other:?}"),
        }
    }

    fn why(buf: &[u8], max: usize) -> String {
        match cut(buf, max) {
            Cut::Malformed(why) => why,
            other => panic!("not malformed: {other:?}"),
        }
    }

    /// What librelp 1.11's client (rsyslog's omrelp) sent first, byte for byte.
    const OPEN: &[u8] = b"1 open 86 relp_version=0\nrelp_software=librelp,1.11.0,http://librelp.adiscon.com\ncommands=syslog\n";

    #[test]
    fn frames_are_cut_as_librelp_writes_them() {
        let (f, n) = frame_of(OPEN);
        assert_eq!((f.txnr, f.command, n), (1, &b"open"[..], OPEN.len()));
        assert!(f.data.starts_with(b"relp_version=0\n"));
        let two = b"2 syslog 5 <13>a\n3 close 0\nrest";
        let (f, n) = frame_of(two);
        assert_eq!(
            (f.txnr, f.command, f.data),
            (2, &b"syslog"[..], &b"<13>a"[..])
        );
        let (f, m) = frame_of(&two[n..]);
        assert_eq!(
            (f.txnr, f.command, f.data, m),
            (3, &b"close"[..], &b""[..], 10)
        );
        // Data may hold LF and anything else: DATALEN decides.
        let (f, _) = frame_of(b"4 syslog 3 a\nb\n");
        assert_eq!(f.data, b"a\nb");
    }

    #[test]
    fn every_prefix_of_a_frame_needs_more() {
        let whole = b"12 syslog 11 <13>hello w\n";
        for end in 0..whole.len() {
            assert_eq!(cut(&whole[..end], 1000), Cut::NeedMore, "{end} bytes");
        }
        assert!(matches!(cut(whole, 1000), Cut::Frame { .. }));
    }

    #[test]
    fn frames_that_break_the_grammar_are_malformed_with_why() {
        assert!(why(b"GET / HTTP/1.1\r\n", 100).contains("TXNR"));
        assert!(why(b"1234567890 syslog 1 x\n", 100).contains("9 digits"));
        assert!(why(b"1 sys-log 1 x\n", 100).contains("command"));
        assert!(why(&[b"1 ".as_slice(), &[b'a'; 33], b" 0\n"].concat(), 100).contains("command"));
        assert!(why(b"1  0\n", 100).contains("command"));
        assert!(why(b"1 syslog x\n", 100).contains("DATALEN"));
        assert!(why(b"1 syslog 9999999999 x", 100).contains("9 digits"));
        // DATALEN says 3, the data is 5 bytes long: no LF where the frame ends.
        assert!(why(b"1 syslog 3 hello\n", 100).contains("DATALEN is wrong"));
        assert!(why(b"1 syslog 3xabc\n", 100).contains("space after DATALEN"));
        assert!(why(b"1 syslog 3x", 100).contains("space after DATALEN"));
        assert!(why(b"1 close 0 \n", 100).contains("LF"));
        // Too large: refused from the header alone, before the data comes.
        let huge = why(b"1 syslog 999999999 ", 65536);
        assert!(
            huge.contains("999999999") && huge.contains("65536"),
            "{huge}"
        );
        assert!(matches!(cut(b"1 syslog 5 hello\n", 5), Cut::Frame { .. }));
        assert!(matches!(cut(b"1 syslog 6 hello!\n", 5), Cut::Malformed(_)));
    }

    #[test]
    fn a_session_takes_open_then_messages_then_close_in_txnr_order() {
        let mut s = Session::default();
        let (open, _) = frame_of(OPEN);
        let Ok(Step::Open(answer)) = s.command(&open) else {
            panic!("open refused");
        };
        let answer = String::from_utf8(answer).expect("text");
        assert!(answer.starts_with("200 OK\n"), "{answer}");
        assert!(
            answer.contains("relp_version=0\n"),
            "the client's version: {answer}"
        );
        assert!(answer.contains("commands=syslog"));
        let msg = Frame {
            txnr: 2,
            command: b"syslog",
            data: b"<13>x",
        };
        assert_eq!(s.command(&msg), Ok(Step::Syslog(&b"<13>x"[..])));
        let hint = Frame {
            txnr: 0,
            command: b"anything",
            data: b"",
        };
        assert_eq!(s.command(&hint), Ok(Step::Hint));
        let unnumbered = Frame {
            txnr: 0,
            command: b"syslog",
            data: b"<13>x",
        };
        assert!(s
            .command(&unnumbered)
            .unwrap_err()
            .contains("transaction number 0"));
        let skipped = Frame {
            txnr: 4,
            command: b"syslog",
            data: b"",
        };
        assert!(s.command(&skipped).unwrap_err().contains("3 was next"));
    }

    #[test]
    fn txnr_wraps_after_its_highest_value() {
        let mut s = Session {
            last: MAX_TXNR - 1,
            open: true,
        };
        for txnr in [MAX_TXNR, 1, 2] {
            let f = Frame {
                txnr,
                command: b"syslog",
                data: b"",
            };
            assert_eq!(s.command(&f), Ok(Step::Syslog(&b""[..])), "{txnr}");
        }
    }

    #[test]
    fn commands_out_of_place_end_the_session() {
        let syslog = Frame {
            txnr: 1,
            command: b"syslog",
            data: b"x",
        };
        assert!(Session::default().command(&syslog).is_err(), "before open");
        let mut s = Session::default();
        s.command(&frame_of(OPEN).0).expect("open");
        let again = Frame {
            txnr: 2,
            command: b"open",
            data: b"relp_version=0\ncommands=syslog",
        };
        assert!(s.command(&again).unwrap_err().contains("second open"));
        let mut s = Session::default();
        s.command(&frame_of(OPEN).0).expect("open");
        let tls = Frame {
            txnr: 2,
            command: b"starttls",
            data: b"",
        };
        assert!(s.command(&tls).unwrap_err().contains("starttls"));
        for offers in [
            &b"commands=syslog"[..],
            b"relp_version=x\ncommands=syslog",
            b"relp_version=0\ncommands=eventlog",
            b"relp_version=7\ncommands=syslog",
        ] {
            let open = Frame {
                txnr: 1,
                command: b"open",
                data: offers,
            };
            assert!(Session::default().command(&open).is_err(), "{offers:?}");
        }
    }

    #[test]
    fn responses_are_frames_a_client_can_cut() {
        let mut out = Vec::new();
        ok(&mut out, 7);
        respond(&mut out, 8, b"");
        serverclose(&mut out, "bad frame");
        assert_eq!(out, b"7 rsp 6 200 OK\n8 rsp 0\n0 serverclose 9 bad frame\n");
        let (f, n) = frame_of(&out);
        assert_eq!(
            (f.txnr, f.command, f.data),
            (7, &b"rsp"[..], &b"200 OK"[..])
        );
        assert_eq!(frame_of(&out[n..]).0.data, b"");
    }
}

//! A reader of the JSON most bodies are, faster than serde_json's visitor, that writes what
//! [`super::proto`] writes for them or only checks them.

use super::*;

/// A reader of the JSON that most bodies are, faster than serde_json's visitor: objects,
/// arrays, strings without escapes, integers of up to 18 digits, `true`, `false` and
/// `null`, nested up to [`Plain::DEPTH`] deep. It writes what [`AnyJson`] writes for them
/// and gives up (`None`) at anything else, which serde_json then reads: an escape, a
/// fraction or an exponent, a longer integer or `-0` (serde_json's float), a deeper value,
/// or what is not JSON at all. A differential test and the `syslog` fuzz target check
/// that the two write the same whenever this one does not give up. Into [`Check`] it
/// only reads: what the `json` format asks of a body before it embeds it.
pub(crate) struct Plain<'a> {
    pub(crate) text: &'a str,
    pub(crate) at: usize,
}
impl<'a> Plain<'a> {
    const DEPTH: u8 = 32;

    /// `body` written into `pb`, or `None` (with some of it written) when it is not
    /// JSON this reads.
    pub(crate) fn write<S: Sink>(
        out: &mut S,
        body: &'a str,
        members: &mut Vec<Member>,
    ) -> Option<()> {
        let mut json = Plain { text: body, at: 0 };
        json.value(out, members, Self::DEPTH)?;
        json.skip_space();
        (json.at == body.len()).then_some(())
    }

    pub(crate) fn skip_space(&mut self) {
        let bytes = self.text.as_bytes();
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte that is not JSON's white space, not taken.
    #[inline(always)]
    pub(crate) fn peek(&mut self) -> Option<u8> {
        match self.text.as_bytes().get(self.at) {
            Some(&b) if b > b' ' => Some(b),
            _ => {
                self.skip_space();
                self.text.as_bytes().get(self.at).copied()
            }
        }
    }

    /// Takes `byte` when it comes next.
    #[inline(always)]
    pub(crate) fn take(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// A string (its opening quote next) with nothing escaped in it.
    #[inline(always)]
    pub(crate) fn string(&mut self) -> Option<&'a str> {
        let bytes = self.text.as_bytes();
        let start = self.at + 1;
        let mut end = start;
        // Eight bytes at a time while none is a quote, a backslash or a control
        // character; then straight to the first that is, or one at a time at the end.
        while let Some(word) = bytes.get(end..end + 8) {
            let escaped = escaped_bits(word_of(word));
            if escaped != 0 {
                end += escaped.trailing_zeros() as usize / 8;
                break;
            }
            end += 8;
        }
        loop {
            match *bytes.get(end)? {
                b'"' => break,
                b'\\' | ..0x20 => return None,
                _ => end += 1,
            }
        }
        self.at = end + 1;
        self.text.get(start..end)
    }

    /// An object member's name and the colon after it.
    #[inline(always)]
    pub(crate) fn name(&mut self) -> Option<&'a str> {
        if self.peek()? != b'"' {
            return None;
        }
        let name = self.string()?;
        self.take(b':')?;
        Some(name)
    }

    /// An integer as serde_json reads one into an `i64`.
    #[inline(always)]
    pub(crate) fn integer(&mut self) -> Option<i64> {
        let bytes = self.text.as_bytes();
        let negative = bytes.get(self.at) == Some(&b'-');
        let start = self.at + usize::from(negative);
        let n = bytes
            .get(start..)?
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        self.at = start + n;
        let leading_zero = n > 1 && bytes[start] == b'0';
        let fraction = matches!(bytes.get(self.at), Some(b'.' | b'e' | b'E'));
        if n == 0 || n > 18 || leading_zero || fraction {
            return None;
        }
        // Eighteen digits are below 10^18: no overflow.
        let v = bytes[start..self.at]
            .iter()
            .fold(0i64, |v, &d| v * 10 + i64::from(d - b'0'));
        match (negative, v) {
            (true, 0) => None,
            (true, v) => Some(-v),
            (false, v) => Some(v),
        }
    }

    /// Takes `word` (`true`, `false`, `null`) when it comes next.
    pub(crate) fn word(&mut self, word: &str) -> Option<()> {
        let end = self.at + word.len();
        (self.text.get(self.at..end)? == word).then(|| self.at = end)
    }

    pub(crate) fn value<S: Sink>(
        &mut self,
        pb: &mut S,
        members: &mut Vec<Member>,
        depth: u8,
    ) -> Option<()> {
        match self.peek()? {
            b'"' => pb.text(1, self.string()?),
            b't' => {
                self.word("true")?;
                pb.varint(2, 1);
            }
            b'f' => {
                self.word("false")?;
                pb.varint(2, 0);
            }
            b'n' => {
                self.word("null")?;
                pb.text(1, "");
            }
            b'-' | b'0'..=b'9' => pb.varint(3, self.integer()? as u64),
            b'[' => {
                let depth = depth.checked_sub(1)?;
                self.at += 1;
                let list = pb.begin(5);
                if self.take(b']').is_none() {
                    loop {
                        let item = pb.begin(1);
                        self.value(pb, members, depth)?;
                        pb.end(item);
                        if self.take(b',').is_none() {
                            self.take(b']')?;
                            break;
                        }
                    }
                }
                pb.end(list);
            }
            b'{' => {
                let depth = depth.checked_sub(1)?;
                self.at += 1;
                // `Sink::object` and `Sink::member` pass on an error; here `()`: gave up.
                let written = pb.object(members, |pb, members| {
                    if self.take(b'}').is_some() {
                        return Ok(());
                    }
                    loop {
                        let name = self.name().ok_or(())?;
                        pb.member(members, name, |pb, members| {
                            self.value(pb, members, depth).ok_or(())
                        })?;
                        if self.take(b',').is_none() {
                            return self.take(b'}').ok_or(());
                        }
                    }
                });
                written.ok()?;
            }
            _ => return None,
        }
        Some(())
    }
}
/// What [`Plain`] reads a JSON value into: the fields of an `AnyValue` ([`Pb`]), or
/// nothing ([`Check`]).
pub(crate) trait Sink: Sized {
    fn text(&mut self, tag: u8, s: &str);
    fn varint(&mut self, tag: u8, v: u64);
    fn begin(&mut self, tag: u8) -> usize;
    fn end(&mut self, at: usize);
    fn object<E>(
        &mut self,
        members: &mut Vec<Member>,
        body: impl FnOnce(&mut Self, &mut Vec<Member>) -> Result<(), E>,
    ) -> Result<(), E>;
    fn member<E>(
        &mut self,
        members: &mut Vec<Member>,
        name: &str,
        value: impl FnOnce(&mut Self, &mut Vec<Member>) -> Result<(), E>,
    ) -> Result<(), E>;
}
impl Sink for Pb<'_> {
    #[inline(always)]
    fn text(&mut self, tag: u8, s: &str) {
        Pb::text(self, tag, s);
    }
    #[inline(always)]
    fn varint(&mut self, tag: u8, v: u64) {
        Pb::varint(self, tag, v);
    }
    #[inline(always)]
    fn begin(&mut self, tag: u8) -> usize {
        Pb::begin(self, tag)
    }
    #[inline(always)]
    fn end(&mut self, at: usize) {
        Pb::end(self, at);
    }
    /// A JSON object as the fields of an `AnyValue`: a key-value list, whose members `body`
    /// writes with [`Sink::member`]; then a name given more than once is kept once (see
    /// [`dedup_members`]).
    #[inline(always)]
    fn object<E>(
        &mut self,
        members: &mut Vec<Member>,
        body: impl FnOnce(&mut Self, &mut Vec<Member>) -> Result<(), E>,
    ) -> Result<(), E> {
        let list = self.begin(6);
        let first = self.0.len();
        let base = members.len();
        body(self, members)?;
        dedup_members(self.0, first, &mut members[base..]);
        members.truncate(base);
        self.end(list);
        Ok(())
    }

    /// An object's member: `name`, and the fields of the `AnyValue` that `value` writes;
    /// noted on `members`.
    #[inline(always)]
    fn member<E>(
        &mut self,
        members: &mut Vec<Member>,
        name: &str,
        value: impl FnOnce(&mut Self, &mut Vec<Member>) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.0.len();
        let kv = self.begin(1);
        self.name(name);
        let name_end = self.0.len();
        let at = self.begin(2);
        value(self, members)?;
        self.end(at);
        let before = self.0.len();
        self.end(kv);
        // A long member moved up to make room for its length.
        let moved = self.0.len() - before;
        members.push(Member {
            name: name_end + moved - name.len()..name_end + moved,
            kv: start..self.0.len(),
        });
        Ok(())
    }
}
/// Reads without writing: to check that a body is JSON.
pub(crate) struct Check;
impl Sink for Check {
    fn text(&mut self, _: u8, _: &str) {}
    fn varint(&mut self, _: u8, _: u64) {}
    fn begin(&mut self, _: u8) -> usize {
        0
    }
    fn end(&mut self, _: usize) {}
    fn object<E>(
        &mut self,
        members: &mut Vec<Member>,
        body: impl FnOnce(&mut Self, &mut Vec<Member>) -> Result<(), E>,
    ) -> Result<(), E> {
        body(self, members)
    }
    fn member<E>(
        &mut self,
        members: &mut Vec<Member>,
        _: &str,
        value: impl FnOnce(&mut Self, &mut Vec<Member>) -> Result<(), E>,
    ) -> Result<(), E> {
        value(self, members)
    }
}
/// True when `body` is JSON that [`Plain`] reads (most bodies that are): false leaves the
/// question to serde_json.
pub(crate) fn plain_json(body: &str) -> bool {
    Plain::write(&mut Check, body, &mut Vec::new()).is_some()
}
/// A body as [`Plain`] writes it (`None`: it gave up) and as serde_json does (`None`: not
/// JSON), for the test that compares them.
#[cfg(test)]
pub(crate) fn body_both_ways(body: &str) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let mut plain = Vec::new();
    let read = Plain::write(&mut Pb(&mut plain), body, &mut Vec::new());
    let mut serde = Vec::new();
    let parsed = serde_body(&mut Pb(&mut serde), body, &mut Vec::new());
    (read.map(|()| plain), parsed.ok().map(|()| serde))
}

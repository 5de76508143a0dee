//! The DATA receiver (RFC 5321 section 4.1.1.4): finds the end of the message and undoes dot
//! stuffing, strictly.
//!
//! The end of the data is only `<CRLF>.<CRLF>`. A CR not followed by LF, or an LF not preceded
//! by CR, marks the message as malformed and is kept as data: it never starts a line, so it can
//! never be part of an end marker. This closes the SMTP smuggling family (CVE-2023-51764,
//! -51765, -51766): `\n.\n`, `\n.\r\n`, `\r\n.\n`, `\r.\r` cannot end the data early, and a
//! message containing them is refused with a 5xx when its real end arrives (like Postfix's
//! `smtpd_forbid_bare_newline = reject`). smtp-proto's receiver tolerates bare line endings,
//! which is why this one is ours.
//!
//! A NUL byte (not allowed without BINARYMIME, which we do not offer) marks the message as
//! malformed too: a receiver that strips NULs would read `\r\n.\0\r\n` as the end.
//!
//! It is sans-I/O: [`DataReceiver::feed`] takes whatever bytes arrived and says how many it used.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line.
    LineStart,
    /// Inside a line.
    Text,
    /// After a CR inside a line.
    Cr,
    /// After a '.' at the start of a line.
    Dot,
    /// After ".\r" at the start of a line.
    DotCr,
}

/// What a complete DATA transfer produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Data {
    /// The message, dot-unstuffed, ending with the CRLF before the final dot.
    pub content: Vec<u8>,
    /// More than the size limit arrived; `content` was cut and must not be used.
    pub too_big: bool,
    /// A bare CR or bare LF was seen.
    pub bare_line_ending: bool,
    /// A NUL byte was seen.
    pub nul: bool,
    /// The server-wide memory budget for bodies ran out; `content` was dropped.
    pub over_budget: bool,
}

pub struct DataReceiver {
    state: State,
    content: Vec<u8>,
    max_size: usize,
    too_big: bool,
    bare_line_ending: bool,
    nul: bool,
    over_budget: bool,
}

impl DataReceiver {
    /// Octets held so far.
    pub fn buffered(&self) -> usize {
        self.content.len()
    }

    /// Drops what was buffered and keeps nothing more (the memory budget ran out); the data is
    /// still read to its end.
    pub fn abandon(&mut self) {
        self.over_budget = true;
        self.content = Vec::new();
    }

    pub fn new(max_size: usize) -> DataReceiver {
        DataReceiver {
            state: State::LineStart,
            content: Vec::new(),
            max_size,
            too_big: false,
            bare_line_ending: false,
            nul: false,
            over_budget: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.too_big || self.over_budget {
            return;
        }
        if self.content.len() + bytes.len() > self.max_size {
            self.too_big = true;
            self.content = Vec::new();
            return;
        }
        self.content.extend_from_slice(bytes);
    }

    fn bare(&mut self) {
        self.bare_line_ending = true;
    }

    /// Processes `input`; returns the bytes used and, once the end marker was read, the data.
    /// Bytes after the end marker are not used (they are the next command, with PIPELINING).
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Data>) {
        let mut i = 0;
        while i < input.len() {
            // Fast path: copy a run of ordinary text in one go.
            if self.state == State::Text {
                let run = input[i..]
                    .iter()
                    .position(|&b| b == b'\r' || b == b'\n')
                    .unwrap_or(input.len() - i);
                if run > 0 {
                    self.nul |= input[i..i + run].contains(&0);
                    self.push(&input[i..i + run]);
                    i += run;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            self.nul |= b == 0;
            self.state = match (self.state, b) {
                (State::LineStart, b'.') => State::Dot,
                (State::LineStart | State::Text, b'\r') => State::Cr,
                (State::LineStart | State::Text, b'\n') => {
                    self.bare();
                    self.push(b"\n");
                    State::Text
                }
                (State::LineStart | State::Text, other) => {
                    self.push(&[other]);
                    State::Text
                }
                (State::Cr, b'\n') => {
                    self.push(b"\r\n");
                    State::LineStart
                }
                (State::Cr, b'\r') => {
                    self.bare();
                    self.push(b"\r");
                    State::Cr
                }
                (State::Cr, other) => {
                    self.bare();
                    self.push(&[b'\r', other]);
                    State::Text
                }
                // RFC 5321 4.5.2: a line starting with '.' had one '.' added; remove it.
                (State::Dot, b'\r') => State::DotCr,
                (State::Dot, b'\n') => {
                    self.bare();
                    self.push(b"\n");
                    State::Text
                }
                (State::Dot, other) => {
                    self.push(&[other]);
                    State::Text
                }
                (State::DotCr, b'\n') => {
                    let data = Data {
                        content: std::mem::take(&mut self.content),
                        too_big: self.too_big,
                        bare_line_ending: self.bare_line_ending,
                        nul: self.nul,
                        over_budget: self.over_budget,
                    };
                    return (i, Some(data));
                }
                // ".\r" then something other than LF: a bare CR after a stuffed dot.
                (State::DotCr, b'\r') => {
                    self.bare();
                    self.push(b"\r");
                    State::Cr
                }
                (State::DotCr, other) => {
                    self.bare();
                    self.push(&[b'\r', other]);
                    State::Text
                }
            };
        }
        (i, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns the data and the bytes left over.
    fn receive(input: &[u8], step: usize) -> (Option<Data>, Vec<u8>) {
        let mut receiver = DataReceiver::new(1 << 20);
        let mut offset = 0;
        while offset < input.len() {
            let end = (offset + step).min(input.len());
            let (used, done) = receiver.feed(&input[offset..end]);
            offset += used;
            if let Some(data) = done {
                return (Some(data), input[offset..].to_vec());
            }
        }
        (None, Vec::new())
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf_and_unstuffs() {
        for step in [1, 2, 3, 7, 1000] {
            let (data, rest) = receive(b"Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n", step);
            let data = data.unwrap_or_else(|| panic!("no end found (step {step})"));
            assert_eq!(data.content, b"Subject: x\r\n\r\n.leading dot\r\n");
            assert!(!data.bare_line_ending && !data.too_big);
            assert_eq!(rest, b"QUIT\r\n");
        }
        let (data, _) = receive(b".\r\n", 1);
        assert_eq!(data.map(|d| d.content), Some(Vec::new()));
    }

    #[test]
    fn smuggling_sequences_never_end_the_data_and_mark_it_malformed() {
        let smuggled = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nforged\r\n";
        for fake_end in [
            &b"\n.\n"[..],
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r.\r",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\n.",
            b"\r\n\n.\n",
        ] {
            let mut input = b"body".to_vec();
            input.extend_from_slice(fake_end);
            input.extend_from_slice(smuggled);
            input.extend_from_slice(b".\r\n");
            for step in [1, 5, 1000] {
                let (data, rest) = receive(&input, step);
                let data = data.unwrap_or_else(|| panic!("{fake_end:?}: no end"));
                assert!(data.bare_line_ending, "{fake_end:?} not flagged");
                assert!(
                    rest.is_empty(),
                    "{fake_end:?} ended early; left {:?}",
                    String::from_utf8_lossy(&rest)
                );
            }
        }
    }

    #[test]
    fn nul_bytes_are_flagged_and_never_end_the_data() {
        for (input, rest_expected) in [
            (&b"body\r\n\0.\r\nMAIL FROM:<x@y.test>\r\n.\r\n"[..], &b""[..]),
            (b"body\r\n.\0\r\nforged\r\n.\r\nNOOP\r\n", b"NOOP\r\n"),
            (b"a\0b\r\n.\r\n", b""),
        ] {
            for step in [1, 3, 1000] {
                let (data, rest) = receive(input, step);
                let data = data.unwrap_or_else(|| panic!("{input:?}: no end"));
                assert!(data.nul, "{input:?} not flagged");
                assert_eq!(rest, rest_expected, "{input:?}");
            }
        }
        let (data, _) = receive(b"clean\r\n.\r\n", 1);
        assert!(data.is_some_and(|d| !d.nul));
    }

    #[test]
    fn oversize_data_is_consumed_to_its_end_and_flagged() {
        let mut receiver = DataReceiver::new(10);
        let (used, done) = receiver.feed(b"0123456789abcdef\r\n.\r\nNOOP\r\n");
        let data = done.unwrap_or_else(|| panic!("no end"));
        assert!(data.too_big);
        assert!(data.content.is_empty());
        assert_eq!(used, 21);
    }

    /// A small deterministic generator (xorshift), so the test needs no extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_stuffed_data_comes_back_as_sent_at_any_split() {
        let mut rng = Rng(0x5ea1_3a11_d00d_f00d);
        let alphabet = b"ab.. \t.xyz";
        for _ in 0..2000 {
            let lines: Vec<Vec<u8>> = (0..rng.below(8))
                .map(|_| {
                    (0..rng.below(6))
                        .map(|_| alphabet[rng.below(alphabet.len())])
                        .collect()
                })
                .collect();
            // What the client means, and what it sends (RFC 5321 4.5.2 dot stuffing).
            let mut meant = Vec::new();
            let mut wire = Vec::new();
            for line in &lines {
                meant.extend_from_slice(line);
                meant.extend_from_slice(b"\r\n");
                if line.starts_with(b".") {
                    wire.push(b'.');
                }
                wire.extend_from_slice(line);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b".\r\nNEXT\r\n");
            let step = 1 + rng.below(9);
            let (data, rest) = receive(&wire, step);
            let data = data.unwrap_or_else(|| panic!("no end in {:?}", String::from_utf8_lossy(&wire)));
            assert!(!data.bare_line_ending);
            assert_eq!(data.content, meant, "{:?}", String::from_utf8_lossy(&wire));
            assert_eq!(rest, b"NEXT\r\n");
        }
    }

    #[test]
    fn random_bytes_never_panic_and_bare_endings_are_always_flagged() {
        let mut rng = Rng(0xbad_5eed);
        let alphabet = b"\r\n.a";
        for _ in 0..5000 {
            let input: Vec<u8> = (0..rng.below(40))
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            let step = 1 + rng.below(7);
            let (data, rest) = receive(&input, step);
            if let Some(data) = data {
                let used = &input[..input.len() - rest.len()];
                // Whatever ended the data, it was a real CRLF "." CRLF.
                assert!(used.ends_with(b"\r\n.\r\n") || used == b".\r\n", "{used:?}");
                let bare = used
                    .windows(2)
                    .any(|w| (w[0] == b'\r' && w[1] != b'\n') || (w[1] == b'\n' && w[0] != b'\r'))
                    || used.first() == Some(&b'\n');
                assert_eq!(data.bare_line_ending, bare, "{used:?}");
            }
        }
    }
}

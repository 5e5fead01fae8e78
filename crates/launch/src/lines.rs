//! A rank's output cut into lines of at most [`MAX_LINE`] bytes.
//!
//! [`LineSplitter`] takes bytes in whatever pieces a pipe hands out and yields each line
//! without its newline; a line longer than [`MAX_LINE`] comes out in pieces of that size,
//! so a rank writing binary without newlines costs bounded memory. [`read_lines`] drives
//! it from any reader.

use std::io::{self, BufRead, BufReader, Read};

use crate::MAX_LINE;

/// Cuts a byte stream into lines. Holds at most one unfinished line.
#[derive(Debug)]
pub struct LineSplitter {
    line: Vec<u8>,
    max: usize,
}

impl Default for LineSplitter {
    fn default() -> Self {
        LineSplitter::new(MAX_LINE)
    }
}

impl LineSplitter {
    /// Lines longer than `max` bytes (at least 1) are split.
    pub fn new(max: usize) -> Self {
        LineSplitter {
            line: Vec::with_capacity(max.clamp(1, 256)),
            max: max.max(1),
        }
    }

    /// Feeds `bytes` and calls `emit` with every line they complete, without its newline.
    /// A full line is cut only once the next byte is known not to be its newline, so a
    /// line of exactly `max` bytes stays one line.
    pub fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(&[u8])) {
        while !bytes.is_empty() {
            if self.line.len() == self.max {
                // Full: the next byte decides whether it ended here or goes on.
                if bytes[0] == b'\n' {
                    bytes = &bytes[1..];
                }
                emit(&self.line);
                self.line.clear();
                continue;
            }
            let room = self.max - self.line.len();
            let window = &bytes[..bytes.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.line.extend_from_slice(&window[..i]);
                    emit(&self.line);
                    self.line.clear();
                    bytes = &bytes[i + 1..];
                }
                None => {
                    self.line.extend_from_slice(window);
                    bytes = &bytes[window.len()..];
                }
            }
        }
    }

    /// The stream ended: emits a final line that had no newline, if any.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.line.is_empty() {
            emit(&self.line);
            self.line.clear();
        }
    }
}

/// Reads `src` to its end and calls `on_line` with each line (see [`LineSplitter`]).
/// A read error ends the stream like its end does (the last partial line still comes out)
/// and is returned.
pub fn read_lines<R: Read>(src: R, mut on_line: impl FnMut(&[u8])) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(16 * 1024, src);
    let mut splitter = LineSplitter::default();
    let result = loop {
        let buf = match reader.fill_buf() {
            Ok([]) => break Ok(()),
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        };
        splitter.push(buf, &mut on_line);
        let used = buf.len();
        reader.consume(used);
    };
    splitter.finish(&mut on_line);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        read_lines(input, |l| out.push(l.to_vec())).unwrap();
        out
    }

    #[test]
    fn lines_lose_their_newline_and_the_last_one_comes_out() {
        assert_eq!(
            lines(b"a\nbc\n\nlast"),
            [&b"a"[..], b"bc", b"", b"last"].map(<[u8]>::to_vec)
        );
        assert!(lines(b"").is_empty());
        assert_eq!(lines(b"\n"), [b"".to_vec()]);
    }

    #[test]
    fn long_lines_are_split() {
        let mut input = vec![b'x'; MAX_LINE * 2 + 10];
        input.push(b'\n');
        let out = lines(&input);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].len(), MAX_LINE);
        assert_eq!(out[1].len(), MAX_LINE);
        assert_eq!(out[2], [b'x'; 10]);
        // Exactly MAX_LINE bytes and its newline stay one line, with nothing after it.
        let mut exact = vec![b'y'; MAX_LINE];
        exact.push(b'\n');
        assert_eq!(lines(&exact), [vec![b'y'; MAX_LINE]]);
        // ... and so does a final one without a newline.
        assert_eq!(lines(&exact[..MAX_LINE]).len(), 1);
    }

    #[test]
    fn a_small_limit_splits_as_the_large_one_does() {
        let mut split = LineSplitter::new(3);
        let mut out = Vec::new();
        split.push(b"abcdefg\nabc\nabcd\n\n", |l| out.push(l.to_vec()));
        split.finish(|l| out.push(l.to_vec()));
        let want: [&[u8]; 7] = [b"abc", b"def", b"g", b"abc", b"abc", b"d", b""];
        assert_eq!(out, want.map(<[u8]>::to_vec));
    }

    /// Hands out at most `step` bytes per read, as a pipe may.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.data.len().min(self.step).min(buf.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn lines_survive_any_read_sizes() {
        let mut input = b"one\ntwo\n".to_vec();
        input.extend(vec![b'z'; MAX_LINE]);
        input.extend_from_slice(b"\nthree");
        for step in [1, 3, 4096, MAX_LINE - 1, MAX_LINE, MAX_LINE + 1] {
            let mut out = Vec::new();
            read_lines(Trickle { data: &input, step }, |l| out.push(l.to_vec())).unwrap();
            assert_eq!(out.len(), 4, "step {step}");
            assert_eq!(out[1], b"two");
            assert_eq!(out[2].len(), MAX_LINE, "step {step}");
            assert_eq!(out[3], b"three");
        }
    }

    /// Every way of cutting the input into two pushes gives the same lines.
    #[test]
    fn pieces_do_not_matter() {
        let input = b"ab\nabcde\n\nabcdef\nabcdefgh";
        let whole = {
            let mut s = LineSplitter::new(4);
            let mut out = Vec::new();
            s.push(input, |l| out.push(l.to_vec()));
            s.finish(|l| out.push(l.to_vec()));
            out
        };
        for cut in 0..=input.len() {
            let mut s = LineSplitter::new(4);
            let mut out = Vec::new();
            s.push(&input[..cut], |l| out.push(l.to_vec()));
            s.push(&input[cut..], |l| out.push(l.to_vec()));
            s.finish(|l| out.push(l.to_vec()));
            assert_eq!(out, whole, "cut at {cut}");
        }
    }

    struct Failing(bool);

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if std::mem::replace(&mut self.0, true) {
                return Err(io::Error::other("gone"));
            }
            buf[..6].copy_from_slice(b"a\npart");
            Ok(6)
        }
    }

    #[test]
    fn a_read_error_ends_the_stream_after_its_last_line() {
        let mut out = Vec::new();
        let e = read_lines(Failing(false), |l| out.push(l.to_vec())).unwrap_err();
        assert_eq!(e.to_string(), "gone");
        assert_eq!(out, [b"a".to_vec(), b"part".to_vec()]);
    }
}

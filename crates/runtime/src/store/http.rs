//! The smallest HTTP/1.1 client the etcd store needs: `POST` a JSON body on a persistent
//! connection and read one response, its body framed by `Content-Length`, by chunked
//! transfer encoding, or by the end of the connection.
//!
//! Everything read is bounded: a response head of at most [`MAX_HEAD`] bytes (lines
//! included), a body of at most the caller's `max_body` bytes, chunk-size lines of at
//! most [`MAX_CHUNK_LINE`] bytes. Time is bounded by the socket's read and write timeouts,
//! which the caller sets. No TLS, no redirects, no proxies: an etcd client URL serves the
//! gateway directly.

use std::io::{self, BufRead, Read, Write};

/// Largest response head (status line and headers), in bytes.
pub(super) const MAX_HEAD: usize = 64 << 10;
/// Largest chunk-size line (size, extensions, CRLF), in bytes.
pub(super) const MAX_CHUNK_LINE: usize = 1024;

/// One response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) body: Vec<u8>,
    /// Whether the connection may carry another request.
    pub(super) reusable: bool,
}

/// The request bytes for `POST path` with a JSON `body`.
pub(super) fn request(host: &str, path: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Accept: application/json\r\nConnection: {connection}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Sends `POST path` and reads its response.
pub(super) fn post<S: Read + Write>(
    stream: &mut io::BufReader<S>,
    host: &str,
    path: &str,
    body: &[u8],
    keep_alive: bool,
    max_body: usize,
) -> io::Result<Response> {
    stream
        .get_mut()
        .write_all(&request(host, path, body, keep_alive))?;
    stream.get_mut().flush()?;
    read_response(stream, max_body)
}

/// The message of the error [`read_response`] gives when the connection ended before
/// any byte of a reply.
const NO_REPLY: &str = "the connection ended before any byte of a reply";

/// Whether `e` (from [`post`]) means the server closed the connection before reading the
/// request: nothing of a reply arrived, or the request could not be written.
pub(super) fn closed_before_reply(e: &io::Error) -> bool {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => e.to_string() == NO_REPLY,
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => true,
        _ => false,
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// One CRLF- (or LF-) terminated line of at most `max` bytes, without its terminator.
/// `Ok(None)`: the connection ended before any byte of the line.
fn read_line(r: &mut impl BufRead, max: usize, what: &str) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = r.take(max as u64 + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(if line.len() > max {
            invalid(format!("{what} is longer than {max} bytes"))
        } else {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the connection ended inside the {what}"),
            )
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(line))
}

/// How the body of a response is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// Reads one response. An end of the connection before its first byte is an
/// `UnexpectedEof` error with nothing consumed, so that the caller can tell a connection
/// the server closed while idle from one that failed mid-response.
pub(super) fn read_response(r: &mut impl BufRead, max_body: usize) -> io::Result<Response> {
    let mut head = 0usize;
    let status_line = read_line(r, MAX_HEAD, "status line")?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, NO_REPLY))?;
    head += status_line.len() + 2;
    let status = parse_status(&status_line)?;
    let http10 = status_line.starts_with(b"HTTP/1.0");
    let mut framing = Framing::UntilClose;
    let mut close = http10;
    loop {
        let line =
            read_line(r, MAX_HEAD.saturating_sub(head), "response head")?.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the response head was cut short",
                )
            })?;
        head += line.len() + 2;
        if head > MAX_HEAD {
            return Err(invalid(format!(
                "response head is longer than {MAX_HEAD} bytes"
            )));
        }
        if line.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(&line);
        let Some((name, value)) = text.split_once(':') else {
            return Err(invalid(format!("malformed header line '{text}'")));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") && framing != Framing::Chunked {
            let n: usize = value
                .parse()
                .map_err(|_| invalid(format!("Content-Length '{value}' is not a number")))?;
            framing = Framing::Length(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if value.eq_ignore_ascii_case("chunked") {
                framing = Framing::Chunked;
            } else {
                return Err(invalid(format!("unsupported Transfer-Encoding '{value}'")));
            }
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let body = match framing {
        Framing::Length(n) if n > max_body => {
            return Err(invalid(format!(
                "response body of {n} bytes is more than the limit of {max_body}"
            )))
        }
        Framing::Length(n) => {
            let mut body = vec![0u8; n];
            r.read_exact(&mut body)?;
            body
        }
        Framing::Chunked => read_chunked(r, max_body)?,
        Framing::UntilClose => {
            let mut body = Vec::new();
            r.take(max_body as u64 + 1).read_to_end(&mut body)?;
            if body.len() > max_body {
                return Err(invalid(format!(
                    "response body is more than the limit of {max_body} bytes"
                )));
            }
            body
        }
    };
    Ok(Response {
        status,
        body,
        reusable: !close && framing != Framing::UntilClose,
    })
}

fn parse_status(line: &[u8]) -> io::Result<u16> {
    let text = String::from_utf8_lossy(line);
    let mut parts = text.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(invalid(format!(
            "'{text}' is not an HTTP/1.x status line (is this an etcd client URL?)"
        )));
    }
    code.parse::<u16>()
        .ok()
        .filter(|c| (100..1000).contains(c))
        .ok_or_else(|| invalid(format!("malformed status line '{text}'")))
}

/// A chunked body, trailers skipped, at most `max_body` bytes.
fn read_chunked(r: &mut impl BufRead, max_body: usize) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let eof = || io::Error::new(io::ErrorKind::UnexpectedEof, "chunked body was cut short");
    loop {
        let line = read_line(r, MAX_CHUNK_LINE, "chunk-size line")?.ok_or_else(eof)?;
        let text = String::from_utf8_lossy(&line);
        let size_text = text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("malformed chunk size '{size_text}'")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            let mut trailers = 0usize;
            loop {
                let t = read_line(r, MAX_HEAD, "trailer")?.ok_or_else(eof)?;
                trailers += t.len() + 2;
                if t.is_empty() {
                    return Ok(body);
                }
                if trailers > MAX_HEAD {
                    return Err(invalid(format!(
                        "trailers are longer than {MAX_HEAD} bytes"
                    )));
                }
            }
        }
        if body.len().saturating_add(size) > max_body {
            return Err(invalid(format!(
                "response body is more than the limit of {max_body} bytes"
            )));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let end = read_line(r, 2, "chunk end")?.ok_or_else(eof)?;
        if !end.is_empty() {
            return Err(invalid("a chunk is longer than its size says".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(bytes: &[u8], max: usize) -> io::Result<Response> {
        read_response(&mut io::BufReader::new(bytes), max)
    }

    #[test]
    fn request_bytes() {
        let r = request("h:1", "/v3/kv/put", b"{}", true);
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "POST /v3/kv/put HTTP/1.1\r\nHost: h:1\r\nContent-Type: application/json\r\n\
             Accept: application/json\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}"
        );
        assert!(String::from_utf8(request("h:1", "/p", b"", false))
            .unwrap()
            .contains("Connection: close\r\n"));
    }

    #[test]
    fn content_length_and_chunked_and_until_close() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}xx",
            100,
        )
        .unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.reusable),
            (200, &b"{}"[..], true)
        );
        // What etcd's gateway sends for a streamed call (lease keepalive).
        let r = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n3;x=1\r\n1}\n\r\n0\r\nT: v\r\n\r\n",
            100,
        )
        .unwrap();
        assert_eq!(r.body, b"{\"a\":1}\n");
        assert!(r.reusable);
        let r = parse(b"HTTP/1.0 400 Bad\r\n\r\nbody", 100).unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.reusable),
            (400, &b"body"[..], false)
        );
        let r = parse(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            100,
        )
        .unwrap();
        assert!(!r.reusable);
    }

    #[test]
    fn limits_and_malformed_responses_are_errors() {
        let e = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n", 100).unwrap_err();
        assert!(e.to_string().contains("limit of 100"), "{e}");
        let e = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n",
            100,
        )
        .unwrap_err();
        assert!(e.to_string().contains("limit of 100"), "{e}");
        let e = parse(b"HTTP/1.1 200 OK\r\n\r\n", 0);
        assert!(e.is_ok());
        let e = parse(b"HTTP/1.1 200 OK\r\n\r\nx", 0).unwrap_err();
        assert!(e.to_string().contains("limit of 0"), "{e}");
        let e = parse(b"SSH-2.0-OpenSSH\r\n", 100).unwrap_err();
        assert!(e.to_string().contains("etcd client URL"), "{e}");
        let e = parse(b"", 100).unwrap_err();
        assert!(closed_before_reply(&e), "{e}");
        let e = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", 100).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(!closed_before_reply(&e), "{e}");
        let mut long = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long.extend(vec![b'a'; MAX_HEAD]);
        long.extend(b"\r\n\r\n");
        let e = parse(&long, 100).unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
        let e = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", 100).unwrap_err();
        assert!(e.to_string().contains("gzip"), "{e}");
        let e = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n",
            100,
        )
        .unwrap_err();
        assert!(e.to_string().contains("longer than its size"), "{e}");
    }

    proptest! {
        /// Any body survives chunked framing with any chunk sizes, and an over-long
        /// body is refused rather than read.
        #[test]
        fn chunked_round_trip(body in proptest::collection::vec(any::<u8>(), 0..600),
                              cut in 1usize..80, max in 0usize..700) {
            let mut wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for c in body.chunks(cut) {
                wire.extend(format!("{:x}\r\n", c.len()).bytes());
                wire.extend(c);
                wire.extend(b"\r\n");
            }
            wire.extend(b"0\r\n\r\n");
            match parse(&wire, max) {
                Ok(r) => { prop_assert!(body.len() <= max); prop_assert_eq!(r.body, body); }
                Err(e) => { prop_assert!(body.len() > max, "{}", e); }
            }
        }

        /// Arbitrary bytes never panic the parser.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes, 128);
        }
    }
}

//! Finding a ClickHouse exception in the bytes of a response.
//!
//! ClickHouse starts streaming a result with `200 OK` and may fail later; the error then
//! arrives as text at the end of the body, after whatever rows were already sent. Three
//! forms exist, all handled here:
//!
//! - 25.11 and later (tagged): the response carries `X-ClickHouse-Exception-Tag: <tag>`
//!   and the body ends with
//!   `\r\n__exception__\r\n<tag>\r\n<message>\n<size> <tag>\r\n__exception__\r\n`.
//! - 19.x to 25.10: the body ends with `Code: N. DB::Exception: <message>\n`.
//! - 18.x: the body ends with `Code: N, e.displayText() = DB::Exception: <message>\n`.
//!
//! The worker keeps the last [`TAIL_BYTES`] of every response in a [`Tail`] and asks it at
//! the end. The untagged forms are recognised by their shape only, so a result whose very
//! last value is such text would be taken for an error: that is the protocol's limit,
//! shared by every ClickHouse client, and only servers older than 25.11 have it.

use std::collections::VecDeque;

use bytes::Bytes;

/// How much of a response's end is kept to look for an exception. ClickHouse exception
/// messages are far shorter.
pub const TAIL_BYTES: usize = 64 * 1024;

/// An exception ClickHouse reported, with its numeric code when it gave one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerException {
    pub code: Option<i32>,
    pub message: String,
}

/// The last bytes of a stream, without copying them: it keeps the newest chunks (cheap
/// reference-counted `Bytes`) that together cover at least `TAIL_BYTES`.
#[derive(Debug, Default)]
pub struct Tail {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Tail {
    pub fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push_back(chunk);
        while let Some(front) = self.chunks.front() {
            if self.len - front.len() < TAIL_BYTES {
                break;
            }
            self.len -= front.len();
            self.chunks.pop_front();
        }
    }

    /// The last `TAIL_BYTES` (or fewer, for a short stream).
    pub fn bytes(&self) -> Vec<u8> {
        let mut all = Vec::with_capacity(self.len);
        for c in &self.chunks {
            all.extend_from_slice(c);
        }
        let cut = all.len().saturating_sub(TAIL_BYTES);
        all.drain(..cut);
        all
    }

    /// The exception at the end of the stream, if there is one.
    pub fn exception(&self, tag: Option<&str>) -> Option<ServerException> {
        if let Some(tag) = tag
            && let Some(e) = tagged_exception(&self.bytes(), tag)
        {
            return Some(e);
        }
        untagged_exception(&self.bytes())
    }
}

fn tagged_exception(buf: &[u8], tag: &str) -> Option<ServerException> {
    let end = format!(" {tag}\r\n__exception__\r\n");
    if !buf.ends_with(end.as_bytes()) {
        return None;
    }
    let start = format!("__exception__\r\n{tag}\r\n");
    let from = find_last(buf, start.as_bytes())? + start.len();
    let body = &buf[from..buf.len() - end.len()];
    // `body` is `<message>\n<size>`: drop the size line.
    let nl = body.iter().rposition(|&b| b == b'\n')?;
    let message = String::from_utf8_lossy(&body[..nl]).trim().to_string();
    Some(ServerException {
        code: parse_code(&message),
        message,
    })
}

fn untagged_exception(buf: &[u8]) -> Option<ServerException> {
    // Look at every "Code: " from the end backwards; the first one that opens an
    // exception in either text form and runs to the end of the stream is it.
    let mut search_end = buf.len();
    while let Some(pos) = find_last(&buf[..search_end], b"Code: ") {
        let rest = &buf[pos..];
        let text = String::from_utf8_lossy(rest);
        if let Some(code) = parse_code(&text) {
            let after_code = &text["Code: ".len() + code.to_string().len()..];
            if after_code.starts_with(". DB::Exception:")
                || after_code.starts_with(", e.displayText() = DB::Exception:")
                || after_code.starts_with(", e.displayText() = ")
            {
                return Some(ServerException {
                    code: Some(code),
                    message: text.trim_end().to_string(),
                });
            }
        }
        search_end = pos;
    }
    None
}

/// `Code: 62. ...` -> 62
pub fn parse_code(text: &str) -> Option<i32> {
    let rest = text.trim_start().strip_prefix("Code: ")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > haystack.len() {
        return None;
    }
    (0..=haystack.len() - needle.len())
        .rev()
        .find(|&i| &haystack[i..i + needle.len()] == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_of(parts: &[&[u8]]) -> Tail {
        let mut t = Tail::default();
        for p in parts {
            t.push(Bytes::copy_from_slice(p));
        }
        t
    }

    #[test]
    fn finds_the_18x_form() {
        let t = tail_of(&[
            b"{\"n\":\"1\"}\n",
            b"Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf' function is non zero, e.what() = DB::Exception\n",
        ]);
        let e = t.exception(None).unwrap();
        assert_eq!(e.code, Some(395));
        assert!(e.message.contains("throwIf"));
    }

    #[test]
    fn finds_the_modern_untagged_form() {
        let t = tail_of(&[
            b"1\n2\nCode: 62. DB::Exception: Syntax error. (SYNTAX_ERROR) (version 24.3.1)\n",
        ]);
        assert_eq!(t.exception(None).unwrap().code, Some(62));
    }

    #[test]
    fn finds_the_tagged_form_split_across_chunks() {
        let msg = "Code: 395. DB::Exception: Value passed to 'throwIf' function is non-zero. (FUNCTION_THROW_IF_VALUE_IS_NON_ZERO) (version 26.9.2.1)\n";
        let body = format!(
            "{{\"a\":1}}\n\r\n__exception__\r\nabcdefgh\r\n{msg}{} abcdefgh\r\n__exception__\r\n",
            msg.len()
        );
        let bytes = body.as_bytes();
        let (a, b) = bytes.split_at(20);
        let t = tail_of(&[a, b]);
        let e = t.exception(Some("abcdefgh")).unwrap();
        assert_eq!(e.code, Some(395));
        assert!(e.message.ends_with("(version 26.9.2.1)"), "{}", e.message);
    }

    #[test]
    fn clean_results_have_no_exception() {
        let t = tail_of(&[b"{\"s\":\"Code: not a number\"}\n", b"Code: x\n"]);
        assert_eq!(t.exception(Some("tag")), None);
        assert_eq!(tail_of(&[b""]).exception(None), None);
    }

    #[test]
    fn tail_stays_bounded() {
        let mut t = Tail::default();
        for _ in 0..100 {
            t.push(Bytes::from_static(&[b'x'; 10_000]));
        }
        assert_eq!(t.bytes().len(), TAIL_BYTES);
        assert!(
            t.len < TAIL_BYTES + 10_000,
            "holds no more than one extra chunk"
        );
        t.push(Bytes::from(vec![b'y'; TAIL_BYTES * 2]));
        assert_eq!(t.bytes().len(), TAIL_BYTES);
        assert_eq!(t.chunks.len(), 1);
        assert!(t.bytes().iter().all(|&b| b == b'y'));
    }
}

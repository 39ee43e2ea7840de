//! Column names and types from the header some formats carry, read from the first bytes
//! of the result as they stream past, so that a result in those formats needs no
//! DESCRIBE: `meta` of JSON, JSONCompact, JSONStrings and JSONCompactStrings, the first
//! two lines of TabSeparatedWithNamesAndTypes, CSVWithNamesAndTypes and
//! JSONCompactEachRowWithNamesAndTypes. At most [`HEADER_LIMIT`] bytes are kept while
//! looking.

use bytes::BytesMut;
use serde::Deserialize;

use crate::execution::{Column, Format};

/// A header not complete within this many bytes is given up on (the caller then asks
/// DESCRIBE).
pub const HEADER_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// `{"meta": [{"name": ..., "type": ...}, ...], "data": ...}`
    JsonMeta,
    /// A line of names and a line of types, tab-separated and escaped.
    TsvNamesAndTypes,
    /// The same, comma-separated and quoted.
    CsvNamesAndTypes,
    /// The same, as JSON arrays of strings.
    JsonNamesAndTypes,
}

/// Reads the header of one result.
#[derive(Debug)]
pub struct HeaderReader {
    kind: Kind,
    head: BytesMut,
    /// `Some` once decided: the columns, or `None` when they cannot be read.
    found: Option<Option<Vec<Column>>>,
}

impl HeaderReader {
    /// `None` when `format` carries no names and types.
    pub fn new(format: Format) -> Option<HeaderReader> {
        let kind = match format {
            Format::JSON
            | Format::JSONCompact
            | Format::JSONStrings
            | Format::JSONCompactStrings => Kind::JsonMeta,
            Format::TabSeparatedWithNamesAndTypes => Kind::TsvNamesAndTypes,
            Format::CSVWithNamesAndTypes => Kind::CsvNamesAndTypes,
            Format::JSONCompactEachRowWithNamesAndTypes => Kind::JsonNamesAndTypes,
            _ => return None,
        };
        Some(HeaderReader {
            kind,
            head: BytesMut::new(),
            found: None,
        })
    }

    /// Looks at the next bytes of the result (free once the header has been read).
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.found.is_some() {
            return;
        }
        self.head.extend_from_slice(chunk);
        let parsed = match self.kind {
            Kind::JsonMeta => json_meta(&self.head),
            Kind::TsvNamesAndTypes => names_and_types(&self.head, tsv_fields),
            Kind::CsvNamesAndTypes => names_and_types(&self.head, csv_fields),
            Kind::JsonNamesAndTypes => names_and_types(&self.head, |line| {
                serde_json::from_slice::<Vec<String>>(line).ok()
            }),
        };
        match parsed {
            Parsed::Columns(c) => self.found = Some(Some(c)),
            Parsed::Invalid => self.found = Some(None),
            Parsed::NeedMore if self.head.len() > HEADER_LIMIT => self.found = Some(None),
            Parsed::NeedMore => return,
        }
        self.head = BytesMut::new();
    }

    /// The columns, once the whole result has been fed; `None` when they could not be read.
    pub fn columns(self) -> Option<Vec<Column>> {
        self.found.flatten()
    }
}

enum Parsed {
    Columns(Vec<Column>),
    NeedMore,
    Invalid,
}

fn json_meta(head: &[u8]) -> Parsed {
    #[derive(Deserialize)]
    struct Meta {
        name: String,
        #[serde(rename = "type")]
        type_: String,
    }
    let start = head.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start else {
        return Parsed::NeedMore;
    };
    if head[start] != b'{' {
        return Parsed::Invalid;
    }
    // `{`, then `"meta"`, then `:`, each with optional whitespace: anything else is not
    // the header this reader knows.
    let mut rest = &head[start + 1..];
    for expected in [&b"\"meta\""[..], b":"] {
        rest = trim_start(rest);
        if rest.len() < expected.len() {
            return Parsed::NeedMore;
        }
        if !rest.starts_with(expected) {
            return Parsed::Invalid;
        }
        rest = &rest[expected.len()..];
    }
    match serde_json::Deserializer::from_slice(rest)
        .into_iter::<Vec<Meta>>()
        .next()
    {
        Some(Ok(meta)) => Parsed::Columns(
            meta.into_iter()
                .map(|m| Column {
                    name: m.name,
                    type_: m.type_,
                })
                .collect(),
        ),
        Some(Err(e)) if e.is_eof() => Parsed::NeedMore,
        None => Parsed::NeedMore,
        Some(Err(_)) => Parsed::Invalid,
    }
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

/// Two complete lines, names then types, each split into fields by `fields`.
fn names_and_types(head: &[u8], fields: impl Fn(&[u8]) -> Option<Vec<String>>) -> Parsed {
    let mut lines = head.split(|&b| b == b'\n');
    let (Some(names), Some(types)) = (lines.next(), lines.next()) else {
        return Parsed::NeedMore;
    };
    // The second line is complete only once a newline follows it.
    if lines.next().is_none() {
        return Parsed::NeedMore;
    }
    match (fields(names), fields(types)) {
        (Some(names), Some(types)) if names.len() == types.len() => Parsed::Columns(
            names
                .into_iter()
                .zip(types)
                .map(|(name, type_)| Column { name, type_ })
                .collect(),
        ),
        _ => Parsed::Invalid,
    }
}

fn tsv_fields(line: &[u8]) -> Option<Vec<String>> {
    line.split(|&b| b == b'\t').map(tsv_unescape).collect()
}

/// The fields of one CSV line as ClickHouse writes a header: each quoted, `""` for `"`.
fn csv_fields(line: &[u8]) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut rest = line.strip_suffix(b"\r").unwrap_or(line);
    loop {
        let mut field = Vec::new();
        if let Some(quoted) = rest.strip_prefix(b"\"") {
            let mut i = 0;
            loop {
                match quoted.get(i) {
                    Some(b'"') if quoted.get(i + 1) == Some(&b'"') => {
                        field.push(b'"');
                        i += 2;
                    }
                    Some(b'"') => break,
                    Some(&b) => {
                        field.push(b);
                        i += 1;
                    }
                    None => return None,
                }
            }
            rest = &quoted[i + 1..];
        } else {
            let end = rest.iter().position(|&b| b == b',').unwrap_or(rest.len());
            field.extend_from_slice(&rest[..end]);
            rest = &rest[end..];
        }
        fields.push(String::from_utf8(field).ok()?);
        match rest.split_first() {
            None => return Some(fields),
            Some((b',', after)) => rest = after,
            Some(_) => return None,
        }
    }
}

/// One field of TabSeparated, unescaped; `None` when it is not UTF-8.
fn tsv_unescape(field: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.iter();
    while let Some(&b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b't') => out.push(b'\t'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b'0') => out.push(0),
            Some(b'b') => out.push(0x08),
            Some(b'f') => out.push(0x0c),
            Some(&other) => out.push(other),
            None => out.push(b'\\'),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(format: Format, chunks: &[&[u8]]) -> Option<Vec<Column>> {
        let mut r = HeaderReader::new(format).expect("a format with a header");
        for c in chunks {
            r.feed(c);
        }
        r.columns()
    }

    fn col(name: &str, type_: &str) -> Column {
        Column {
            name: name.into(),
            type_: type_.into(),
        }
    }

    #[test]
    fn json_meta_across_chunks() {
        let body = b"{\n\t\"meta\":\n\t[\n\t\t{\n\t\t\t\"name\": \"n\",\n\t\t\t\"type\": \"UInt8\"\n\t\t},\n\t\t{\n\t\t\t\"name\": \"s \\\"q\\\"\",\n\t\t\t\"type\": \"String\"\n\t\t}\n\t],\n\n\t\"data\":\n\t[\n";
        let want = vec![col("n", "UInt8"), col("s \"q\"", "String")];
        for split in 0..body.len() {
            let (a, b) = body.split_at(split);
            assert_eq!(
                read(Format::JSON, &[a, b]),
                Some(want.clone()),
                "split at {split}"
            );
        }
    }

    #[test]
    fn tsv_names_and_types_unescaped() {
        let body = b"a\\tb\tc\nUInt8\tArray(String)\n1\t[]\n";
        let want = vec![col("a\tb", "UInt8"), col("c", "Array(String)")];
        for split in 0..body.len() {
            let (a, b) = body.split_at(split);
            assert_eq!(
                read(Format::TabSeparatedWithNamesAndTypes, &[a, b]),
                Some(want.clone())
            );
        }
    }

    #[test]
    fn csv_and_json_names_and_types() {
        let want = vec![col("a,\"b\"", "UInt8"), col("c", "String")];
        let csv = b"\"a,\"\"b\"\"\",\"c\"\n\"UInt8\",\"String\"\n1,\"x\"\n";
        assert_eq!(
            read(Format::CSVWithNamesAndTypes, &[csv]),
            Some(want.clone())
        );
        let json = b"[\"a,\\\"b\\\"\", \"c\"]\n[\"UInt8\", \"String\"]\n[1, \"x\"]\n";
        assert_eq!(
            read(Format::JSONCompactEachRowWithNamesAndTypes, &[json]),
            Some(want)
        );
    }

    #[test]
    fn no_header_means_none() {
        assert!(HeaderReader::new(Format::JSONEachRow).is_none());
        assert_eq!(read(Format::JSON, &[b""]), None, "empty output");
        assert_eq!(read(Format::JSON, &[b"{\"data\": []}"]), None);
        assert_eq!(read(Format::TabSeparatedWithNamesAndTypes, &[b"a\n"]), None);
        assert_eq!(
            read(Format::TabSeparatedWithNamesAndTypes, &[b"a\tb\nUInt8\n"]),
            None,
            "names and types disagree"
        );
    }
}

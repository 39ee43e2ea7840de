//! Counting rows of a result while it streams through, without decoding it.
//!
//! Text formats put one row per line (after their header lines); CSV may hold a newline
//! inside a quoted field, so it tracks quotes. The JSON formats state `"rows": N` near
//! their end, XML `<rows>N</rows>`. Parquet and Arrow state their counts in their
//! structure (see `binary_rows`). Native, RowBinary and the layouts for people (Pretty,
//! Vertical, Markdown, Values) would have to be decoded: their count stays unknown
//! rather than guessed.

use super::binary_rows::{ArrowCounter, parquet_rows};
use crate::execution::RowCounting;

#[derive(Debug)]
pub struct RowCounter {
    mode: RowCounting,
    newlines: u64,
    in_quotes: bool,
    arrow: Option<ArrowCounter>,
}

impl RowCounter {
    pub fn new(mode: RowCounting) -> RowCounter {
        RowCounter {
            mode,
            newlines: 0,
            in_quotes: false,
            arrow: match mode {
                RowCounting::ArrowMessages { file } => Some(ArrowCounter::new(file)),
                _ => None,
            },
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match self.mode {
            RowCounting::Lines { .. } => {
                self.newlines += memchr::memchr_iter(b'\n', chunk).count() as u64;
            }
            RowCounting::CsvLines { .. } => {
                if !self.in_quotes && memchr::memchr(b'"', chunk).is_none() {
                    self.newlines += memchr::memchr_iter(b'\n', chunk).count() as u64;
                    return;
                }
                for &b in chunk {
                    match b {
                        b'"' => self.in_quotes = !self.in_quotes,
                        b'\n' if !self.in_quotes => self.newlines += 1,
                        _ => {}
                    }
                }
            }
            RowCounting::ArrowMessages { .. } => {
                if let Some(a) = self.arrow.as_mut() {
                    a.feed(chunk);
                }
            }
            RowCounting::JsonRowsField
            | RowCounting::XmlRowsField
            | RowCounting::ParquetFooter
            | RowCounting::Unknown => {}
        }
    }

    /// The row count, given the last bytes of the stream (for `"rows": N`).
    pub fn finish(&self, tail: &[u8]) -> Option<u64> {
        match self.mode {
            RowCounting::Lines { header_lines } | RowCounting::CsvLines { header_lines } => {
                Some(self.newlines.saturating_sub(header_lines))
            }
            RowCounting::JsonRowsField => number_after(tail, b"\"rows\":"),
            RowCounting::XmlRowsField => number_after(tail, b"<rows>"),
            RowCounting::ParquetFooter => parquet_rows(tail),
            RowCounting::ArrowMessages { .. } => self.arrow.as_ref().and_then(ArrowCounter::finish),
            RowCounting::Unknown => None,
        }
    }
}

/// The number after the last `key` in `tail` (`"rows": N` of JSON, `<rows>N` of XML).
fn number_after(tail: &[u8], key: &[u8]) -> Option<u64> {
    let pos = memchr::memmem::rfind(tail, key)?;
    let rest = &tail[pos + key.len()..];
    let digits: String = rest
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take_while(|b| b.is_ascii_digit())
        .map(|&b| b as char)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lines_minus_headers() {
        let mut c = RowCounter::new(RowCounting::Lines { header_lines: 2 });
        c.feed(b"a\tb\nUInt8\tString\n1\tx\n");
        c.feed(b"2\ty\n");
        assert_eq!(c.finish(b""), Some(2));
    }

    #[test]
    fn csv_newlines_inside_quotes_are_not_rows() {
        let mut c = RowCounter::new(RowCounting::CsvLines { header_lines: 1 });
        c.feed(b"\"s\"\n\"a\nb\"\n\"c\"\"");
        c.feed(b"\nd\"\n");
        assert_eq!(c.finish(b""), Some(2));
    }

    #[test]
    fn json_reads_the_rows_field() {
        let c = RowCounter::new(RowCounting::JsonRowsField);
        assert_eq!(
            c.finish(b"\t],\n\n\t\"rows\": 42,\n\n\t\"statistics\": {}\n}\n"),
            Some(42)
        );
    }

    #[test]
    fn xml_reads_the_rows_element() {
        let c = RowCounter::new(RowCounting::XmlRowsField);
        assert_eq!(
            c.finish(b"\t</data>\n\t<rows>3</rows>\n\t<statistics>"),
            Some(3)
        );
    }

    #[test]
    fn binary_formats_stay_unknown() {
        let mut c = RowCounter::new(RowCounting::Unknown);
        c.feed(b"\n\n\n");
        assert_eq!(c.finish(b""), None);
    }
}

//! Counting rows of a result while it streams through, without decoding it.
//!
//! Text formats put one row per line (after their header lines); CSV may hold a newline
//! inside a quoted field, so it tracks quotes. The JSON formats state `"rows": N` near
//! their end, XML `<rows>N</rows>`. Parquet and Arrow state their counts in their
//! structure (see `binary_rows`). Native, RowBinary and the layouts for people (Pretty,
//! Vertical, Markdown, Values) would have to be decoded: their count stays unknown
//! rather than guessed.
//!
//! The same line ends cap a result (`row_limit`/`byte_limit`, see [`Limits`]): the
//! counter tracks where the last whole row within the caps ends, and when the first
//! row past them ends it stops counting: the worker stores up to [`RowCounter::kept`]
//! and stops the query.

use super::binary_rows::{ArrowCounter, parquet_rows};
use crate::execution::{Limits, RowCounting, RowIndex};

#[derive(Debug)]
pub struct RowCounter {
    mode: RowCounting,
    newlines: u64,
    in_quotes: bool,
    arrow: Option<ArrowCounter>,
    /// Bytes fed so far.
    offset: u64,
    /// Line formats: where every `stride`-th row starts.
    index: Option<RowIndex>,
    header_lines: u64,
    limits: Limits,
    /// With limits: the end of the last whole line within them.
    kept: u64,
    /// With limits: a line ended past them; nothing after `kept` belongs to the result.
    cut: bool,
}

impl RowCounter {
    /// A counter that also finds where a result capped by `limits` ends (line formats;
    /// other formats are refused limits at submit and are never cut).
    pub fn new(mode: RowCounting, limits: Limits) -> RowCounter {
        let header_lines = match mode {
            RowCounting::Lines { header_lines } | RowCounting::CsvLines { header_lines } => {
                Some(header_lines)
            }
            _ => None,
        };
        RowCounter {
            mode,
            newlines: 0,
            in_quotes: false,
            arrow: match mode {
                RowCounting::ArrowMessages { file } => Some(ArrowCounter::new(file)),
                _ => None,
            },
            offset: 0,
            index: header_lines.map(|h| RowIndex {
                stride: RowIndex::FIRST_STRIDE,
                offsets: if h == 0 { vec![0] } else { Vec::new() },
            }),
            header_lines: header_lines.unwrap_or(0),
            limits,
            kept: 0,
            cut: false,
        }
    }

    /// Bytes from the start that are whole lines within the limits (all bytes fed so
    /// far when there are no limits).
    pub fn kept(&self) -> u64 {
        if self.limits.any() {
            self.kept
        } else {
            self.offset
        }
    }

    /// Whether the output went past the limits.
    pub fn cut(&self) -> bool {
        self.cut
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match self.mode {
            RowCounting::Lines { .. } => {
                for pos in memchr::memchr_iter(b'\n', chunk) {
                    self.line_end(pos);
                }
            }
            RowCounting::CsvLines { .. } => {
                if !self.in_quotes && memchr::memchr(b'"', chunk).is_none() {
                    for pos in memchr::memchr_iter(b'\n', chunk) {
                        self.line_end(pos);
                    }
                } else {
                    for (pos, &b) in chunk.iter().enumerate() {
                        match b {
                            b'"' => self.in_quotes = !self.in_quotes,
                            b'\n' if !self.in_quotes => self.line_end(pos),
                            _ => {}
                        }
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
        self.offset += chunk.len() as u64;
    }

    /// A row (or header line) ended at byte `pos` of the current chunk: the next row
    /// starts after it; every `stride`-th such start is indexed.
    fn line_end(&mut self, pos: usize) {
        if self.cut {
            return;
        }
        let end = self.offset + pos as u64 + 1;
        if self.limits.any() {
            let rows = (self.newlines + 1).saturating_sub(self.header_lines);
            if self.limits.rows.is_some_and(|cap| rows > cap)
                || self.limits.bytes.is_some_and(|cap| end > cap)
            {
                self.cut = true;
                return;
            }
            self.kept = end;
        }
        self.newlines += 1;
        let Some(index) = self.index.as_mut() else {
            return;
        };
        let Some(row) = self.newlines.checked_sub(self.header_lines) else {
            return;
        };
        // Strides are powers of two.
        if row & (index.stride - 1) == 0 && row / index.stride == index.offsets.len() as u64 {
            index.offsets.push(end);
            if index.offsets.len() >= RowIndex::MAX_ENTRIES {
                let kept: Vec<u64> = index.offsets.iter().step_by(2).copied().collect();
                index.offsets = kept;
                index.stride *= 2;
            }
        }
    }

    /// Where rows start (line formats), once all bytes are fed.
    pub fn index(&mut self) -> Option<RowIndex> {
        self.index.take()
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
    fn indexes_where_rows_start() {
        let mut c = RowCounter::new(RowCounting::Lines { header_lines: 1 }, Limits::default());
        let mut text = b"h\n".to_vec();
        for i in 0..5000 {
            text.extend_from_slice(format!("{i}\n").as_bytes());
        }
        // Fed in uneven pieces: offsets are absolute.
        for piece in text.chunks(777) {
            c.feed(piece);
        }
        let index = c.index().unwrap();
        assert_eq!(index.stride, RowIndex::FIRST_STRIDE);
        assert_eq!(index.offsets.len(), 5);
        for (i, &at) in index.offsets.iter().enumerate() {
            let row = i as u64 * index.stride;
            let line = text[at as usize..].split(|&b| b == b'\n').next().unwrap();
            assert_eq!(line, row.to_string().as_bytes(), "entry {i}");
        }
    }

    #[test]
    fn the_index_stays_small() {
        let mut c = RowCounter::new(RowCounting::CsvLines { header_lines: 0 }, Limits::default());
        let rows = RowIndex::FIRST_STRIDE * RowIndex::MAX_ENTRIES as u64 * 3;
        let chunk = b"1\n".repeat(4096);
        for _ in 0..rows / 4096 {
            c.feed(&chunk);
        }
        let index = c.index().unwrap();
        assert!(index.offsets.len() < RowIndex::MAX_ENTRIES);
        assert_eq!(index.stride, RowIndex::FIRST_STRIDE * 4);
        assert!(
            index
                .offsets
                .iter()
                .enumerate()
                .all(|(i, &o)| o == i as u64 * index.stride * 2)
        );
    }

    #[test]
    fn counts_lines_minus_headers() {
        let mut c = RowCounter::new(RowCounting::Lines { header_lines: 2 }, Limits::default());
        c.feed(b"a\tb\nUInt8\tString\n1\tx\n");
        c.feed(b"2\ty\n");
        assert_eq!(c.finish(b""), Some(2));
    }

    /// A quoted value whose newline arrives in a chunk of its own, with no quote in
    /// it: the chunk is still inside the quotes (the fast path for quote-free chunks
    /// applies only outside them).
    #[test]
    fn a_chunk_inside_a_quoted_csv_value_ends_no_row() {
        let mut c = RowCounter::new(RowCounting::CsvLines { header_lines: 0 }, Limits::default());
        c.feed(b"\"a");
        c.feed(b"\nb");
        c.feed(b"\"\n");
        assert_eq!(c.finish(b""), Some(1));
    }

    #[test]
    fn csv_newlines_inside_quotes_are_not_rows() {
        let mut c = RowCounter::new(RowCounting::CsvLines { header_lines: 1 }, Limits::default());
        c.feed(b"\"s\"\n\"a\nb\"\n\"c\"\"");
        c.feed(b"\nd\"\n");
        assert_eq!(c.finish(b""), Some(2));
    }

    #[test]
    fn a_row_limit_keeps_whole_rows_after_the_header() {
        let limits = Limits {
            rows: Some(2),
            bytes: None,
        };
        let mut c = RowCounter::new(RowCounting::Lines { header_lines: 1 }, limits);
        c.feed(b"h\na\nb");
        assert_eq!((c.kept(), c.cut()), (4, false), "b has not ended yet");
        c.feed(b"\nc\nd\n");
        assert_eq!((c.kept(), c.cut()), (6, true));
        assert_eq!(c.finish(b""), Some(2));
    }

    #[test]
    fn exactly_the_limit_is_not_cut() {
        let limits = Limits {
            rows: Some(2),
            bytes: Some(4),
        };
        let mut c = RowCounter::new(RowCounting::CsvLines { header_lines: 0 }, limits);
        c.feed(b"a\nb\n");
        assert_eq!((c.kept(), c.cut()), (4, false));
    }

    #[test]
    fn a_byte_limit_ends_at_the_last_whole_row_that_fits() {
        let limits = Limits {
            rows: None,
            bytes: Some(7),
        };
        let mut c = RowCounter::new(RowCounting::CsvLines { header_lines: 0 }, limits);
        // The quoted newline is inside a row, not the end of one.
        c.feed(b"\"x\ny\"\nzz\n");
        assert_eq!((c.kept(), c.cut()), (6, true));
        assert_eq!(c.finish(b""), Some(1));
    }

    #[test]
    fn json_reads_the_rows_field() {
        let c = RowCounter::new(RowCounting::JsonRowsField, Limits::default());
        assert_eq!(
            c.finish(b"\t],\n\n\t\"rows\": 42,\n\n\t\"statistics\": {}\n}\n"),
            Some(42)
        );
    }

    #[test]
    fn xml_reads_the_rows_element() {
        let c = RowCounter::new(RowCounting::XmlRowsField, Limits::default());
        assert_eq!(
            c.finish(b"\t</data>\n\t<rows>3</rows>\n\t<statistics>"),
            Some(3)
        );
    }

    #[test]
    fn binary_formats_stay_unknown() {
        let mut c = RowCounter::new(RowCounting::Unknown, Limits::default());
        c.feed(b"\n\n\n");
        assert_eq!(c.finish(b""), None);
    }
}

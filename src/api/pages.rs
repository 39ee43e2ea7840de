//! Pages of rows of a stored line-format result (`?row_offset=&row_limit=` on the
//! result download): one ranged read from the row index entry at or before the offset
//! (see `execution::RowIndex`), skipping at most one stride of rows, then the page's
//! rows, behind the format's header lines. Streamed: never more than a chunk in memory.

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::error::ApiError;
use crate::execution::{ResultMeta, RowCounting};
use crate::results::{ResultStore, ResultsError};

/// The bytes of rows `offset .. offset + limit` of `meta` (header lines first).
pub async fn page(
    results: &ResultStore,
    meta: &ResultMeta,
    offset: u64,
    limit: u64,
) -> Result<impl Stream<Item = Result<Bytes, ResultsError>> + use<>, ApiError> {
    let (Some(index), csv) = (
        meta.row_index.as_ref(),
        matches!(meta.format.row_counting(), RowCounting::CsvLines { .. }),
    ) else {
        return Err(ApiError::Conflict {
            code: "not_pageable",
            message: format!(
                "rows can be paged in line formats (JSONEachRow, CSV, TabSeparated and their \
                 variants), not {}; download the whole result or a byte Range",
                meta.format
            ),
        });
    };
    let Some(&header_end) = index.offsets.first() else {
        return Ok(futures::stream::empty().boxed());
    };
    let entry = ((offset / index.stride) as usize).min(index.offsets.len() - 1);
    let start = index.offsets[entry];
    let skip = offset - entry as u64 * index.stride;
    let header = if header_end > 0 {
        results.read(&meta.object_key, Some(0..header_end)).await?
    } else {
        futures::stream::empty().boxed()
    };
    let body = if start < meta.bytes && limit > 0 {
        results
            .read(&meta.object_key, Some(start..meta.bytes))
            .await?
    } else {
        futures::stream::empty().boxed()
    };
    let mut cut = Cut {
        skip,
        limit,
        csv,
        in_quotes: false,
    };
    let rows = body
        .scan(false, move |done, chunk| {
            let out = if *done {
                None
            } else {
                Some(chunk.map(|c| {
                    let (bytes, finished) = cut.take(&c);
                    *done = finished;
                    bytes
                }))
            };
            futures::future::ready(out)
        })
        .filter(|c| futures::future::ready(!matches!(c, Ok(b) if b.is_empty())));
    Ok(header.chain(rows).boxed())
}

/// Cuts a page out of a stream of rows: skips `skip` rows, then passes `limit`.
struct Cut {
    skip: u64,
    limit: u64,
    csv: bool,
    in_quotes: bool,
}

impl Cut {
    /// The part of `chunk` inside the page, and whether the page is complete.
    fn take(&mut self, chunk: &Bytes) -> (Bytes, bool) {
        let mut from = if self.skip == 0 { Some(0) } else { None };
        for (pos, &b) in chunk.iter().enumerate() {
            if self.csv && b == b'"' {
                self.in_quotes = !self.in_quotes;
                continue;
            }
            if b != b'\n' || self.in_quotes {
                continue;
            }
            if self.skip > 0 {
                self.skip -= 1;
                if self.skip == 0 {
                    from = Some(pos + 1);
                }
            } else {
                self.limit -= 1;
                if self.limit == 0 {
                    let start = from.unwrap_or(pos + 1);
                    return (chunk.slice(start..pos + 1), true);
                }
            }
        }
        match from {
            Some(start) => (chunk.slice(start..), false),
            None => (Bytes::new(), false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_of(text: &[u8], pieces: usize, skip: u64, limit: u64, csv: bool) -> Vec<u8> {
        let mut cut = Cut {
            skip,
            limit,
            csv,
            in_quotes: false,
        };
        let mut out = Vec::new();
        for piece in text.chunks(pieces) {
            let (b, done) = cut.take(&Bytes::copy_from_slice(piece));
            out.extend_from_slice(&b);
            if done {
                break;
            }
        }
        out
    }

    #[test]
    fn cuts_rows_across_chunks() {
        let text = b"0\n1\n2\n3\n4\n5\n";
        for size in [1, 2, 3, 5, 100] {
            assert_eq!(
                page_of(text, size, 2, 3, false),
                b"2\n3\n4\n",
                "chunks of {size}"
            );
            assert_eq!(page_of(text, size, 0, 1, false), b"0\n");
            assert_eq!(page_of(text, size, 5, 10, false), b"5\n");
            assert_eq!(page_of(text, size, 6, 10, false), b"");
        }
    }

    #[test]
    fn a_csv_newline_inside_quotes_is_not_a_row() {
        let text = b"\"a\nb\",1\n\"c\",2\n\"d\ne\",3\n";
        assert_eq!(page_of(text, 4, 1, 2, true), b"\"c\",2\n\"d\ne\",3\n");
        assert_eq!(page_of(text, 3, 0, 1, true), b"\"a\nb\",1\n");
    }
}

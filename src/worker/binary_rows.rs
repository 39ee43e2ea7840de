//! Row counts of the binary formats whose structure states them, read as the bytes pass
//! without decoding any value:
//! - **Parquet** ends with its footer, whose `FileMetaData.num_rows` (Thrift compact
//!   protocol, field 3) is the count; the footer must lie within the stream's last
//!   [`TAIL_BYTES`](crate::clickhouse::exception::TAIL_BYTES) (a result with very many row
//!   groups or columns gets no count).
//! - **Arrow** (IPC file: magic, then the stream) and **ArrowStream** are a sequence of
//!   messages, each a length-prefixed FlatBuffers `Message` and a body; the `length` of
//!   every `RecordBatch` message is summed, and the bodies are skipped by their length.
//!
//! Anything unexpected gives up: the count is then unknown, never a guess.

/// `FileMetaData.num_rows` of a Parquet file that ends `tail`.
pub fn parquet_rows(tail: &[u8]) -> Option<u64> {
    let n = tail.len();
    if n < 12 || &tail[n - 4..] != b"PAR1" {
        return None;
    }
    let footer_len = u32::from_le_bytes(tail[n - 8..n - 4].try_into().ok()?) as usize;
    let start = (n - 8).checked_sub(footer_len)?;
    let mut r = Compact {
        buf: &tail[start..n - 8],
        pos: 0,
    };
    // FileMetaData: 1 version (i32), 2 schema (list), 3 num_rows (i64), ...
    let mut last_id = 0i16;
    loop {
        let header = r.byte()?;
        if header == 0 {
            return None;
        }
        let (id, kind) = r.field(header, &mut last_id)?;
        if id == 3 && kind == I64 {
            return u64::try_from(r.zigzag()?).ok();
        }
        r.skip(kind)?;
    }
}

const BOOL_TRUE: u8 = 1;
const BOOL_FALSE: u8 = 2;
const BYTE: u8 = 3;
const I16: u8 = 4;
const I32: u8 = 5;
const I64: u8 = 6;
const DOUBLE: u8 = 7;
const BINARY: u8 = 8;
const LIST: u8 = 9;
const SET: u8 = 10;
const MAP: u8 = 11;
const STRUCT: u8 = 12;

/// A reader of the Thrift compact protocol, enough to skip what it does not need.
struct Compact<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Compact<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn zigzag(&mut self) -> Option<i64> {
        let v = self.varint()?;
        Some((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn advance(&mut self, n: usize) -> Option<()> {
        self.pos = self.pos.checked_add(n).filter(|&p| p <= self.buf.len())?;
        Some(())
    }

    /// A field header's id (delta-encoded, or in full after it) and type.
    fn field(&mut self, header: u8, last_id: &mut i16) -> Option<(i16, u8)> {
        let delta = (header >> 4) as i16;
        let id = if delta == 0 {
            i16::try_from(self.zigzag()?).ok()?
        } else {
            last_id.checked_add(delta)?
        };
        *last_id = id;
        Some((id, header & 0x0f))
    }

    fn skip(&mut self, kind: u8) -> Option<()> {
        match kind {
            BOOL_TRUE | BOOL_FALSE => Some(()),
            BYTE => self.advance(1),
            I16 | I32 | I64 => self.varint().map(|_| ()),
            DOUBLE => self.advance(8),
            BINARY => {
                let len = usize::try_from(self.varint()?).ok()?;
                self.advance(len)
            }
            LIST | SET => {
                let header = self.byte()?;
                let mut size = u64::from(header >> 4);
                if size == 15 {
                    size = self.varint()?;
                }
                let element = header & 0x0f;
                for _ in 0..size {
                    // Booleans in a collection take a byte each.
                    match element {
                        BOOL_TRUE | BOOL_FALSE => self.advance(1)?,
                        e => self.skip(e)?,
                    }
                }
                Some(())
            }
            MAP => {
                let size = self.varint()?;
                if size == 0 {
                    return Some(());
                }
                let kinds = self.byte()?;
                for _ in 0..size {
                    self.skip(kinds >> 4)?;
                    self.skip(kinds & 0x0f)?;
                }
                Some(())
            }
            STRUCT => {
                let mut last_id = 0i16;
                loop {
                    let header = self.byte()?;
                    if header == 0 {
                        return Some(());
                    }
                    let (_, kind) = self.field(header, &mut last_id)?;
                    self.skip(kind)?;
                }
            }
            _ => None,
        }
    }
}

/// Counts the rows of an Arrow IPC file or stream as it passes.
#[derive(Debug)]
pub struct ArrowCounter {
    state: Arrow,
    /// Bytes of the part being read (magic, prefix or metadata).
    pending: Vec<u8>,
    rows: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrow {
    /// The file format's `ARROW1` and two bytes of padding.
    Magic,
    /// A message's continuation marker and metadata length.
    Prefix,
    Metadata(usize),
    Body(u64),
    /// The end-of-stream marker was read (a file's footer may follow).
    Done,
    Broken,
}

/// Largest message metadata believed (a schema with thousands of columns is smaller).
const MAX_METADATA: usize = 16 << 20;

impl ArrowCounter {
    pub fn new(file: bool) -> ArrowCounter {
        ArrowCounter {
            state: if file { Arrow::Magic } else { Arrow::Prefix },
            pending: Vec::new(),
            rows: 0,
        }
    }

    pub fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            let need = match self.state {
                Arrow::Magic => 8,
                Arrow::Prefix => 8,
                Arrow::Metadata(len) => len,
                Arrow::Body(remaining) => {
                    let skip = remaining.min(chunk.len() as u64);
                    chunk = &chunk[skip as usize..];
                    self.state = match remaining - skip {
                        0 => Arrow::Prefix,
                        left => Arrow::Body(left),
                    };
                    continue;
                }
                Arrow::Done | Arrow::Broken => return,
            };
            let take = (need - self.pending.len()).min(chunk.len());
            self.pending.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.pending.len() == need {
                let part = std::mem::take(&mut self.pending);
                self.state = self.next(&part);
            }
        }
    }

    /// The state after a complete magic, prefix or metadata part.
    fn next(&mut self, part: &[u8]) -> Arrow {
        match self.state {
            Arrow::Magic if part.starts_with(b"ARROW1") => Arrow::Prefix,
            Arrow::Prefix => {
                if part[..4] != [0xff; 4] {
                    return Arrow::Broken;
                }
                match i32::from_le_bytes([part[4], part[5], part[6], part[7]]) {
                    0 => Arrow::Done,
                    len if len > 0 && (len as usize) <= MAX_METADATA => {
                        Arrow::Metadata(len as usize)
                    }
                    _ => Arrow::Broken,
                }
            }
            Arrow::Metadata(_) => match message(part) {
                Some((rows, body)) => {
                    self.rows += rows;
                    if body == 0 {
                        Arrow::Prefix
                    } else {
                        Arrow::Body(body)
                    }
                }
                None => Arrow::Broken,
            },
            _ => Arrow::Broken,
        }
    }

    /// The count, when the stream ended where a message may end.
    pub fn finish(&self) -> Option<u64> {
        let clean = match self.state {
            Arrow::Done => true,
            Arrow::Prefix => self.pending.is_empty(),
            _ => false,
        };
        clean.then_some(self.rows)
    }
}

/// A FlatBuffers `Message`: the rows of a RecordBatch (0 for other messages) and the
/// length of the body that follows.
fn message(buf: &[u8]) -> Option<(u64, u64)> {
    let message = Table::root(buf)?;
    const RECORD_BATCH: u8 = 3;
    let header_type = message.u8_field(1).unwrap_or(0);
    let body = u64::try_from(message.i64_field(3).unwrap_or(0)).ok()?;
    let rows = if header_type == RECORD_BATCH {
        let batch = message.table_field(2)?;
        u64::try_from(batch.i64_field(0).unwrap_or(0)).ok()?
    } else {
        0
    };
    Some((rows, body))
}

/// A FlatBuffers table, read through its vtable.
struct Table<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn u32_at(buf: &[u8], pos: usize) -> Option<u32> {
    Some(u32::from_le_bytes(buf.get(pos..pos + 4)?.try_into().ok()?))
}

fn u16_at(buf: &[u8], pos: usize) -> Option<u16> {
    Some(u16::from_le_bytes(buf.get(pos..pos + 2)?.try_into().ok()?))
}

impl<'a> Table<'a> {
    fn root(buf: &'a [u8]) -> Option<Table<'a>> {
        let pos = u32_at(buf, 0)? as usize;
        (pos < buf.len()).then_some(Table { buf, pos })
    }

    /// Where field `i` is stored, if present.
    fn field(&self, i: usize) -> Option<usize> {
        let soffset = i32::from_le_bytes(self.buf.get(self.pos..self.pos + 4)?.try_into().ok()?);
        let vtable = usize::try_from(self.pos as i64 - i64::from(soffset)).ok()?;
        let vtable_size = u16_at(self.buf, vtable)? as usize;
        let entry = 4 + 2 * i;
        if entry + 2 > vtable_size {
            return None;
        }
        match u16_at(self.buf, vtable + entry)? {
            0 => None,
            offset => Some(self.pos + offset as usize),
        }
    }

    fn u8_field(&self, i: usize) -> Option<u8> {
        self.buf.get(self.field(i)?).copied()
    }

    fn i64_field(&self, i: usize) -> Option<i64> {
        let at = self.field(i)?;
        Some(i64::from_le_bytes(
            self.buf.get(at..at + 8)?.try_into().ok()?,
        ))
    }

    fn table_field(&self, i: usize) -> Option<Table<'a>> {
        let at = self.field(i)?;
        let pos = at + u32_at(self.buf, at)? as usize;
        (pos < self.buf.len()).then_some(Table { buf: self.buf, pos })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_gives_no_count() {
        assert_eq!(parquet_rows(b""), None);
        assert_eq!(parquet_rows(b"PAR1xxxxxxxxPAR1"), None);
        let mut a = ArrowCounter::new(false);
        a.feed(b"not arrow at all");
        assert_eq!(a.finish(), None);
        let mut f = ArrowCounter::new(true);
        f.feed(b"ARROW1\0\0");
        assert_eq!(f.finish(), Some(0), "an empty file so far");
    }

    #[test]
    fn an_empty_stream_has_no_rows() {
        let mut a = ArrowCounter::new(false);
        a.feed(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!(a.finish(), Some(0));
    }
}

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

    // Written by ClickHouse 26.9 (testdata/regenerate.sh): 25 rows in blocks of 10, with
    // nested, nullable, decimal and LowCardinality columns. The Arrow streams hold a schema,
    // a dictionary batch of 3 values and record batches of 10, 10 and 5 rows.
    const PARQUET: &[u8] = include_bytes!("testdata/25-rows.parquet");
    const ARROW: &[u8] = include_bytes!("testdata/25-rows.arrow");
    const ARROW_STREAM: &[u8] = include_bytes!("testdata/25-rows.arrowstream");

    fn arrow_rows(bytes: &[u8], file: bool, chunk: usize) -> Option<u64> {
        let mut counter = ArrowCounter::new(file);
        for part in bytes.chunks(chunk) {
            counter.feed(part);
        }
        counter.finish()
    }

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

    #[test]
    fn clickhouse_arrow_counts_its_record_batches_however_it_is_cut() {
        for chunk in [1, 2, 3, 7, 8, 9, 100, 4096, usize::MAX] {
            assert_eq!(
                arrow_rows(ARROW_STREAM, false, chunk),
                Some(25),
                "chunks of {chunk}"
            );
            assert_eq!(
                arrow_rows(ARROW, true, chunk),
                Some(25),
                "file in chunks of {chunk}"
            );
        }
        // A file is a stream behind its magic: read as a stream, it is not one.
        assert_eq!(arrow_rows(ARROW, false, 4096), None);
        assert_eq!(arrow_rows(ARROW_STREAM, true, 4096), None);
    }

    #[test]
    fn a_cut_arrow_stream_counts_only_where_a_message_ends() {
        // Message boundaries, found by reading the prefixes and body lengths.
        let mut ends = Vec::new();
        let mut counter = ArrowCounter::new(false);
        for (i, byte) in ARROW_STREAM.iter().enumerate() {
            counter.feed(std::slice::from_ref(byte));
            if counter.state == Arrow::Prefix && counter.pending.is_empty() {
                ends.push((i + 1, counter.rows));
            }
        }
        let rows: Vec<u64> = ends.iter().map(|&(_, rows)| rows).collect();
        assert_eq!(
            rows,
            [0, 0, 10, 20, 25],
            "schema, dictionary, three batches"
        );
        for cut in 1..ARROW_STREAM.len() {
            let expected = ends.iter().find(|&&(end, _)| end == cut).map(|&(_, r)| r);
            assert_eq!(
                arrow_rows(&ARROW_STREAM[..cut], false, 4096),
                expected,
                "cut after {cut} bytes"
            );
        }
    }

    #[test]
    fn a_damaged_arrow_stream_gives_no_count() {
        // Gives up at once: a damaged length must not make it gather the rest of the
        // result as "metadata".
        let damaged = |at: usize, bytes: &[u8]| {
            let mut s = ARROW_STREAM.to_vec();
            s[at..at + bytes.len()].copy_from_slice(bytes);
            let mut counter = ArrowCounter::new(false);
            counter.feed(&s);
            assert_eq!(counter.finish(), None);
            (counter.state, counter.pending.len())
        };
        let broken = (Arrow::Broken, 0);
        assert_eq!(damaged(0, &[0xfe]), broken, "no continuation marker");
        assert_eq!(
            damaged(4, &(-8i32).to_le_bytes()),
            broken,
            "a negative length"
        );
        let too_long = (MAX_METADATA as i32 + 1).to_le_bytes();
        assert_eq!(
            damaged(4, &too_long),
            broken,
            "metadata longer than believed"
        );
        let just_right = (MAX_METADATA as i32).to_le_bytes();
        let mut counter = ArrowCounter::new(false);
        counter.feed(&[0xff, 0xff, 0xff, 0xff]);
        counter.feed(&just_right);
        assert_eq!(counter.state, Arrow::Metadata(MAX_METADATA));
        assert_eq!(
            damaged(8, &[0xff; 4]),
            broken,
            "a root table outside the message"
        );
        let mut counter = ArrowCounter::new(false);
        counter.feed(&[0xff, 0xff, 0xff, 0xff, 8, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            counter.state,
            Arrow::Broken,
            "a root table at the message's end"
        );
        // A RecordBatch message whose batch table would start where the message ends:
        // the root offset, a vtable (size 12; header_type at 8, header at 4), the table
        // (its vtable 12 bytes back, the header's offset, header_type 3) and padding.
        let mut message = vec![0xff, 0xff, 0xff, 0xff, 28, 0, 0, 0];
        message.extend_from_slice(&[16, 0, 0, 0, 12, 0, 12, 0, 0, 0, 8, 0, 4, 0, 0, 0]);
        message.extend_from_slice(&[12, 0, 0, 0, 8, 0, 0, 0, 3, 0, 0, 0]);
        let mut counter = ArrowCounter::new(false);
        counter.feed(&message);
        assert_eq!(counter.state, Arrow::Broken, "a batch at the message's end");
        // A file must open with its magic.
        let mut file = ARROW.to_vec();
        file[5] = b'2';
        assert_eq!(arrow_rows(&file, true, 4096), None, "ARROW2");
        // Bytes after the end-of-stream marker are a file's footer: not read.
        let mut s = ARROW_STREAM.to_vec();
        s.extend_from_slice(b"anything at all");
        assert_eq!(arrow_rows(&s, false, 5), Some(25));
    }

    #[test]
    fn clickhouse_parquet_states_its_rows_in_its_footer() {
        assert_eq!(parquet_rows(PARQUET), Some(25));
        let n = PARQUET.len();
        let footer = u32::from_le_bytes(PARQUET[n - 8..n - 4].try_into().unwrap()) as usize;
        assert_eq!(
            parquet_rows(&PARQUET[n - footer - 8..]),
            Some(25),
            "the tail alone"
        );
        assert_eq!(
            parquet_rows(&PARQUET[n - footer - 7..]),
            None,
            "a footer cut short"
        );
        assert_eq!(parquet_rows(&PARQUET[..n - 1]), None, "no closing magic");
    }

    /// A writer of the Thrift compact protocol, for footers ClickHouse does not write.
    #[derive(Default)]
    struct Thrift(Vec<u8>);

    impl Thrift {
        fn varint(&mut self, mut v: u64) -> &mut Self {
            while v >= 0x80 {
                self.0.push(v as u8 | 0x80);
                v >>= 7;
            }
            self.0.push(v as u8);
            self
        }
        fn zigzag(&mut self, v: i64) -> &mut Self {
            self.varint(((v << 1) ^ (v >> 63)) as u64)
        }
        /// A field header with its id as a delta from the last one.
        fn field(&mut self, delta: u8, kind: u8) -> &mut Self {
            self.0.push(delta << 4 | kind);
            self
        }
        fn bytes(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend_from_slice(b);
            self
        }
        fn stop(&mut self) -> &mut Self {
            self.0.push(0);
            self
        }
        /// The footer as the end of a Parquet file.
        fn parquet(&self) -> Option<u64> {
            let mut file = b"PAR1 some column chunks ".to_vec();
            file.extend_from_slice(&self.0);
            file.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
            file.extend_from_slice(b"PAR1");
            parquet_rows(&file)
        }
    }

    #[test]
    fn every_thrift_type_before_the_count_is_skipped() {
        let mut t = Thrift::default();
        t.field(1, I32).zigzag(-2);
        // A list of two structs, the first with a field of each type.
        t.field(1, LIST).bytes(&[2 << 4 | STRUCT]);
        t.field(1, BOOL_TRUE).field(1, BOOL_FALSE);
        t.field(1, BYTE).bytes(&[0xff]);
        t.field(1, I16).zigzag(-300);
        t.field(1, I64).zigzag(i64::MIN);
        t.field(1, DOUBLE).bytes(&1.5f64.to_le_bytes());
        t.field(1, BINARY).varint(200).bytes(&[3; 200]);
        t.field(1, LIST).bytes(&[3 << 4 | BOOL_TRUE, 1, 2, 1]);
        t.field(1, SET).bytes(&[15 << 4 | I32]).varint(20);
        for i in 0..20 {
            t.zigzag(i * 1000);
        }
        t.field(1, MAP).varint(2).bytes(&[BINARY << 4 | DOUBLE]);
        for key in [b"ab", b"cd"] {
            t.varint(2).bytes(key).bytes(&2.5f64.to_le_bytes());
        }
        t.field(1, MAP).varint(0);
        t.field(0, I64).zigzag(300).zigzag(7); // an id written in full
        t.field(1, STRUCT)
            .field(2, BINARY)
            .varint(1)
            .bytes(b"x")
            .stop();
        t.stop().stop();
        t.field(1, I64).zigzag(1_234_567_890_123);
        t.bytes(b"what follows is never read");
        assert_eq!(t.parquet(), Some(1_234_567_890_123));
    }

    #[test]
    fn only_field_3_as_an_i64_is_the_count() {
        let mut t = Thrift::default();
        t.field(3, I32).zigzag(99).stop();
        assert_eq!(t.parquet(), None, "field 3 of another type");
        let mut t = Thrift::default();
        t.field(2, I64).zigzag(99).stop();
        assert_eq!(t.parquet(), None, "an i64 in field 2");
        let mut t = Thrift::default();
        t.field(0, I64).zigzag(3).zigzag(99);
        assert_eq!(t.parquet(), Some(99), "field 3 with its id written in full");
        let mut t = Thrift::default();
        t.field(0, I32)
            .zigzag(-3)
            .zigzag(1)
            .field(6, I64)
            .zigzag(99);
        assert_eq!(t.parquet(), Some(99), "field 3 as a delta from field -3");
        let mut t = Thrift::default();
        t.field(3, I64).zigzag(-1);
        assert_eq!(t.parquet(), None, "a negative count");
        let mut t = Thrift::default();
        t.field(1, 13).field(2, I64).zigzag(99);
        assert_eq!(t.parquet(), None, "a type Thrift does not have");
        let mut t = Thrift::default();
        t.field(1, BINARY).varint(1000).bytes(b"short");
        assert_eq!(t.parquet(), None, "a string longer than the footer");
        let mut t = Thrift::default();
        t.field(1, I32).bytes(&[0x80; 10]);
        assert_eq!(t.parquet(), None, "a varint without an end");
    }
}

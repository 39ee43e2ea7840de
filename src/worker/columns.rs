//! Column metadata remembered by query hash, so that a query that runs again (a
//! dashboard's refresh, a report clicked twice) needs no second DESCRIBE.
//!
//! The hash covers the SQL, tier, format, settings and parameter values, so an entry is
//! only reused for the very same statement. What it cannot see is the schema: a table
//! altered in between may show its earlier columns in `result.columns` for up to
//! [`COLUMNS_TTL`]; the result bytes themselves are always fresh. At most
//! [`COLUMNS_CAPACITY`] entries are kept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::execution::Column;

/// How long learned columns are reused.
pub const COLUMNS_TTL: Duration = Duration::from_secs(60);
/// Most query hashes remembered; when full, expired entries go first, then all.
pub const COLUMNS_CAPACITY: usize = 10_000;

/// Query hash -> when the columns were learned, and the columns.
type Entries = HashMap<String, (Instant, Vec<Column>)>;

#[derive(Debug, Default)]
pub struct ColumnCache {
    entries: Mutex<Entries>,
}

impl ColumnCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Nothing under this lock can panic half-way.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The columns learned for `query_hash` within the last [`COLUMNS_TTL`].
    pub fn get(&self, query_hash: &str) -> Option<Vec<Column>> {
        let entries = self.lock();
        let (at, columns) = entries.get(query_hash)?;
        (at.elapsed() < COLUMNS_TTL).then(|| columns.clone())
    }

    pub fn put(&self, query_hash: &str, columns: &[Column]) {
        let mut entries = self.lock();
        if entries.len() >= COLUMNS_CAPACITY {
            entries.retain(|_, (at, _)| at.elapsed() < COLUMNS_TTL);
            if entries.len() >= COLUMNS_CAPACITY {
                entries.clear();
            }
        }
        entries.insert(query_hash.to_string(), (Instant::now(), columns.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Vec<Column> {
        vec![Column {
            name: "n".into(),
            type_: "UInt8".into(),
        }]
    }

    #[test]
    fn remembers_within_capacity() {
        let cache = ColumnCache::default();
        let cols = columns();
        assert_eq!(cache.get("h"), None);
        cache.put("h", &cols);
        assert_eq!(cache.get("h"), Some(cols.clone()));
        for i in 0..COLUMNS_CAPACITY {
            cache.put(&i.to_string(), &cols);
        }
        assert!(cache.lock().len() <= COLUMNS_CAPACITY);
    }

    /// A full cache drops its expired entries first and keeps the fresh ones; an
    /// expired entry is never answered.
    #[test]
    fn a_full_cache_evicts_the_expired_entries_first() {
        let cache = ColumnCache::default();
        let cols = columns();
        let Some(old) = Instant::now().checked_sub(COLUMNS_TTL + Duration::from_secs(1)) else {
            return; // a clock too close to its origin to hold an expired entry
        };
        cache.put("fresh", &cols);
        {
            let mut entries = cache.lock();
            for i in 1..COLUMNS_CAPACITY {
                entries.insert(i.to_string(), (old, cols.clone()));
            }
        }
        assert_eq!(cache.get("1"), None, "expired");
        cache.put("new", &cols);
        let mut kept: Vec<String> = cache.lock().keys().cloned().collect();
        kept.sort();
        assert_eq!(kept, ["fresh", "new"]);
    }
}

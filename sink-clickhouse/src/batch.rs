//! A batch of rows on its way to ClickHouse, with the offsets it covers, and
//! the rule that finds the rows ClickHouse refuses by splitting the batch.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Range;
use std::time::Duration;

use tokio::time::Instant;

/// Rows of one table, each tagged with the partition it came from, and the
/// next offset to commit per partition once they are inserted.
#[derive(Debug)]
pub struct Batch<R> {
    pub rows: Vec<(i32, R)>,
    pub offsets: BTreeMap<i32, i64>,
    /// The first offset covered per partition (for the ledger).
    pub first: BTreeMap<i32, i64>,
    pub bytes: usize,
    pub started: Option<Instant>,
}

impl<R> Default for Batch<R> {
    fn default() -> Self {
        Batch {
            rows: Vec::new(),
            offsets: BTreeMap::new(),
            first: BTreeMap::new(),
            bytes: 0,
            started: None,
        }
    }
}

impl<R> Batch<R> {
    /// Records that `offset` of `partition` is covered (with or without a row).
    pub fn covered(&mut self, partition: i32, offset: i64, bytes: usize) {
        self.started.get_or_insert_with(Instant::now);
        self.offsets.insert(partition, offset + 1);
        self.first.entry(partition).or_insert(offset);
        self.bytes += bytes;
    }

    pub fn push(&mut self, partition: i32, row: R) {
        self.rows.push((partition, row));
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Whether a limit is reached: rows, bytes or the age of the oldest record.
    pub fn due(&self, max_rows: usize, max_bytes: usize, max_age: Duration) -> bool {
        self.rows.len() >= max_rows || self.bytes >= max_bytes || self.started.is_some_and(|t| t.elapsed() >= max_age)
    }

    /// Time left until the age limit, for the poll timeout.
    pub fn time_left(&self, max_age: Duration) -> Duration {
        self.started.map_or(max_age, |t| max_age.saturating_sub(t.elapsed()))
    }

    /// Forgets the rows and offsets of partitions this consumer lost in a
    /// rebalance: their new owner reads them again from the last commit.
    pub fn drop_partitions(&mut self, revoked: &[i32]) {
        self.rows.retain(|(p, _)| !revoked.contains(p));
        self.offsets.retain(|p, _| !revoked.contains(p));
        self.first.retain(|p, _| !revoked.contains(p));
        if self.offsets.is_empty() {
            *self = Batch::default();
        }
    }
}

/// Most distinct partitions one insert may touch. ClickHouse refuses an
/// insert spanning more than `max_partitions_per_insert_block` (100 by
/// default) with code 252, which no retry fixes; device clocks can spread one
/// batch over any number of months. Half the default leaves room for the
/// server's time zone moving month boundaries.
pub const MAX_PARTITIONS_PER_INSERT: usize = 50;

/// Cuts `keys` (sorted) into consecutive ranges of at most `max` distinct keys.
pub fn partition_chunks(keys: &[u32], max: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut distinct) = (0, 0);
    for i in 0..keys.len() {
        if i == 0 || keys[i] != keys[i - 1] {
            if distinct == max {
                out.push(start..i);
                start = i;
                distinct = 0;
            }
            distinct += 1;
        }
    }
    if start < keys.len() {
        out.push(start..keys.len());
    }
    out
}

/// Inserts rows `0..len` through `insert`, which receives index ranges into
/// the caller's rows (so no row is copied); when ClickHouse refuses an insert
/// for a reason that a retry cannot fix, splits the range in halves until the
/// refused rows are single, inserts everything else, and returns the indices
/// of the refused rows with the error. Retryable errors are returned as they are.
pub async fn insert_or_isolate<E, F, Fut>(
    len: usize,
    insert: &F,
    retryable: fn(&E) -> bool,
) -> Result<Vec<(usize, String)>, E>
where
    E: std::fmt::Display,
    F: Fn(Range<usize>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let mut refused = Vec::new();
    let mut stack: Vec<Range<usize>> = Vec::with_capacity(16);
    stack.push(0..len);
    while let Some(part) = stack.pop() {
        if part.is_empty() {
            continue;
        }
        match insert(part.clone()).await {
            Ok(()) => {}
            Err(e) if retryable(&e) => return Err(e),
            Err(e) if part.len() == 1 => refused.push((part.start, e.to_string())),
            Err(_) => {
                let middle = part.start + part.len() / 2;
                stack.push(middle..part.end);
                stack.push(part.start..middle);
            }
        }
    }
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn refused_rows_are_isolated_and_the_rest_inserted() {
        let inserted = Mutex::new(Vec::new());
        let rows: Vec<u32> = (100..164).collect();
        let insert = |range: Range<usize>| {
            let part = &rows[range];
            let ok = !part.contains(&113) && !part.contains(&140);
            if ok {
                inserted.lock().unwrap().extend_from_slice(part);
            }
            async move {
                if ok {
                    Ok(())
                } else {
                    Err("Code: 53, type mismatch".to_string())
                }
            }
        };
        let refused = insert_or_isolate(rows.len(), &insert, |_| false).await.unwrap();
        let bad: Vec<u32> = refused.iter().map(|(i, _)| rows[*i]).collect();
        assert_eq!(bad, vec![113, 140]);
        assert!(refused.iter().all(|(_, e)| e.contains("type mismatch")));
        let mut got = inserted.lock().unwrap().clone();
        got.sort();
        assert_eq!(
            got,
            rows.iter()
                .copied()
                .filter(|r| *r != 113 && *r != 140)
                .collect::<Vec<_>>()
        );
        // retryable errors are not split
        let err = insert_or_isolate(2, &|_| async { Err::<(), _>("down".to_string()) }, |_| true).await;
        assert_eq!(err.unwrap_err(), "down");
    }

    #[test]
    fn chunks_never_span_more_than_max_partitions() {
        let keys: Vec<u32> = (0..300u32).map(|i| i / 2).collect(); // 150 months, 2 rows each
        let chunks = partition_chunks(&keys, 50);
        assert_eq!(chunks, vec![0..100, 100..200, 200..300]);
        for c in &chunks {
            let mut k = keys[c.clone()].to_vec();
            k.dedup();
            assert!(k.len() <= 50);
        }
        assert_eq!(partition_chunks(&[7, 7, 7], 1), vec![0..3]);
        assert!(partition_chunks(&[], 5).is_empty());
    }

    #[test]
    fn revoked_partitions_leave_the_batch() {
        let mut b = Batch::default();
        b.covered(0, 5, 10);
        b.push(0, "a");
        b.covered(1, 9, 10);
        b.push(1, "b");
        b.drop_partitions(&[0]);
        assert_eq!(b.rows, vec![(1, "b")]);
        assert_eq!(b.offsets.into_iter().collect::<Vec<_>>(), vec![(1, 10)]);
    }
}

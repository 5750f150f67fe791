//! A batch's records, from its body to the rows to store and every record's outline: read whole, or,
//! for a dialect whose records read alone ([`Dialect::split`]), a window at a time, so that a large
//! batch never holds all its customers parsed at once (they take about ten times their JSON).

use std::collections::{HashMap, HashSet};

use crate::dialect::{Dialect, Limits, Rejection, Split};
use crate::model::ParsedRecord;
use crate::store::customers;

use super::retry::Budget;
use super::{BatchError, Ingest, apply, checks, keys, references};

/// A body whose structure was read: its records parsed, or cut into their JSON texts.
pub(super) enum Body<'b> {
    Whole(Vec<ParsedRecord>),
    Split(Split<'b>),
}

impl<'b> Body<'b> {
    /// Reads the body as the dialect can: a body it cannot read at all is rejected here.
    pub fn read(dialect: &dyn Dialect, text: &'b str, limits: Limits) -> Result<Self, Rejection> {
        match dialect.split(text, limits) {
            Some(split) => Ok(Body::Split(split?)),
            None => Ok(Body::Whole(dialect.parse(text, limits)?)),
        }
    }

    /// How many records the body has.
    pub fn len(&self) -> usize {
        match self {
            Body::Whole(parsed) => parsed.len(),
            Body::Split(split) => split.records.len(),
        }
    }
}

/// What the records come to before anything is applied.
pub(super) struct Prepared {
    pub rows: Vec<customers::ChunkRow>,
    pub outline: Vec<apply::Outline>,
    /// The parsed records, for a dialect whose response is made from its customers; otherwise let
    /// go as soon as they are serialized.
    pub kept: Option<Vec<ParsedRecord>>,
}

/// Where a batch's records are read.
pub(super) struct Batch<'a> {
    pub tenant: &'a str,
    pub batch_id: &'a str,
    pub dialect: &'static dyn Dialect,
    /// The whole body, as text.
    pub text: &'a str,
    /// What an earlier delivery of this batch applied, by key.
    pub recorded: &'a HashMap<String, customers::Applied>,
    /// Records read at once from a split body.
    pub window: usize,
}

/// Gives every record its key, checks its references, and serializes the valid ones into rows.
pub(super) async fn prepare(
    ingest: &Ingest,
    budget: &Budget<'_>,
    batch: Batch<'_>,
    body: Body<'_>,
) -> Result<Prepared, BatchError> {
    match body {
        Body::Whole(parsed) => {
            let parsed = settle(ingest, budget, &batch, parsed).await?;
            let (rows, outline) = apply::prepare(&parsed, batch.recorded);
            let kept = batch.dialect.renders_customers().then_some(parsed);
            Ok(Prepared {
                rows,
                outline,
                kept,
            })
        }
        Body::Split(split) => {
            // At most one row and exactly one outline per record: reserved once, not regrown.
            let mut rows = Vec::with_capacity(split.records.len());
            let mut outline = Vec::with_capacity(split.records.len());
            let window = batch.window.max(1);
            for (n, records) in split.records.chunks(window).enumerate() {
                let parsed: Vec<ParsedRecord> = records
                    .iter()
                    .enumerate()
                    .map(|(i, raw)| (split.parse)(n * window + i, raw.get()))
                    .collect();
                let parsed = settle(ingest, budget, &batch, parsed).await?;
                let (window_rows, window_outline) = apply::prepare(&parsed, batch.recorded);
                rows.extend(window_rows);
                outline.extend(window_outline);
            }
            keep_last_of_each_key(&mut rows);
            Ok(Prepared {
                rows,
                outline,
                kept: None,
            })
        }
    }
}

/// Bounds the records' keys, gives each record its key and checks what it references.
async fn settle(
    ingest: &Ingest,
    budget: &Budget<'_>,
    batch: &Batch<'_>,
    mut parsed: Vec<ParsedRecord>,
) -> Result<Vec<ParsedRecord>, BatchError> {
    checks::bound_keys(&mut parsed);
    let parsed = keys::assign(
        ingest,
        budget,
        batch.tenant,
        batch.batch_id,
        batch.dialect,
        batch.text,
        parsed,
    )
    .await?;
    references::check(ingest, budget, batch.tenant, batch.dialect, parsed).await
}

/// Keeps only the last row of each key: a key may recur in several windows, and its last valid
/// occurrence is the one stored, as [`apply::prepare`] decides within one window. The outlines of
/// the earlier occurrences report the stored one's result.
fn keep_last_of_each_key(rows: &mut Vec<customers::ChunkRow>) {
    let keep: Vec<bool> = {
        let mut seen: HashSet<&str> = HashSet::with_capacity(rows.len());
        let mut keep: Vec<bool> = rows
            .iter()
            .rev()
            .map(|row| seen.insert(row.key.as_str()))
            .collect();
        keep.reverse();
        keep
    };
    if keep.iter().all(|&k| k) {
        return;
    }
    let mut position = 0;
    rows.retain(|_| {
        position += 1;
        keep[position - 1]
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_in_several_windows_keeps_its_last_row() {
        let row = |key: &str, data: &str| customers::ChunkRow {
            key: key.into(),
            data: data.into(),
        };
        let mut rows = vec![row("a", "1"), row("b", "2"), row("a", "3"), row("c", "4")];
        keep_last_of_each_key(&mut rows);
        let kept: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.key.as_str(), r.data.as_str()))
            .collect();
        assert_eq!(kept, [("b", "2"), ("a", "3"), ("c", "4")]);
    }
}

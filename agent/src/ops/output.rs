//! Building an operation's structured result: an ordered set of columns and one record per row,
//! and fitting it under the size a result may have on the wire.

use prost::Message;
use tailops_proto::v1::{self, scalar};

/// A value of one field.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Int(i64),
    Real(f64),
    Flag(bool),
    /// Absent: the field is left out of the record.
    None,
}

impl From<&str> for Cell {
    fn from(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Self {
        Self::Text(s)
    }
}

impl From<i64> for Cell {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}

impl From<u64> for Cell {
    fn from(n: u64) -> Self {
        Self::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<u32> for Cell {
    fn from(n: u32) -> Self {
        Self::Int(i64::from(n))
    }
}

impl From<f64> for Cell {
    fn from(x: f64) -> Self {
        Self::Real(x)
    }
}

impl From<bool> for Cell {
    fn from(b: bool) -> Self {
        Self::Flag(b)
    }
}

impl<T: Into<Cell>> From<Option<T>> for Cell {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::None, Into::into)
    }
}

/// Rows under fixed columns, plus the steps taken and a summary line.
#[derive(Debug, Clone, Default)]
pub struct Table {
    output: v1::OperationOutput,
}

impl Table {
    pub fn new(columns: &[&str]) -> Self {
        Self {
            output: v1::OperationOutput {
                columns: columns.iter().map(|c| (*c).to_owned()).collect(),
                ..Default::default()
            },
        }
    }

    /// Adds a row; `cells` follow the columns' order.
    pub fn row(&mut self, cells: impl IntoIterator<Item = Cell>) -> &mut Self {
        let fields = self
            .output
            .columns
            .iter()
            .zip(cells)
            .filter_map(|(column, cell)| {
                let value = match cell {
                    Cell::Text(s) => scalar::Value::Text(s),
                    Cell::Int(n) => scalar::Value::Int(n),
                    Cell::Real(x) => scalar::Value::Real(x),
                    Cell::Flag(b) => scalar::Value::Flag(b),
                    Cell::None => return None,
                };
                Some((column.clone(), v1::Scalar { value: Some(value) }))
            })
            .collect();
        self.output.records.push(v1::Record { fields });
        self
    }

    /// Records a step that ran (or would run), as a person would type it.
    pub fn step(&mut self, argv: &[impl AsRef<str>]) -> &mut Self {
        self.output.plan.push(argv.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(" "));
        self
    }

    pub fn summary(&mut self, line: impl Into<String>) -> &mut Self {
        self.output.summary = line.into();
        self
    }

    pub fn len(&self) -> usize {
        self.output.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.output.records.is_empty()
    }

    pub fn finish(self) -> v1::OperationOutput {
        self.output
    }
}

/// The most an operation's structured result may take, encoded. The controller decodes agent
/// messages up to 4 MiB; a result near that would tear the link down and lose the job (M6), so
/// results stay well below it (or below the job's own output cap, if smaller).
pub const MAX_RESULT_BYTES: usize = 1024 * 1024;
/// Text fields longer than this are cut (with a marker) before whole records are dropped.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// What encoding the truncation note may add to the summary.
const NOTE_RESERVE: usize = 256;

/// The size limit of a typed result for a job with output cap `output_cap` (0: the default).
pub fn result_limit(output_cap: u64) -> usize {
    match usize::try_from(output_cap) {
        Ok(0) | Err(_) => MAX_RESULT_BYTES,
        Ok(cap) => cap.min(MAX_RESULT_BYTES),
    }
}

/// Which records survive when a result is too large.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Lists: the first records (the order the operation chose).
    First,
    /// Logs and tails: the newest records, which come last.
    Last,
}

/// `text` cut to at most `max` bytes (at a character boundary) with a marker saying how much
/// went; `None` when it fits.
pub fn cut_text(text: &str, max: usize) -> Option<String> {
    if text.len() <= max {
        return None;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!("{}… [cut: {} more bytes]", &text[..end], text.len() - end))
}

fn cut_in_place(text: &mut String, max: usize) -> bool {
    match cut_text(text, max) {
        Some(cut) => {
            *text = cut;
            true
        }
        None => false,
    }
}

/// Encoded size of `message` as one element of a repeated field (tag, length, body).
fn element_len(message: &impl Message) -> usize {
    let len = message.encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

/// How many of `sizes` fit in `budget`, taken from the front or the back.
fn fitting(sizes: &[usize], budget: usize, keep: Keep) -> usize {
    let mut used = 0usize;
    let mut count = 0usize;
    let mut take = |size: usize| {
        if used + size > budget {
            return false;
        }
        used += size;
        count += 1;
        true
    };
    match keep {
        Keep::First => {
            for size in sizes {
                if !take(*size) {
                    break;
                }
            }
        }
        Keep::Last => {
            for size in sizes.iter().rev() {
                if !take(*size) {
                    break;
                }
            }
        }
    }
    count
}

/// Cuts `output` to at most `limit` encoded bytes: long text fields first (each keeps its first
/// [`MAX_TEXT_BYTES`] and a marker), then whole records, keeping the first or the last ones. What
/// was cut is said in the summary. Returns whether anything was cut.
pub fn fit(output: &mut v1::OperationOutput, limit: usize, keep: Keep) -> bool {
    let mut cut_fields = 0usize;
    cut_fields += usize::from(cut_in_place(&mut output.summary, MAX_TEXT_BYTES / 16));
    for step in &mut output.plan {
        cut_fields += usize::from(cut_in_place(step, MAX_TEXT_BYTES / 16));
    }
    // The plan is a few steps in practice; a long one gets a quarter of the room at most.
    let steps: Vec<usize> =
        output.plan.iter().map(|s| 1 + prost::length_delimiter_len(s.len()) + s.len()).collect();
    let kept_steps = fitting(&steps, limit / 4, Keep::First);
    if kept_steps < output.plan.len() {
        let more = output.plan.len() - kept_steps;
        output.plan.truncate(kept_steps);
        output.plan.push(format!("… {more} more step(s) left out"));
        cut_fields += 1;
    }
    for record in &mut output.records {
        for scalar in record.fields.values_mut() {
            if let Some(scalar::Value::Text(text)) = scalar.value.as_mut() {
                cut_fields += usize::from(cut_in_place(text, MAX_TEXT_BYTES));
            }
        }
    }
    let total = output.records.len();
    if output.encoded_len() + NOTE_RESERVE > limit {
        let records = std::mem::take(&mut output.records);
        let frame = output.encoded_len() + NOTE_RESERVE;
        let sizes: Vec<usize> = records.iter().map(element_len).collect();
        let kept = fitting(&sizes, limit.saturating_sub(frame), keep);
        output.records = match keep {
            Keep::First => records.into_iter().take(kept).collect(),
            Keep::Last => records.into_iter().skip(total - kept).collect(),
        };
    }
    let kept = output.records.len();
    if kept == total && cut_fields == 0 {
        return false;
    }
    let mut note = Vec::new();
    if kept < total {
        let which = if keep == Keep::Last { "the last" } else { "the first" };
        note.push(format!(
            "truncated: {which} {kept} of {total} records (results are limited to {limit} bytes)"
        ));
    }
    if cut_fields > 0 {
        note.push(format!("{cut_fields} long field(s) cut to {MAX_TEXT_BYTES} bytes"));
    }
    output.summary = if output.summary.is_empty() {
        note.join("; ")
    } else {
        format!("{} ({})", output.summary, note.join("; "))
    };
    true
}

/// Like [`fit`] for a process list: long names and command lines are cut, then the last
/// processes dropped (`total` still counts them all). Returns whether anything was cut.
pub fn fit_processes(list: &mut v1::ProcessList, limit: usize) -> bool {
    let mut cut = false;
    for p in &mut list.processes {
        for text in [&mut p.name, &mut p.user, &mut p.command, &mut p.state] {
            cut |= cut_in_place(text, MAX_TEXT_BYTES / 16);
        }
    }
    if list.encoded_len() > limit {
        let processes = std::mem::take(&mut list.processes);
        let frame = list.encoded_len();
        let sizes: Vec<usize> = processes.iter().map(element_len).collect();
        let kept = fitting(&sizes, limit.saturating_sub(frame), Keep::First);
        list.processes = processes.into_iter().take(kept).collect();
        cut = true;
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_the_columns_and_absent_cells_are_left_out() {
        let mut t = Table::new(&["name", "size", "link"]);
        t.row([Cell::from("a"), Cell::from(3u64), Cell::None]).step(&["stat", "a"]).summary("1 entry");
        let out = t.finish();
        assert_eq!(out.columns, vec!["name", "size", "link"]);
        assert_eq!(out.records[0].fields.len(), 2);
        assert_eq!(out.records[0].fields["size"].value, Some(scalar::Value::Int(3)));
        assert_eq!(out.plan, vec!["stat a"]);
        assert_eq!(out.summary, "1 entry");
    }

    fn lines(n: usize, width: usize) -> v1::OperationOutput {
        let mut t = Table::new(&["line"]);
        for i in 0..n {
            t.row([Cell::from(format!("{i:0>width$}"))]);
        }
        t.summary(format!("last {n} line(s)"));
        t.finish()
    }

    fn text(record: &v1::Record, name: &str) -> String {
        match &record.fields[name].value {
            Some(scalar::Value::Text(t)) => t.clone(),
            other => panic!("{name} is not text: {other:?}"),
        }
    }

    #[test]
    fn a_result_that_fits_is_left_alone() {
        let mut out = lines(100, 100);
        let before = out.clone();
        assert!(!fit(&mut out, MAX_RESULT_BYTES, Keep::First));
        assert_eq!(out, before);
    }

    #[test]
    fn a_tail_too_large_keeps_its_newest_lines_and_says_so() {
        let mut out = lines(10_000, 1_000);
        assert!(out.encoded_len() > 9_000_000);
        assert!(fit(&mut out, MAX_RESULT_BYTES, Keep::Last));
        assert!(out.encoded_len() <= MAX_RESULT_BYTES, "{}", out.encoded_len());
        let kept = out.records.len();
        assert!(kept > 900 && kept < 1_100, "{kept}");
        assert!(text(&out.records[kept - 1], "line").ends_with("9999"));
        assert!(
            out.summary
                .starts_with(&format!("last 10000 line(s) (truncated: the last {kept} of 10000 records")),
            "{}",
            out.summary
        );
    }

    #[test]
    fn a_list_too_large_keeps_its_first_records() {
        let mut out = lines(5_000, 500);
        assert!(fit(&mut out, 100_000, Keep::First));
        assert!(out.encoded_len() <= 100_000);
        assert!(text(&out.records[0], "line").ends_with('0'));
        assert!(out.summary.contains("truncated: the first"), "{}", out.summary);
        // A job's tiny output cap leaves no room for records, and that is said too.
        let mut out = lines(10, 10);
        assert!(fit(&mut out, result_limit(100), Keep::First));
        assert!(out.records.is_empty());
        assert!(out.summary.contains("truncated: the first 0 of 10 records"), "{}", out.summary);
    }

    #[test]
    fn long_fields_are_cut_at_a_character_boundary_with_a_marker() {
        let mut t = Table::new(&["line", "n"]);
        t.row([Cell::from("é".repeat(MAX_TEXT_BYTES)), Cell::from(1u64)]);
        let mut out = t.finish();
        assert!(fit(&mut out, MAX_RESULT_BYTES, Keep::First));
        let line = text(&out.records[0], "line");
        assert!(
            line.starts_with("éé") && line.ends_with(&format!("… [cut: {MAX_TEXT_BYTES} more bytes]")),
            "{}",
            &line[line.len() - 40..]
        );
        assert_eq!(out.records[0].fields["n"].value, Some(scalar::Value::Int(1)));
        assert!(out.summary.contains("1 long field(s) cut"), "{}", out.summary);
        assert_eq!(cut_text("short", 10), None);
    }

    #[test]
    fn a_huge_plan_cannot_crowd_out_the_result() {
        let mut out = lines(10, 10);
        out.plan = (0..100_000).map(|i| format!("step {i}")).collect();
        assert!(fit(&mut out, MAX_RESULT_BYTES, Keep::First));
        assert!(out.encoded_len() <= MAX_RESULT_BYTES);
        assert_eq!(out.records.len(), 10);
        assert!(
            out.plan.last().is_some_and(|s| s.ends_with("more step(s) left out")),
            "{:?}",
            out.plan.last()
        );
    }

    #[test]
    fn the_limit_is_the_smaller_of_the_cap_and_a_mebibyte() {
        assert_eq!(result_limit(0), MAX_RESULT_BYTES);
        assert_eq!(result_limit(64 * 1024 * 1024), MAX_RESULT_BYTES);
        assert_eq!(result_limit(4096), 4096);
    }

    #[test]
    fn a_process_list_is_cut_to_the_limit() {
        let process = |pid| v1::ProcessInfo { pid, command: "x".repeat(100_000), ..Default::default() };
        let mut list = v1::ProcessList { processes: (0..500).map(process).collect(), total: 500 };
        assert!(fit_processes(&mut list, MAX_RESULT_BYTES));
        assert!(list.encoded_len() <= MAX_RESULT_BYTES);
        // Command lines are cut to 4 KiB first, then about half the processes fit.
        assert!((200..500).contains(&list.processes.len()), "{}", list.processes.len());
        assert!(list.processes[0].command.contains("[cut: "));
        assert!(fit_processes(&mut list, 10_000));
        assert!(list.processes.len() < 5 && list.total == 500);
    }
}

//! Building an operation's structured result: an ordered set of columns and one record per row.

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
}

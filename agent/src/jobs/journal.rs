//! The job journal: which job ids this agent started, written to disk and flushed before a
//! command starts, so that a job delivered again (after a reconnect, or a restart of either the
//! controller or the agent) never runs twice, and so that after a crash of the agent the
//! processes a job left behind can be found and killed.
//!
//! One append-only text file, a record per line:
//!
//! ```text
//! S <job id>                      started (flushed before the job runs)
//! G <job id> <pgid> <starttime>   its command's process group (flushed once spawned)
//! D <job id>                      its result is stored by the controller; nothing more to do
//! ```
//!
//! The newest [`REMEMBERED`] jobs are kept; the file is rewritten (to a temporary file, flushed,
//! then renamed over the old one) when it has grown to twice that many lines.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::fs::{File, OpenOptions};
use tokio::io::AsyncWriteExt;

/// Jobs remembered. A redelivery comes within a job's queue window and deadline, long before
/// this many later jobs have reached the same host.
pub const REMEMBERED: usize = 4096;

/// What the journal knows of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Started; its result is not known to be stored by the controller.
    Open { group: Option<Group> },
    /// Its result is stored by the controller.
    Done,
}

/// A command's process group, and its leader's start time (clock ticks after boot, from
/// `/proc/PID/stat`), which tells the same process from a later one that reused the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    pub pgid: i32,
    pub start_time: u64,
}

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    /// Appended to on the blocking pool: one hop writes a record and flushes it.
    file: Arc<std::fs::File>,
    entries: HashMap<u64, Entry>,
    order: VecDeque<u64>,
    lines: usize,
    remembered: usize,
    /// `D` records not written yet: they ride along with the next flushed write.
    unwritten_done: Vec<u64>,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and reads what it holds. Lines it cannot read (a
    /// record torn by a crash) are skipped.
    pub async fn open(path: &Path) -> std::io::Result<Self> {
        Self::open_remembering(path, REMEMBERED).await
    }

    async fn open_remembering(path: &Path, remembered: usize) -> std::io::Result<Self> {
        let text = match tokio::fs::read_to_string(path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut journal = Self {
            path: path.to_owned(),
            file: append(path).await?,
            entries: HashMap::new(),
            order: VecDeque::new(),
            lines: 0,
            remembered,
            unwritten_done: Vec::new(),
        };
        for line in text.lines() {
            journal.apply(line);
            journal.lines += 1;
        }
        if journal.lines > 2 * remembered {
            journal.compact().await?;
        }
        Ok(journal)
    }

    pub fn get(&self, job_id: u64) -> Option<Entry> {
        self.entries.get(&job_id).copied()
    }

    /// Jobs started whose results are not known to be stored, oldest first.
    pub fn open_jobs(&self) -> Vec<(u64, Option<Group>)> {
        self.order
            .iter()
            .filter_map(|id| match self.entries.get(id) {
                Some(Entry::Open { group }) => Some((*id, *group)),
                _ => None,
            })
            .collect()
    }

    /// Records that `job_id` starts, on disk, before it does.
    pub async fn started(&mut self, job_id: u64) -> std::io::Result<()> {
        let mut lines = self.take_unwritten_done();
        lines.push_str(&format!("S {job_id}\n"));
        self.write(&lines, true).await?;
        self.apply_started(job_id);
        Ok(())
    }

    /// Records the process group of `job_id`'s command, on disk.
    pub async fn group(&mut self, job_id: u64, group: Group) -> std::io::Result<()> {
        self.write(&format!("G {job_id} {} {}\n", group.pgid, group.start_time), true).await?;
        if let Some(Entry::Open { group: known }) = self.entries.get_mut(&job_id) {
            *known = Some(group);
        }
        Ok(())
    }

    /// Records that the controller stored `job_id`'s result. Written with the next record that
    /// is flushed (or [`Self::write_done`]): if it is lost in a crash, the job is only reported
    /// once more after the restart, and the controller ignores the repeat.
    pub fn done(&mut self, job_id: u64) {
        if matches!(self.entries.get(&job_id), Some(Entry::Open { .. })) {
            self.entries.insert(job_id, Entry::Done);
            self.unwritten_done.push(job_id);
        }
    }

    /// Writes the `D` records [`Self::done`] holds back.
    pub async fn write_done(&mut self) -> std::io::Result<()> {
        if self.unwritten_done.is_empty() {
            return Ok(());
        }
        let lines = self.take_unwritten_done();
        self.write(&lines, false).await
    }

    fn take_unwritten_done(&mut self) -> String {
        self.unwritten_done.drain(..).map(|id| format!("D {id}\n")).collect()
    }

    async fn write(&mut self, line: &str, flush: bool) -> std::io::Result<()> {
        if self.lines >= 2 * self.remembered {
            self.compact().await?;
        }
        let file = self.file.clone();
        let bytes = line.as_bytes().to_vec();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            (&*file).write_all(&bytes)?;
            if flush { file.sync_data() } else { Ok(()) }
        })
        .await
        .map_err(std::io::Error::other)??;
        self.lines += line.lines().count();
        Ok(())
    }

    fn apply(&mut self, line: &str) {
        let mut fields = line.split(' ');
        let (Some(kind), Some(Ok(id))) = (fields.next(), fields.next().map(str::parse::<u64>)) else {
            return;
        };
        match kind {
            "S" => self.apply_started(id),
            "G" => {
                let pgid = fields.next().and_then(|f| f.parse().ok());
                let start_time = fields.next().and_then(|f| f.parse().ok());
                if let (Some(pgid), Some(start_time), Some(Entry::Open { group })) =
                    (pgid, start_time, self.entries.get_mut(&id))
                {
                    *group = Some(Group { pgid, start_time });
                }
            }
            "D" if self.entries.contains_key(&id) => {
                self.entries.insert(id, Entry::Done);
            }
            _ => {}
        }
    }

    fn apply_started(&mut self, job_id: u64) {
        if self.entries.insert(job_id, Entry::Open { group: None }).is_none() {
            self.order.push_back(job_id);
        }
        while self.order.len() > self.remembered {
            // The oldest open job goes too: a job thousands of jobs old is no longer redelivered.
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
    }

    /// Rewrites the file with what is remembered now.
    async fn compact(&mut self) -> std::io::Result<()> {
        let mut text = String::new();
        for id in &self.order {
            text.push_str(&format!("S {id}\n"));
            match self.entries.get(id) {
                Some(Entry::Open { group: Some(g) }) => {
                    text.push_str(&format!("G {id} {} {}\n", g.pgid, g.start_time));
                }
                Some(Entry::Done) => text.push_str(&format!("D {id}\n")),
                _ => {}
            }
        }
        let temporary = self.path.with_extension("new");
        let mut file = File::create(&temporary).await?;
        file.write_all(text.as_bytes()).await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&temporary, &self.path).await?;
        self.file = append(&self.path).await?;
        self.lines = text.lines().count();
        // Written just now with the entries they mark.
        self.unwritten_done.clear();
        Ok(())
    }
}

async fn append(path: &Path) -> std::io::Result<Arc<std::fs::File>> {
    let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path).await?;
    Ok(Arc::new(file.into_std().await))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn what_was_started_survives_a_reopen_and_a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal");
        let mut journal = Journal::open(&path).await.expect("open");
        journal.started(7).await.expect("start");
        journal.group(7, Group { pgid: 4242, start_time: 99 }).await.expect("group");
        journal.started(8).await.expect("start");
        journal.done(8);
        journal.write_done().await.expect("done");
        drop(journal);
        // A crash in the middle of a record leaves half a line.
        let mut file = OpenOptions::new().append(true).open(&path).await.expect("open");
        file.write_all(b"S 9").await.expect("write");
        file.write_all(b"\nG 1").await.expect("write");
        drop(file);
        let journal = Journal::open(&path).await.expect("reopen");
        assert_eq!(journal.get(7), Some(Entry::Open { group: Some(Group { pgid: 4242, start_time: 99 }) }));
        assert_eq!(journal.get(8), Some(Entry::Done));
        // "S 9" was complete up to its newline: it counts as started (the safe reading).
        assert_eq!(journal.get(9), Some(Entry::Open { group: None }));
        assert_eq!(journal.get(1), None);
        assert_eq!(journal.open_jobs().iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![7, 9]);
    }

    #[tokio::test]
    async fn the_journal_stays_bounded_and_keeps_the_newest_jobs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal");
        let mut journal = Journal::open_remembering(&path, 16).await.expect("open");
        for id in 1..=100 {
            journal.started(id).await.expect("start");
            journal.done(id);
        }
        journal.write_done().await.expect("done");
        assert!(journal.lines <= 2 * 16 + 1, "{} lines", journal.lines);
        drop(journal);
        let journal = Journal::open_remembering(&path, 16).await.expect("reopen");
        assert_eq!(journal.get(100), Some(Entry::Done));
        assert_eq!(journal.get(85), Some(Entry::Done));
        assert_eq!(journal.get(84), None);
        assert_eq!(journal.get(1), None);
        assert!(journal.open_jobs().is_empty());
    }
}

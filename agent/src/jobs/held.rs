//! Results the controller has not yet confirmed storing, sent on every reconnect until the
//! controller says it stored them, so a result that finishes while the controller is away (or
//! restarting) is delivered later with its real exit code. A result is held in memory first and
//! written to `STATE_DIR/jobs/held/ID.pb` when it is not confirmed at once ([`HeldResults::persist`]):
//! most are confirmed within milliseconds and never touch the disk.
//!
//! Bounded in count and bytes: beyond either, the oldest held result is dropped (and logged);
//! asked for it again, the agent says it had to drop it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost::Message;
use tailops_proto::v1;
use tokio::io::AsyncWriteExt;

/// Results held at most.
pub const MAX_HELD: usize = 1024;
/// Bytes of held results at most (an operation's result is at most 1 MiB; most are tiny).
pub const MAX_HELD_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug)]
pub struct HeldResults {
    dir: PathBuf,
    /// Results not written to disk yet, with when they were kept.
    fresh: BTreeMap<u64, (v1::CommandResult, tokio::time::Instant)>,
    /// Job id -> encoded size of the results on disk, in job-id order (oldest first).
    sizes: BTreeMap<u64, usize>,
    bytes: usize,
    max: usize,
    max_bytes: usize,
}

impl HeldResults {
    /// Opens the directory, creating it; results that cannot be read back (a file torn by a
    /// crash) are removed.
    pub async fn open(dir: &Path) -> std::io::Result<Self> {
        Self::open_bounded(dir, MAX_HELD, MAX_HELD_BYTES).await
    }

    async fn open_bounded(dir: &Path, max: usize, max_bytes: usize) -> std::io::Result<Self> {
        tokio::fs::create_dir_all(dir).await?;
        let mut held = Self {
            dir: dir.to_owned(),
            fresh: BTreeMap::new(),
            sizes: BTreeMap::new(),
            bytes: 0,
            max,
            max_bytes,
        };
        let mut entries = tokio::fs::read_dir(dir).await?;
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name();
            let path = entry.path();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".pb")).and_then(|n| n.parse().ok())
            else {
                // A temporary file left by a crash, or something that is not ours.
                let _ = tokio::fs::remove_file(&path).await;
                continue;
            };
            let readable = match tokio::fs::read(&path).await {
                Ok(bytes) => v1::CommandResult::decode(bytes.as_slice()).is_ok().then_some(bytes.len()),
                Err(_) => None,
            };
            match readable {
                Some(size) => {
                    held.sizes.insert(id, size);
                    held.bytes += size;
                }
                None => {
                    tracing::warn!(path = %path.display(), "held result unreadable; removed");
                    let _ = tokio::fs::remove_file(&path).await;
                }
            }
        }
        Ok(held)
    }

    pub fn contains(&self, job_id: u64) -> bool {
        self.fresh.contains_key(&job_id) || self.sizes.contains_key(&job_id)
    }

    pub fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.fresh.keys().chain(self.sizes.keys()).copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Keeps `result` in memory until [`Self::remove`] or [`Self::persist`].
    pub fn keep(&mut self, job_id: u64, result: v1::CommandResult) {
        self.fresh.insert(job_id, (result, tokio::time::Instant::now()));
    }

    /// Writes the results held only in memory since before `kept_before` to disk.
    pub async fn persist_older(&mut self, kept_before: tokio::time::Instant) -> std::io::Result<()> {
        let old: Vec<u64> =
            self.fresh.iter().filter(|(_, (_, at))| *at < kept_before).map(|(id, _)| *id).collect();
        for job_id in old {
            if let Some((result, _)) = self.fresh.remove(&job_id) {
                self.put(job_id, &result).await?;
            }
        }
        Ok(())
    }

    /// Writes every result held only in memory to disk.
    pub async fn persist_all(&mut self) -> std::io::Result<()> {
        self.persist_older(tokio::time::Instant::now() + std::time::Duration::from_secs(1)).await
    }

    /// Keeps `result` on disk until [`Self::remove`]; written whole or not at all.
    pub async fn put(&mut self, job_id: u64, result: &v1::CommandResult) -> std::io::Result<()> {
        let bytes = result.encode_to_vec();
        let temporary = self.dir.join(format!("{job_id}.tmp"));
        let mut file = tokio::fs::File::create(&temporary).await?;
        file.write_all(&bytes).await?;
        file.flush().await?;
        drop(file);
        tokio::fs::rename(&temporary, self.path(job_id)).await?;
        if let Some(old) = self.sizes.insert(job_id, bytes.len()) {
            self.bytes -= old;
        }
        self.bytes += bytes.len();
        while self.sizes.len() > self.max || self.bytes > self.max_bytes {
            let Some((&oldest, _)) = self.sizes.iter().next() else { break };
            if oldest == job_id && self.sizes.len() == 1 {
                break;
            }
            tracing::warn!(job = oldest, "too many results wait for the controller; the oldest is dropped");
            self.remove(oldest).await;
        }
        Ok(())
    }

    pub async fn get(&self, job_id: u64) -> Option<v1::CommandResult> {
        if let Some((result, _)) = self.fresh.get(&job_id) {
            return Some(result.clone());
        }
        if !self.sizes.contains_key(&job_id) {
            return None;
        }
        let bytes = tokio::fs::read(self.path(job_id)).await.ok()?;
        v1::CommandResult::decode(bytes.as_slice()).ok()
    }

    pub async fn remove(&mut self, job_id: u64) {
        self.fresh.remove(&job_id);
        if let Some(size) = self.sizes.remove(&job_id) {
            self.bytes -= size;
            if let Err(e) = tokio::fs::remove_file(self.path(job_id)).await
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(job = job_id, error = %e, "could not remove a delivered result");
            }
        }
    }

    fn path(&self, job_id: u64) -> PathBuf {
        self.dir.join(format!("{job_id}.pb"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(code: i32, error: &str) -> v1::CommandResult {
        v1::CommandResult { exit_code: Some(code), error: error.to_owned(), ..Default::default() }
    }

    #[tokio::test]
    async fn held_results_survive_a_reopen_and_torn_files_are_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut held = HeldResults::open(dir.path()).await.expect("open");
        held.put(3, &result(3, "")).await.expect("put");
        held.put(5, &result(0, "")).await.expect("put");
        held.remove(5).await;
        tokio::fs::write(dir.path().join("9.pb"), b"\xff\xff\xff").await.expect("write");
        tokio::fs::write(dir.path().join("11.tmp"), b"half").await.expect("write");
        let mut held = HeldResults::open(dir.path()).await.expect("reopen");
        assert_eq!(held.ids(), vec![3]);
        // Held in memory only: gone after a reopen unless persisted.
        held.keep(13, result(2, ""));
        held.persist_all().await.expect("persist");
        held.keep(12, result(1, ""));
        assert_eq!(held.get(12).await.and_then(|r| r.exit_code), Some(1));
        let held = HeldResults::open(dir.path()).await.expect("reopen");
        assert_eq!(held.ids(), vec![3, 13]);
        assert_eq!(held.get(3).await.and_then(|r| r.exit_code), Some(3));
        assert!(!dir.path().join("9.pb").exists() && !dir.path().join("11.tmp").exists());
    }

    #[tokio::test]
    async fn beyond_the_bounds_the_oldest_result_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut held = HeldResults::open_bounded(dir.path(), 3, 1024).await.expect("open");
        for id in 1..=5 {
            held.put(id, &result(0, "")).await.expect("put");
        }
        assert_eq!(held.ids(), vec![3, 4, 5]);
        // One result larger than the byte bound is still kept: it is the newest.
        held.put(6, &result(0, &"x".repeat(2000))).await.expect("put");
        assert_eq!(held.ids(), vec![6]);
    }
}

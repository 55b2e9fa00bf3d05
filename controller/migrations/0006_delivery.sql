-- Queued delivery and recovery after a restart.
-- queue_for_ms: how long offline hosts are waited for (0: not at all). The stored deadline of a
--   running job covers the queue window and the timeout: deadline = start + queue_for + timeout.
-- reach: the job's read reach (tailops.v1.ReadReach), fixed when it was authorised, so that a
--   job resumed after a restart reaches exactly as far as it did before.
ALTER TABLE jobs ADD COLUMN queue_for_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN reach INTEGER NOT NULL DEFAULT 0;

-- The program a principal's request came through (`NAME/VERSION` from the x-tailops-client
-- metadata, e.g. the MCP client behind a bridge). Attribution only: it never grants anything.
-- '' = none, which is also what every row written before this migration holds.

ALTER TABLE audit ADD COLUMN client TEXT NOT NULL DEFAULT '';

-- The requester's client, shown to the humans who approve the job.
ALTER TABLE jobs ADD COLUMN requested_via TEXT NOT NULL DEFAULT '';

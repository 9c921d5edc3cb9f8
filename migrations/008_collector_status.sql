-- Tally schema, version 8: what each collector knows about itself, for the
-- operator overview (GET /v1/status, issue #14).
--
-- One row per collector process, upserted in the transaction that commits
-- each batch (so it costs one small statement in a pipeline already in
-- flight, and it is exactly as fresh as the counts). An idle collector
-- commits nothing and its row stays as it was: last_commit_at is when it
-- last counted events, not a heartbeat. Rows of processes long gone are
-- left out by the api after a week; deleting them is harmless.
CREATE TABLE collector_status (
    -- host name and process id: unique among running collectors
    instance          text PRIMARY KEY CHECK (length(instance) BETWEEN 1 AND 300),
    kafka_group       text NOT NULL,
    started_at        timestamptz NOT NULL,
    last_commit_at    timestamptz NOT NULL DEFAULT now(),
    -- events this process counted (new, not duplicates) since it started
    events_counted    bigint NOT NULL DEFAULT 0 CHECK (events_counted >= 0),
    -- counted events per second over the last ten seconds or more of commits
    events_per_second double precision NOT NULL DEFAULT 0,
    -- the consumer's lag (messages) when the batch was committed; NULL: unknown
    lag_messages      bigint,
    -- events this process sent to the DLQ since it started, by error code
    dlq_by_code       jsonb NOT NULL DEFAULT '{}'::jsonb
);

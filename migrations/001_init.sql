-- Tally schema, version 1: plans and API keys (the AWS usage-plan model),
-- the event deduplication record, and the rollups the collector maintains.
-- All timestamps are timestamptz; Tally's own sessions run with TimeZone=UTC.

CREATE TABLE plans (
    id                      text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
    name                    text NOT NULL CHECK (length(name) BETWEEN 1 AND 256),
    description             text NOT NULL DEFAULT '',
    quota_limit             bigint CHECK (quota_limit >= 0),
    quota_period            text CHECK (quota_period IN ('DAY', 'WEEK', 'MONTH')),
    -- requests subtracted from the limit in the plan's first period
    quota_offset            bigint NOT NULL DEFAULT 0 CHECK (quota_offset >= 0),
    throttle_rate_limit     double precision CHECK (throttle_rate_limit >= 0),
    throttle_burst_limit    integer CHECK (throttle_burst_limit >= 0),
    -- {"/path/METHOD": {"rateLimit": r, "burstLimit": b}}
    method_throttles        jsonb NOT NULL DEFAULT '{}'::jsonb,
    stripe_meter_event_name text CHECK (length(stripe_meter_event_name) BETWEEN 1 AND 100),
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CHECK ((quota_limit IS NULL) = (quota_period IS NULL))
);

CREATE TABLE api_keys (
    id                 text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
    -- SHA-256 of the secret value; the value itself is never stored.
    value_hash         bytea NOT NULL UNIQUE CHECK (length(value_hash) = 32),
    name               text NOT NULL DEFAULT '',
    description        text NOT NULL DEFAULT '',
    customer_id        text,
    stripe_customer_id text,
    enabled            boolean NOT NULL DEFAULT true,
    plan_id            text REFERENCES plans (id),  -- a key belongs to at most one plan
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_keys_plan_id ON api_keys (plan_id) WHERE plan_id IS NOT NULL;

-- Deduplication record: one row per (source, id) seen, stored as a 128-bit
-- digest (tally_event_hash below; the collector computes the same in C), so
-- the unique index stays small (16-byte keys) whatever the producers' id
-- formats. Partitioned by the ISO week (Monday, UTC) of the event's own
-- time, so the unique index catches every re-send of an event, concurrent or
-- not, and expired weeks are dropped whole (tally_drop_expired_event_partitions)
-- instead of being deleted row by row. Events older than the lateness
-- horizon are rejected before they get here, so a week can go once it is past
-- the horizon.
CREATE TABLE event_ids (
    event_hash uuid NOT NULL,
    event_week date NOT NULL,
    PRIMARY KEY (event_hash, event_week)
) PARTITION BY RANGE (event_week);

-- The digest of an event: the first 16 bytes of
-- SHA-256(<byte length of source> ':' source id). The length prefix keeps two
-- different pairs from ever hashing the same text. common/digest.c computes
-- the same (digest_event); the integration tests check that they agree.
CREATE FUNCTION tally_event_hash(source text, id text) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN encode(substring(sha256(convert_to(octet_length(source)::text || ':' || source || id, 'UTF8'))
                        FROM 1 FOR 16), 'hex')::uuid;

-- Hourly rollups per key / plan / method / endpoint, in the hour of the
-- event's own time (late events land in their own hour). plan_id, method and
-- endpoint are '' when absent, so they can be part of the key.
CREATE TABLE usage_hourly (
    key_id     text NOT NULL,
    hour       timestamptz NOT NULL,
    plan_id    text NOT NULL DEFAULT '',
    method     text NOT NULL DEFAULT '',
    endpoint   text NOT NULL DEFAULT '',
    requests   bigint NOT NULL,
    units      bigint NOT NULL,
    bytes      bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, hour, plan_id, method, endpoint)
);
CREATE INDEX usage_hourly_hour ON usage_hourly (hour);

-- Per-key counters for every quota period kind, whatever the key's plan,
-- so a quota answer is one row read and a plan change needs no backfill.
CREATE TABLE usage_counters (
    key_id       text NOT NULL,
    period       text NOT NULL CHECK (period IN ('DAY', 'WEEK', 'MONTH')),
    period_start timestamptz NOT NULL,
    requests     bigint NOT NULL,
    units        bigint NOT NULL,
    bytes        bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, period, period_start)
);

-- Creates the weekly partitions of event_ids from the week `horizon_days`
-- ago to two weeks ahead. Idempotent; serialised by an advisory lock so that
-- several collectors may call it at once.
CREATE FUNCTION tally_ensure_event_partitions(horizon_days integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    week    date := date_trunc('week', (now() AT TIME ZONE 'UTC') - make_interval(days => horizon_days + 7))::date;
    last    date := date_trunc('week', (now() AT TIME ZONE 'UTC') + interval '14 days')::date;
    created integer := 0;
    name    text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tally_event_partitions'));
    WHILE week <= last LOOP
        name := 'event_ids_' || to_char(week, 'YYYYMMDD');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF event_ids FOR VALUES FROM (%L) TO (%L)',
                           name, week, week + 7);
            created := created + 1;
        END IF;
        week := week + 7;
    END LOOP;
    RETURN created;
END $$;

-- Drops the partitions of event_ids whose whole week ended more than
-- `horizon_days` + 1 days ago: no event of theirs can be accepted any more,
-- so no re-send of one can be counted. Returns how many were dropped.
CREATE FUNCTION tally_drop_expired_event_partitions(horizon_days integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    part    record;
    cutoff  date := ((now() AT TIME ZONE 'UTC') - make_interval(days => horizon_days + 1))::date;
    dropped integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tally_event_partitions'));
    FOR part IN
        SELECT c.relname
          FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'event_ids'::regclass
           AND c.relname ~ '^event_ids_[0-9]{8}$'
    LOOP
        IF to_date(substr(part.relname, 11), 'YYYYMMDD') + 7 <= cutoff THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END $$;

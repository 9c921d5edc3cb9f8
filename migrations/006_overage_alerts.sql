-- Tally schema, version 6: soft quotas, threshold alerts and their webhook
-- deliveries (issue #12).
--
-- A plan's quota is enforced `hard` (authorize refuses at the limit, as AWS
-- usage plans do; the default) or `soft` (authorize keeps allowing past the
-- limit and says so; an optional ceiling, a percentage of the limit, above
-- which it refuses after all).
ALTER TABLE plans
    ADD COLUMN quota_enforcement text NOT NULL DEFAULT 'hard'
        CHECK (quota_enforcement IN ('hard', 'soft')),
    ADD COLUMN quota_ceiling_percent integer
        CHECK (quota_ceiling_percent BETWEEN 100 AND 100000),
    ADD CONSTRAINT plans_ceiling_needs_soft
        CHECK (quota_ceiling_percent IS NULL OR quota_enforcement = 'soft'),
    -- Percentages of the quota at which one alert is raised per key and
    -- period; '{}' turns alerts off. At most 16, each 1..100000, ascending
    -- and distinct (checked by the api, which owns the writes).
    ADD COLUMN alert_thresholds integer[] NOT NULL DEFAULT '{80,100,120}'
        CHECK (cardinality(alert_thresholds) <= 16
               AND 1 <= ALL (alert_thresholds) AND 100000 >= ALL (alert_thresholds));

-- A key may override its plan's thresholds; NULL means "the plan's".
ALTER TABLE api_keys
    ADD COLUMN alert_thresholds integer[]
        CHECK (alert_thresholds IS NULL OR (cardinality(alert_thresholds) <= 16
               AND 1 <= ALL (alert_thresholds) AND 100000 >= ALL (alert_thresholds)));

-- One row per (key, quota period, threshold) reached: the UNIQUE constraint
-- is what makes an alert exactly-once whatever replays, crashes and
-- concurrent collectors do (inserts use ON CONFLICT DO NOTHING, in the
-- transaction that changed the counters). The row keeps what a
-- customer-facing message needs, as it was when the threshold was reached.
CREATE TABLE quota_alerts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- the delivery's stable event id, the receiver's deduplication key
    event_id     text NOT NULL UNIQUE DEFAULT ('evt_' || replace(gen_random_uuid()::text, '-', '')),
    -- 'quota.exhausted' for the 100 % threshold, 'quota.threshold_reached'
    -- for every other
    type         text NOT NULL CHECK (length(type) BETWEEN 1 AND 64),
    key_id       text NOT NULL,
    customer_id  text,
    plan_id      text NOT NULL,
    period       text NOT NULL CHECK (period IN ('DAY', 'WEEK', 'MONTH')),
    period_start timestamptz NOT NULL,
    period_end   timestamptz NOT NULL,
    threshold    integer NOT NULL,          -- percent of the limit
    quota_limit  bigint NOT NULL,           -- the limit in force for that period
    used         bigint NOT NULL,           -- units counted when it was reached
    enforcement  text NOT NULL CHECK (enforcement IN ('hard', 'soft')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (key_id, period, period_start, threshold)
);
CREATE INDEX quota_alerts_created ON quota_alerts (created_at);
CREATE INDEX quota_alerts_key_created ON quota_alerts (key_id, created_at);

-- Webhook endpoints. The signing secret must be usable to sign, so it is
-- stored (it is shown once, when generated, and never answered again); on
-- rotation the previous one keeps signing beside it until it expires.
CREATE TABLE webhook_endpoints (
    id                         text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
    url                        text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    description                text NOT NULL DEFAULT '',
    event_types                text[] NOT NULL CHECK (cardinality(event_types) BETWEEN 1 AND 16),
    enabled                    boolean NOT NULL DEFAULT true,
    secret                     text NOT NULL,
    previous_secret            text,
    previous_secret_expires_at timestamptz,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now()
);

-- The delivery outbox: one row per (alert, endpoint), created in the same
-- transaction as the alert (trigger below), so no alert is ever without its
-- deliveries. The sender works rows whose next_attempt_at has come.
CREATE TABLE webhook_deliveries (
    alert_id        bigint NOT NULL REFERENCES quota_alerts (id),
    endpoint_id     text NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'delivered', 'parked')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    last_http_status integer,
    last_error      text,
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (alert_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at);

-- Every attempt on the wire, for the delivery log.
CREATE TABLE webhook_attempts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id     bigint NOT NULL,
    endpoint_id  text NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    attempted_at timestamptz NOT NULL DEFAULT now(),
    http_status  integer,                   -- NULL: no answer (timeout, refused)
    error        text,
    duration_ms  integer NOT NULL
);
CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, attempted_at);

-- Fan an alert out to every enabled endpoint that wants its type, in the
-- alert's own transaction.
CREATE FUNCTION tally_fan_out_alert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (alert_id, endpoint_id)
    SELECT NEW.id, e.id FROM webhook_endpoints e
     WHERE e.enabled AND NEW.type = ANY (e.event_types);
    RETURN NULL;
END $$;
CREATE TRIGGER quota_alerts_fan_out AFTER INSERT ON quota_alerts
    FOR EACH ROW EXECUTE FUNCTION tally_fan_out_alert();

-- ---- the quota rules in SQL, each once --------------------------------
-- common/period.c computes the same in C (authorize, quota answers); the
-- collector's and the api's alert statements use these.

-- The start of the quota period containing `t`: UTC day, ISO week (Monday
-- 00:00 UTC) or calendar month, as period_start() in common/period.c.
CREATE FUNCTION tally_period_start(period text, t timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN date_trunc(lower(period), t AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';

-- The exclusive end of the period starting at `start`.
CREATE FUNCTION tally_period_end(period text, start timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ((start AT TIME ZONE 'UTC') + ('1 ' || lower(period))::interval) AT TIME ZONE 'UTC';

-- The limit in force for the period starting at `start`, as period_limit()
-- in common/period.c: the limit less the offset in the plan's first period
-- (the one containing quota_set_at), never below 0; the limit afterwards.
CREATE FUNCTION tally_quota_limit_in_force(quota_limit bigint, quota_offset bigint,
                                           quota_period text, quota_set_at timestamptz,
                                           start timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN tally_period_start(quota_period, quota_set_at) = start
            THEN greatest(quota_limit - quota_offset, 0) ELSE quota_limit END;

-- A key's limit in force for the period of kind `period` starting at
-- `start`, given its plan's (tally_quota_limit_in_force). Here the plan's;
-- migration 007 replaces it to add the key's own quota adjustment (AWS's
-- UpdateUsage) as the api's key cache applies it (keycache_adjusted_limit).
CREATE FUNCTION tally_key_limit_in_force(key_id text, plan_limit bigint, period text,
                                         start timestamptz) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
RETURN plan_limit;

-- The units at which `threshold` percent of `quota_limit` is reached:
-- ceil(limit * threshold / 100), in numeric (10^15 * 100000 leaves bigint).
CREATE FUNCTION tally_threshold_units(quota_limit bigint, threshold integer) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ceil(quota_limit::numeric * threshold / 100);

-- Raises the alerts of counters that moved from old_units to new_units
-- (parallel arrays, one element per usage_counters row): every threshold t
-- of the key (its own, else its plan's) with
--     old < tally_threshold_units(limit in force, t) <= new
-- for the period kind of the key's current plan (other kinds' counters are
-- ignored), one quota_alerts row each, ON CONFLICT DO NOTHING: the UNIQUE
-- (key, period, period_start, threshold) makes it exactly once, whoever
-- raises it first. A limit of 0 raises nothing (old >= 0 is never below 0).
-- Rows go in (key, period, start, threshold) order, so two writers take the
-- unique index's locks in one order. Returns the number raised. Called by
-- the collector in the statement that adds a batch to usage_counters, and
-- by the api (tally_raise_current_quota_alerts) when a limit, a plan or
-- thresholds change.
CREATE FUNCTION tally_raise_quota_alerts(key_ids text[], periods text[],
                                         period_starts timestamptz[], old_units bigint[],
                                         new_units bigint[]) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    WITH raised AS (
        INSERT INTO quota_alerts (type, key_id, customer_id, plan_id, period, period_start,
                                  period_end, threshold, quota_limit, used, enforcement)
        SELECT CASE WHEN t.threshold = 100 THEN 'quota.exhausted'
                    ELSE 'quota.threshold_reached' END,
               c.key_id, l.customer_id, l.plan_id, c.period, c.period_start,
               tally_period_end(c.period, c.period_start), t.threshold, l.quota_limit,
               c.new_units, l.enforcement
          FROM unnest(key_ids, periods, period_starts, old_units, new_units)
                   AS c (key_id, period, period_start, old_units, new_units)
          -- each counter's key by its primary key, then its plan, when of
          -- the counter's period kind; LIMIT 1 (one key per id anyway) keeps
          -- the planner, which cannot see the arrays' length, from
          -- flattening this into a scan of every key of a plan per counter
          CROSS JOIN LATERAL (
              SELECT k.customer_id, coalesce(k.alert_thresholds, p.alert_thresholds),
                     p.id, p.quota_enforcement,
                     tally_key_limit_in_force(
                         k.id, tally_quota_limit_in_force(p.quota_limit, p.quota_offset,
                                                          p.quota_period, p.quota_set_at,
                                                          c.period_start),
                         c.period, c.period_start)
                FROM api_keys k JOIN plans p ON p.id = k.plan_id
               WHERE k.id = c.key_id AND p.quota_period = c.period
                 AND c.new_units > c.old_units
               LIMIT 1) AS l (customer_id, thresholds, plan_id,
                                                      enforcement, quota_limit)
          CROSS JOIN LATERAL unnest(l.thresholds) AS t (threshold)
         -- counters of a period kind no plan counts are skipped before any
         -- key is looked up (a hashed set of at most three kinds)
         WHERE c.period IN (SELECT quota_period FROM plans WHERE quota_period IS NOT NULL)
           AND c.old_units < tally_threshold_units(l.quota_limit, t.threshold)
           AND tally_threshold_units(l.quota_limit, t.threshold) <= c.new_units
         ORDER BY c.key_id, c.period, c.period_start, t.threshold
        ON CONFLICT DO NOTHING
        RETURNING 1)
    SELECT count(*) FROM raised
$$;

-- Raises every threshold already crossed by the current period's usage of
-- the keys of plan `plan` (or of the one key `key`; NULL: any), after a
-- lowered limit, a key moved to another plan, or changed thresholds: the
-- api calls it in its write transaction. The counters are share-locked
-- (in key order, the collector's order): a collector's transaction in
-- flight on them is waited for and its count seen, and a later one waits
-- for this transaction, then sees the new limit (its alert statement is
-- volatile: a fresh snapshot), so no crossing falls between the two.
CREATE FUNCTION tally_raise_current_quota_alerts(plan text, key text) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    WITH current AS (
        SELECT c.key_id, c.period, c.period_start, c.units
          FROM api_keys k
          JOIN plans p ON p.id = k.plan_id
          JOIN usage_counters c ON c.key_id = k.id AND c.period = p.quota_period
                               AND c.period_start = tally_period_start(p.quota_period, now())
         WHERE (plan IS NULL OR k.plan_id = plan) AND (key IS NULL OR k.id = key)
         ORDER BY c.key_id, c.period, c.period_start
           FOR SHARE OF c)
    SELECT coalesce(tally_raise_quota_alerts(array_agg(key_id), array_agg(period),
                                             array_agg(period_start),
                                             array_agg(0::bigint), array_agg(units)), 0)
      FROM current
$$;

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

-- Tally schema, version 3: the reporter's outbox of Stripe usage reports.
--
-- One row per increment the reporter has decided to send: written and
-- committed BEFORE any call to Stripe, then updated with the outcome. The
-- usage a report covers is identified by the rollup's own identity (key,
-- plan, hour), not by the Stripe names it was sent under, so renaming a
-- plan's meter or moving a key to another customer never re-reports hours
-- already reported: what is still to report for a bucket is always
--   sum(usage_hourly.units) - sum(stripe_reports.quantity)
-- over that (key, plan, hour), whatever the reports' status.
--
-- `identifier` (Stripe's meter-event identifier) is derived from
-- (key, plan, hour, seq) alone, so a retry after any crash sends the same
-- one and Stripe refuses to count it twice. `idempotency_generation` is
-- bumped (and committed) before a meter event is retried under a new
-- Idempotency-Key, after Stripe kept replaying a saved failure.

-- Legacy usage-records mode: the subscription item to increment, on the key
-- (wins) or on its plan.
ALTER TABLE plans ADD COLUMN stripe_subscription_item_id text
    CHECK (length(stripe_subscription_item_id) BETWEEN 1 AND 100);
ALTER TABLE api_keys ADD COLUMN stripe_subscription_item_id text
    CHECK (length(stripe_subscription_item_id) BETWEEN 1 AND 100);

CREATE TABLE stripe_reports (
    id                     bigserial PRIMARY KEY,
    key_id                 text NOT NULL,
    plan_id                text NOT NULL,
    hour                   timestamptz NOT NULL,
    seq                    integer NOT NULL CHECK (seq >= 0),
    quantity               bigint NOT NULL CHECK (quantity > 0),
    -- 'meter_event' (/v1/billing/meter_events) or 'usage_record'
    -- (/v1/subscription_items/{target}/usage_records)
    mode                   text NOT NULL CHECK (mode IN ('meter_event', 'usage_record')),
    stripe_customer_id     text NOT NULL,
    -- the meter's event name, or the subscription item id
    target                 text NOT NULL CHECK (length(target) BETWEEN 1 AND 100),
    identifier             text NOT NULL UNIQUE CHECK (length(identifier) <= 100),
    idempotency_generation integer NOT NULL DEFAULT 0,
    -- pending: to send (again); accepted: Stripe counted it; parked: Stripe
    -- refused it for good, waiting for an operator (never retried on its own)
    status                 text NOT NULL DEFAULT 'pending'
                           CHECK (status IN ('pending', 'accepted', 'parked')),
    attempts               integer NOT NULL DEFAULT 0,
    next_attempt_at        timestamptz NOT NULL DEFAULT now(),
    last_http_status       integer,
    last_error             text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    first_sent_at          timestamptz,
    last_sent_at           timestamptz,
    done_at                timestamptz,
    UNIQUE (key_id, plan_id, hour, seq)
);
CREATE INDEX stripe_reports_pending ON stripe_reports (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX stripe_reports_parked ON stripe_reports (id) WHERE status = 'parked';

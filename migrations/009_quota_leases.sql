-- Tally schema, version 9: several tally-api replicas enforcing one quota
-- and one rate per key (issue #15; README, "Several api replicas").
--
-- api_replicas: who is alive. Each replica with TALLY_API_REPLICAS_SHARED
-- on writes its row at start and its heartbeat every
-- TALLY_API_REPLICA_HEARTBEAT_MS; a replica whose heartbeat is older than
-- the TTL its peers pass in is dead to them. The count of live ones is
-- each replica's divisor of a plan's rate and burst.
-- A replica stopped cleanly sets `stopped`: dead at once, while its row
-- (and the spending it reported) stays for the day like any other.
CREATE TABLE api_replicas (
    id           text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 200),
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped      boolean NOT NULL DEFAULT false
);

-- quota_leases: what each replica was granted of one key's quota in one
-- period, and what it reported it spent. A replica allows a request of a
-- key with a quota only by spending one unit it holds (granted - spent,
-- in its memory). A dead replica's row counts only what it reported
-- spent: the rest of its lease returns to the pool. Rows of replicas dead
-- for a day go with them (by then the collector has counted what they
-- allowed, and usage_counters stays the truth).
CREATE TABLE quota_leases (
    key_id       text NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    period       text NOT NULL CHECK (period IN ('DAY', 'WEEK', 'MONTH')),
    period_start timestamptz NOT NULL,
    replica_id   text NOT NULL REFERENCES api_replicas (id) ON DELETE CASCADE,
    granted      bigint NOT NULL CHECK (granted >= 0),
    spent        bigint NOT NULL CHECK (spent >= 0 AND spent <= granted),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, period, period_start, replica_id)
);

-- Grants replica p_replica up to p_want more units of the key's quota for
-- the period, after recording that it has spent p_spent so far; returns
-- the units granted (0: none left, or the replica is dead to the others).
-- Never grants past
--   p_limit - max(the collector's count, every replica's reported spending)
--           - what live replicas hold unspent (granted - spent),
-- so the units that may ever be allowed are at most p_limit plus what
-- replicas that died spent after their last report. Near the end of the
-- quota a grant is at most the remainder shared by the live replicas, so
-- the last units are not all held by one replica. Serialised per key and
-- period by a transaction-level advisory lock: each statement below reads
-- after the previous grant committed.
CREATE FUNCTION tally_lease_grant(p_key text, p_period text, p_start timestamptz,
                                  p_replica text, p_limit bigint, p_spent bigint,
                                  p_want bigint, p_ttl_ms bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    cutoff      timestamptz := now() - p_ttl_ms * interval '1 millisecond';
    counted     bigint;
    reported    bigint;
    outstanding bigint;
    live        bigint;
    available   bigint;
    grant_units bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(
        hashtextextended('tally_lease:' || p_key || ':' || p_period || ':' || p_start::text, 0));
    -- A replica its peers count as dead has had its leases returned.
    IF NOT EXISTS (SELECT 1 FROM api_replicas
                    WHERE id = p_replica AND heartbeat_at > cutoff AND NOT stopped) THEN
        RETURN 0;
    END IF;
    INSERT INTO quota_leases AS l (key_id, period, period_start, replica_id, granted, spent)
    VALUES (p_key, p_period, p_start, p_replica, p_spent, p_spent)
    ON CONFLICT (key_id, period, period_start, replica_id) DO UPDATE
        SET spent = greatest(l.spent, EXCLUDED.spent),
            granted = greatest(l.granted, EXCLUDED.spent), updated_at = now();
    SELECT coalesce(sum(l.spent), 0),
           coalesce(sum(CASE WHEN r.heartbeat_at > cutoff AND NOT r.stopped
                             THEN l.granted - l.spent ELSE 0 END), 0)
      INTO reported, outstanding
      FROM quota_leases l JOIN api_replicas r ON r.id = l.replica_id
     WHERE l.key_id = p_key AND l.period = p_period AND l.period_start = p_start;
    SELECT coalesce(max(units), 0) INTO counted FROM usage_counters
     WHERE key_id = p_key AND period = p_period AND period_start = p_start;
    SELECT count(*) INTO live FROM api_replicas WHERE heartbeat_at > cutoff AND NOT stopped;
    available := p_limit - greatest(counted, reported) - outstanding;
    IF available <= 0 OR p_want <= 0 THEN
        RETURN 0;
    END IF;
    grant_units := least(p_want, greatest(1, available / greatest(live, 1)));
    UPDATE quota_leases SET granted = granted + grant_units, updated_at = now()
     WHERE key_id = p_key AND period = p_period AND period_start = p_start
       AND replica_id = p_replica;
    RETURN grant_units;
END;
$$;

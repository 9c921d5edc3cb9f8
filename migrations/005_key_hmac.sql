-- Tally schema, version 5: key secrets stored as an HMAC under a server-side
-- secret instead of a plain SHA-256.
--
-- Version 1 stored api_keys.value_hash = SHA-256(value): anyone with a copy
-- of the table could test guesses of a value offline (a user-supplied value
-- may be weak), with nothing to slow them down. tally-api now stores
-- HMAC-SHA-256(TALLY_KEY_HMAC_SECRET, SHA-256(value)); the secret is not in
-- the database. The inner SHA-256 lets a row in the old form be converted
-- without knowing its value, so existing keys keep working: tally-api
-- converts every 'sha256' row when it starts (one transaction; rows locked,
-- so two apis starting at once convert each row once), and reads a row
-- written in the old form later (by hand, an old seeding script) as if it
-- were converted until its next start. The default keeps such writers
-- correct: a row that does not say otherwise holds the old form.
ALTER TABLE api_keys
    ADD COLUMN value_hash_form text NOT NULL DEFAULT 'sha256'
        CHECK (value_hash_form IN ('sha256', 'hmac-sha256'));

COMMENT ON COLUMN api_keys.value_hash IS
    'HMAC-SHA-256(server secret, SHA-256(value)) when value_hash_form is hmac-sha256; '
    'SHA-256(value) when it is sha256 (converted by tally-api at its start)';
COMMENT ON COLUMN api_keys.value_hash_form IS
    'which form value_hash holds: sha256 (version 1, the default for rows written by hand) '
    'or hmac-sha256 (tally-api''s own)';

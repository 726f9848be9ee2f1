-- Tokens expire, are used, and one of them is the foundation's bootstrap
-- admin token (the one admin.json holds).
--
-- expires_at: NULL never expires. Tokens made before this migration had no
-- expiry: network.write tokens now expire 30 days after the upgrade ({{now}}
-- is the migration's time, in microseconds), so that a client does not stop
-- working the moment trellis is upgraded; admin tokens keep no expiry.
-- last_used_at: NULL never used; set at most once a minute per token, without
-- bumping the revision.
-- bootstrap: at most one token (the unique partial index), made by the first
-- controller to start on the database and replaced by rotate-admin-token. Of
-- the admin tokens named "admin" that controllers made before, the oldest
-- becomes the bootstrap one; the others stay ordinary admin tokens (trellis
-- tokens lists them; revoke those no longer needed).
ALTER TABLE tokens ADD COLUMN expires_at BIGINT;
ALTER TABLE tokens ADD COLUMN last_used_at BIGINT;
ALTER TABLE tokens ADD COLUMN bootstrap BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE tokens SET expires_at = {{now}} + 2592000000000 WHERE scope = 'network.write';
UPDATE tokens SET bootstrap = TRUE WHERE guid = (
	SELECT guid FROM tokens WHERE scope = 'network.admin' AND name = 'admin' ORDER BY created_at, guid LIMIT 1);
CREATE UNIQUE INDEX tokens_bootstrap ON tokens (bootstrap) WHERE bootstrap;

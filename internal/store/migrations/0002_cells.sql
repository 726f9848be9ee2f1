-- Cells (hosts running an agent), their overlay leases, the one-time join
-- tokens they join with, app process settings, and app instances: those the
-- controller schedules (managed) and those a runtime's CNI ADD registers.

-- Settings fixed at the first start, such as the overlay network: every
-- controller sharing the database must agree on them.
CREATE TABLE settings (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
);

-- Only the hex SHA-256 of a join token is stored; a token is deleted when used.
CREATE TABLE join_tokens (
	hash       TEXT PRIMARY KEY,
	created_at BIGINT NOT NULL,
	expires_at BIGINT NOT NULL
);

-- subnet is the cell's overlay lease (e.g. 10.255.3.0/24), kept for the
-- cell's life. last_seen is updated without bumping the revision.
CREATE TABLE cells (
	guid        TEXT PRIMARY KEY,
	name        TEXT NOT NULL UNIQUE,
	underlay_ip TEXT NOT NULL UNIQUE,
	subnet      TEXT NOT NULL UNIQUE,
	created_at  BIGINT NOT NULL,
	updated_at  BIGINT NOT NULL,
	last_seen   BIGINT NOT NULL
);

-- What an app runs: the desired number of instances while STARTED, the
-- command (a JSON array; empty = the built-in sample app), the environment
-- (a JSON object), and an optional cell all its instances are pinned to.
ALTER TABLE apps ADD COLUMN instances INTEGER NOT NULL DEFAULT 1;
ALTER TABLE apps ADD COLUMN command TEXT NOT NULL DEFAULT '[]';
ALTER TABLE apps ADD COLUMN env TEXT NOT NULL DEFAULT '{}';
ALTER TABLE apps ADD COLUMN cell_guid TEXT REFERENCES cells (guid) ON DELETE SET NULL;

-- Instances. managed ones are scheduled by the controller (one per index
-- of a STARTED app, placed on a cell; cell_guid NULL while no cell can take
-- it) and run by that cell's agent; the others exist while a runtime's
-- container is attached. ip and container_id are set while it is attached.
CREATE TABLE instances (
	guid         TEXT PRIMARY KEY,
	app_guid     TEXT NOT NULL REFERENCES apps (guid),
	idx          INTEGER NOT NULL,
	managed      BOOLEAN NOT NULL,
	cell_guid    TEXT REFERENCES cells (guid),
	ip           TEXT,
	container_id TEXT,
	state        TEXT NOT NULL,
	created_at   BIGINT NOT NULL,
	updated_at   BIGINT NOT NULL,
	UNIQUE (cell_guid, ip)
);
CREATE UNIQUE INDEX instances_managed_index ON instances (app_guid, idx) WHERE managed;
CREATE INDEX instances_cell ON instances (cell_guid);
CREATE INDEX instances_app ON instances (app_guid);

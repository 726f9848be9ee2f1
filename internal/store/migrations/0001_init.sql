-- The initial schema. It runs unchanged on SQLite and PostgreSQL except for
-- {{autoid}}, the engine's auto-increment primary key (INTEGER PRIMARY KEY on
-- SQLite, an identity column on PostgreSQL). Timestamps are integer unix
-- microseconds; GUIDs are UUID strings.

-- The store-wide revision: one row, bumped by every mutation as the first
-- statement of its transaction, so on PostgreSQL its row lock serializes the
-- writers of every controller sharing the database.
CREATE TABLE revision (
	id    INTEGER PRIMARY KEY CHECK (id = 1),
	value BIGINT NOT NULL
);
INSERT INTO revision (id, value) VALUES (1, 0);

CREATE TABLE orgs (
	guid       TEXT PRIMARY KEY,
	name       TEXT NOT NULL UNIQUE,
	created_at BIGINT NOT NULL,
	updated_at BIGINT NOT NULL
);

CREATE TABLE spaces (
	guid       TEXT PRIMARY KEY,
	org_guid   TEXT NOT NULL REFERENCES orgs (guid),
	name       TEXT NOT NULL,
	created_at BIGINT NOT NULL,
	updated_at BIGINT NOT NULL,
	UNIQUE (org_guid, name)
);

CREATE TABLE apps (
	guid       TEXT PRIMARY KEY,
	space_guid TEXT NOT NULL REFERENCES spaces (guid),
	name       TEXT NOT NULL,
	state      TEXT NOT NULL,
	created_at BIGINT NOT NULL,
	updated_at BIGINT NOT NULL,
	UNIQUE (space_guid, name)
);

-- Domain names and route hosts are stored lowercase.
CREATE TABLE domains (
	guid       TEXT PRIMARY KEY,
	name       TEXT NOT NULL UNIQUE,
	internal   BOOLEAN NOT NULL,
	created_at BIGINT NOT NULL,
	updated_at BIGINT NOT NULL
);

CREATE TABLE routes (
	guid        TEXT PRIMARY KEY,
	domain_guid TEXT NOT NULL REFERENCES domains (guid),
	host        TEXT NOT NULL,
	created_at  BIGINT NOT NULL,
	updated_at  BIGINT NOT NULL,
	UNIQUE (domain_guid, host)
);

CREATE TABLE route_destinations (
	route_guid TEXT NOT NULL REFERENCES routes (guid) ON DELETE CASCADE,
	app_guid   TEXT NOT NULL REFERENCES apps (guid),
	PRIMARY KEY (route_guid, app_guid)
);
CREATE INDEX route_destinations_app ON route_destinations (app_guid);

-- Every 16-bit policy tag but 0, each free (app_guid NULL) or held by an app
-- that takes part in a policy. tags_free makes "lowest free tag" one index
-- seek however many are taken.
CREATE TABLE tags (
	tag      INTEGER PRIMARY KEY CHECK (tag BETWEEN 1 AND 65535),
	app_guid TEXT UNIQUE REFERENCES apps (guid),
	UNIQUE (app_guid, tag)
);
CREATE INDEX tags_free ON tags (tag) WHERE app_guid IS NULL;
INSERT INTO tags (tag)
WITH RECURSIVE n (tag) AS (SELECT 1 UNION ALL SELECT tag + 1 FROM n WHERE tag < 65535)
SELECT tag FROM n;

-- Policies, keyed as Cloud Foundry keys them. The unique key serves lookups
-- by source; policies_dest serves lookups by destination; id orders listings
-- by creation. Each policy carries the tags of its apps, so that listing
-- needs no join: an app keeps its tag while it is in a policy, and the
-- foreign keys to (app, tag) make the database reject any change that would
-- break that. They do not cascade: deleting an app deletes its policies and
-- frees its tag explicitly.
CREATE TABLE policies (
	id         {{autoid}},
	source_app TEXT NOT NULL,
	source_tag INTEGER NOT NULL,
	dest_app   TEXT NOT NULL,
	dest_tag   INTEGER NOT NULL,
	protocol   TEXT NOT NULL,
	start_port INTEGER NOT NULL,
	end_port   INTEGER NOT NULL,
	UNIQUE (source_app, dest_app, protocol, start_port, end_port),
	FOREIGN KEY (source_app, source_tag) REFERENCES tags (app_guid, tag),
	FOREIGN KEY (dest_app, dest_tag) REFERENCES tags (app_guid, tag)
);
CREATE INDEX policies_dest ON policies (dest_app, dest_tag);

-- API tokens: only the hex SHA-256 of a token's value is stored.
CREATE TABLE tokens (
	guid       TEXT PRIMARY KEY,
	name       TEXT NOT NULL,
	scope      TEXT NOT NULL,
	hash       TEXT NOT NULL UNIQUE,
	created_at BIGINT NOT NULL
);

CREATE TABLE token_spaces (
	token_guid TEXT NOT NULL REFERENCES tokens (guid) ON DELETE CASCADE,
	space_guid TEXT NOT NULL REFERENCES spaces (guid),
	PRIMARY KEY (token_guid, space_guid)
);

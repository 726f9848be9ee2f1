-- Application security groups (Cloud Foundry's ASGs): egress allow rules,
-- kept as the JSON array of CF's rule objects the API validated, applied
-- to every space (global_running, global_staging) or to the spaces bound
-- for a lifecycle.
CREATE TABLE security_groups (
	guid           TEXT PRIMARY KEY,
	name           TEXT NOT NULL UNIQUE,
	rules          TEXT NOT NULL,
	global_running BOOLEAN NOT NULL DEFAULT FALSE,
	global_staging BOOLEAN NOT NULL DEFAULT FALSE,
	created_at     BIGINT NOT NULL,
	updated_at     BIGINT NOT NULL
);

CREATE TABLE security_group_spaces (
	group_guid TEXT NOT NULL REFERENCES security_groups (guid) ON DELETE CASCADE,
	space_guid TEXT NOT NULL REFERENCES spaces (guid) ON DELETE CASCADE,
	lifecycle  TEXT NOT NULL CHECK (lifecycle IN ('running', 'staging')),
	PRIMARY KEY (group_guid, space_guid, lifecycle)
);

CREATE INDEX security_group_spaces_space ON security_group_spaces (space_guid);

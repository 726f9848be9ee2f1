-- Routes belong to a space, as in Cloud Foundry: a route's destinations are
-- apps of its space, and a space's token manages only its spaces' routes.
-- Each existing route gets the space of its oldest destination app (by
-- creation, then GUID); a route with no destination gets the default space
-- (default/default), or the oldest space if that is gone. The store's
-- migrate step then removes, and reports, the destinations left in another
-- space than their route's (routes whose apps spanned spaces).
-- space_guid stays nullable in the schema (SQLite cannot add a NOT NULL
-- foreign key column to a table with rows); the store always sets it.
ALTER TABLE routes ADD COLUMN space_guid TEXT REFERENCES spaces (guid);

UPDATE routes SET space_guid = COALESCE(
	(SELECT a.space_guid FROM route_destinations rd JOIN apps a ON a.guid = rd.app_guid
		WHERE rd.route_guid = routes.guid
		ORDER BY a.created_at, a.guid LIMIT 1),
	(SELECT s.guid FROM spaces s JOIN orgs o ON o.guid = s.org_guid
		ORDER BY (o.name = 'default' AND s.name = 'default') DESC, s.created_at, s.guid LIMIT 1));

CREATE INDEX routes_space ON routes (space_guid);

-- The change feed: every change to a table the cells' desired states are
-- compiled from is recorded, with the revision of its transaction, by
-- triggers the store creates for the tables listed in changeTriggers
-- (migrate.go), so that a controller can bring its model of the cells'
-- states from revision R to now by reading what changed after R instead of
-- every row. op is I, U or D; key1 and key2 are the row's key (key2 '' for
-- one-column keys). The store keeps the latest changes (ChangesKept) and
-- records in revision.changes_from the revision after which the feed is
-- complete: a reader further behind reads a snapshot instead.
CREATE TABLE changes (
	seq      {{autoid}},
	revision BIGINT NOT NULL,
	tbl      TEXT NOT NULL,
	op       TEXT NOT NULL,
	key1     TEXT NOT NULL,
	key2     TEXT NOT NULL
);
CREATE INDEX changes_revision ON changes (revision);

-- Changes before this migration were not recorded.
ALTER TABLE revision ADD COLUMN changes_from BIGINT NOT NULL DEFAULT 0;
UPDATE revision SET changes_from = value;

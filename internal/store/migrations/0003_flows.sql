-- Connection attempts the cells' dataplanes logged (rate-limited at the
-- source): the answer to "why was my connection denied?". Kept bounded by
-- the store (the newest rows win); not part of the desired state, so writing
-- them does not bump the revision.
CREATE TABLE flows (
	id           {{autoid}},
	at           BIGINT NOT NULL,
	cell_guid    TEXT NOT NULL,
	verdict      TEXT NOT NULL,
	protocol     TEXT NOT NULL,
	src_ip       TEXT NOT NULL,
	src_port     INTEGER NOT NULL,
	dst_ip       TEXT NOT NULL,
	dst_port     INTEGER NOT NULL,
	src_app      TEXT NOT NULL,
	src_instance TEXT NOT NULL,
	dst_app      TEXT NOT NULL,
	dst_instance TEXT NOT NULL,
	reason       TEXT NOT NULL
);
CREATE INDEX flows_src_app ON flows (src_app, id);
CREATE INDEX flows_dst_app ON flows (dst_app, id);

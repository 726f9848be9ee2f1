-- When each free tag was freed (microseconds since the epoch; NULL if it
-- was never held, or freed before this migration). A freed tag is given to
-- no other app until the store's tag quarantine (store.TagQuarantine, 10
-- minutes) has passed since then: a cell that has not yet applied a state
-- without the tag's old app must never apply the old app's allows to a new
-- one.
ALTER TABLE tags ADD COLUMN freed_at BIGINT;

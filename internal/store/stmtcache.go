package store

import (
	"context"
	"database/sql"
	"sync"
)

// stmtCache keeps SQLite's statements prepared, by query text, so that a
// query is parsed once on each connection instead of every time it runs:
// database/sql prepares a *sql.Stmt on a connection the first time it runs
// there and reuses it after, also inside a transaction (Tx.StmtContext).
// Parsing was 18% of the controller's CPU while containers attached (a
// profile of BenchmarkCNISetup's controller). PostgreSQL needs no cache:
// pgx keeps a prepared statement per query text on each connection.
type stmtCache struct {
	db  *sql.DB
	max int // maxCachedStmts but in tests
	mu  sync.Mutex
	m   map[string]*sql.Stmt
}

// maxCachedStmts bounds the cache: the store's queries are a few hundred
// texts (those built with where have one text per combination of filters);
// past the bound, queries run unprepared as before.
const maxCachedStmts = 512

func newStmtCache(db *sql.DB) *stmtCache {
	return &stmtCache{db: db, max: maxCachedStmts, m: map[string]*sql.Stmt{}}
}

// get returns query's statement, preparing it on first use; nil if the
// cache is full or the statement does not prepare (the caller then runs
// the query as it is, so that its error comes from running it).
func (c *stmtCache) get(ctx context.Context, query string) *sql.Stmt {
	c.mu.Lock()
	st, ok := c.m[query]
	full := len(c.m) >= c.max
	c.mu.Unlock()
	if ok || full {
		return st
	}
	// Prepared outside the lock: preparing takes a connection of the
	// pool, which SQLite's never limits (see open), so this does not
	// wait on a transaction in progress.
	st, err := c.db.PrepareContext(context.WithoutCancel(ctx), query)
	if err != nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev, ok := c.m[query]; ok { // prepared meanwhile by another caller
		st.Close()
		return prev
	}
	c.m[query] = st
	return st
}

// close closes every cached statement.
func (c *stmtCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for q, st := range c.m {
		st.Close()
		delete(c.m, q)
	}
}

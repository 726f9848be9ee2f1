package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
	_ "modernc.org/sqlite"             // registers "sqlite"
)

// Store is the SQL store. It is safe for concurrent use, and several Stores
// (in one process or in several controllers) may share one PostgreSQL
// database.
type Store struct {
	db *sql.DB
	pg bool // PostgreSQL; SQLite otherwise
	// stmts keeps SQLite's queries prepared; nil on PostgreSQL.
	stmts *stmtCache

	// maxTag bounds tag allocation; MaxTag except in tests of exhaustion.
	maxTag int
	// tagQuarantine is how long a freed tag stays unallocated;
	// TagQuarantine except in tests.
	tagQuarantine time.Duration

	// changed is closed (and replaced) after every commit of this Store, to
	// wake WaitRevision at once; changes by other controllers sharing the
	// database are seen by polling.
	mu         sync.Mutex
	changed    chan struct{}
	flowsAdded chan struct{} // closed (and replaced) when flows are added
	stopListen context.CancelFunc

	// routeMigrations is what Open's migrations reported; see RouteMigrations.
	routeMigrations []RouteMigration
}

// sqliteParams open every SQLite connection waiting up to 10 s for a lock
// (set first: switching a new file to WAL takes one), in WAL mode (readers
// do not block the writer), with foreign keys enforced and a page cache of
// up to 64 MiB (the default 2 MiB holds a fraction of 60,000 policies).
// BEGIN IMMEDIATE makes every write transaction take the write lock up
// front, as PostgreSQL writers take the revision row lock.
const sqliteParams = "_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_pragma=cache_size(-65536)&_txlock=immediate"

// Open opens (and migrates) the store. url is "postgres://…" or
// "postgresql://…" for PostgreSQL; anything else is a SQLite file path
// (optionally prefixed "sqlite:"). It creates the default org, space and
// apps.internal domain if missing.
func Open(ctx context.Context, url string) (*Store, error) {
	return open(ctx, url, 0)
}

// Idle database connections a store keeps, so that the wave of long polls
// a change wakes finds them open (see open). PostgreSQL keeps fewer: its
// connections are cheap to open, and several controllers share the
// server's max_connections (100 by default).
const (
	maxIdleConns         = 64
	maxIdleConnsPostgres = 16
)

// open is Open migrating up to schema version target (0: the latest); tests
// use it to make a database at an older version.
func open(ctx context.Context, url string, target int) (*Store, error) {
	s := &Store{maxTag: MaxTag, tagQuarantine: TagQuarantine, changed: make(chan struct{}), flowsAdded: make(chan struct{})}
	var err error
	if strings.HasPrefix(url, "postgres://") || strings.HasPrefix(url, "postgresql://") {
		s.pg = true
		s.db, err = sql.Open("pgx", url)
	} else {
		path := strings.TrimPrefix(url, "sqlite:")
		if err := privateFiles(path); err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
		sep := "?"
		if strings.Contains(path, "?") {
			sep = "&"
		}
		s.db, err = sql.Open("sqlite", path+sep+sqliteParams)
	}
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	// A change wakes the cells' long polls at once, and each poll that
	// follows reads and writes the store (the cell's authentication, its
	// last-seen time, the revision). database/sql keeps two idle
	// connections by default: a wave of 50 polls opened dozens of new
	// ones per change (a new SQLite connection applies its pragmas and
	// parses the schema: most of the controller's CPU per change, in
	// BenchmarkRouteChangePolled). Keep enough idle for such a wave; a
	// quiet minute closes them.
	if s.pg {
		s.db.SetMaxIdleConns(maxIdleConnsPostgres)
	} else {
		s.db.SetMaxIdleConns(maxIdleConns)
	}
	s.db.SetConnMaxIdleTime(time.Minute)
	// Several processes opening one new SQLite file at once can see
	// SQLITE_BUSY where the busy timeout does not apply (switching the
	// file to WAL): try again for a while.
	for try := 0; ; try++ {
		err = s.migrate(ctx, target)
		if err == nil || s.pg || try == 50 || !strings.Contains(err.Error(), "SQLITE_BUSY") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		s.db.Close()
		return nil, fmt.Errorf("open store: %w", err)
	}
	if !s.pg {
		s.stmts = newStmtCache(s.db)
	} else {
		var lctx context.Context
		lctx, s.stopListen = context.WithCancel(context.Background())
		go s.listen(lctx, url)
	}
	return s, nil
}

// privateFiles makes the SQLite database at path (and its -wal and -shm
// files, if any) readable and writable by the owner only, creating it if
// missing: it holds the instance CA's keys. SQLite creates the -wal and
// -shm files with the permissions of the database file, so they are
// private too. In-memory and URI-named databases are left alone.
func privateFiles(path string) error {
	path, _, _ = strings.Cut(path, "?")
	if path == "" || strings.HasPrefix(path, ":memory:") || strings.HasPrefix(path, "file:") {
		return nil
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	f.Close()
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Chmod(p, 0o600); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("make %s private: %w", p, err)
		}
	}
	return nil
}

// Close releases the database.
func (s *Store) Close() error {
	if s.stopListen != nil {
		s.stopListen()
	}
	if s.stmts != nil {
		s.stmts.close()
	}
	return s.db.Close()
}

// Ping checks the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

// Revision is the current store-wide revision (0 for a new store).
func (s *Store) Revision(ctx context.Context) (int64, error) {
	var rev int64
	if err := s.r().queryRow(ctx, "SELECT value FROM revision WHERE id = 1").Scan(&rev); err != nil {
		return 0, fmt.Errorf("read revision: %w", err)
	}
	return rev, nil
}

// write runs fn in a transaction whose first statement bumps the revision.
// On PostgreSQL (READ COMMITTED) the bump's row lock serializes all writers
// of all controllers until commit; on SQLite the transaction is IMMEDIATE.
// So fn may read, decide and write without races. fn reports whether it
// changed anything: if not, or if it fails, the transaction rolls back and
// the revision stays, so watchers do not wake for nothing.
func (s *Store) write(ctx context.Context, fn func(r runner) (changed bool, err error)) error {
	tx, err := s.begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback() // no-op after Commit
	r := s.tx(tx)
	var rev int64
	if err := r.queryRow(ctx, "UPDATE revision SET value = value + 1 WHERE id = 1 RETURNING value").Scan(&rev); err != nil {
		return fmt.Errorf("bump revision: %w", err)
	}
	changed, err := fn(r)
	if err != nil || !changed {
		return err
	}
	if rev%pruneEvery == 0 {
		if err := pruneChanges(ctx, r); err != nil {
			return fmt.Errorf("prune the change feed: %w", err)
		}
	}
	if s.pg {
		// Delivered to every listener when (and only if) the commit succeeds.
		if _, err := r.exec(ctx, "SELECT pg_notify('"+notifyChannel+"', '')"); err != nil {
			return fmt.Errorf("notify watchers: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	s.wake()
	return nil
}

// RevisionPoll is how often WaitRevision looks at the database for changes
// made by other controllers sharing it.
var RevisionPoll = 250 * time.Millisecond

// WaitRevision returns the store's revision as soon as it is greater than
// after, or when ctx is done (then with ctx's error and the revision last
// read). Changes committed through this Store wake it at once; others within
// RevisionPoll. While the database is unavailable (IsUnavailable) it keeps
// polling rather than returning the error.
func (s *Store) WaitRevision(ctx context.Context, after int64) (int64, error) {
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		rev, err := s.Revision(ctx)
		if err != nil && (!IsUnavailable(err) || ctx.Err() != nil) {
			return rev, err
		}
		// While the database does not answer, keep looking at the poll's
		// pace: a watcher resumes within RevisionPoll of its return.
		if err == nil && rev > after {
			return rev, nil
		}
		t := time.NewTimer(RevisionPoll)
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return rev, ctx.Err()
		}
		t.Stop()
	}
}

// begin starts a write transaction: IMMEDIATE on SQLite (see
// sqliteParams), READ COMMITTED on PostgreSQL whatever the server's default,
// so that each statement sees what the writers before it committed.
func (s *Store) begin(ctx context.Context) (*sql.Tx, error) {
	if s.pg {
		return s.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	}
	return s.db.BeginTx(ctx, nil)
}

// r is a runner on the database outside any transaction, for reads.
func (s *Store) r() runner { return runner{q: s.db, pg: s.pg, stmts: s.stmts} }

// tx is a runner in transaction tx.
func (s *Store) tx(tx *sql.Tx) runner {
	return runner{q: tx, pg: s.pg, stmts: s.stmts, tx: tx, txStmts: map[string]*sql.Stmt{}}
}

// querier is what *sql.DB and *sql.Tx have in common.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	PrepareContext(ctx context.Context, query string) (*sql.Stmt, error)
}

// runner runs queries written for both engines: placeholders are "?" (never
// used inside string literals), rewritten to $N for PostgreSQL.
type runner struct {
	q  querier
	pg bool
	// stmts, on SQLite, keeps the queries prepared (nil: run them as
	// they are); tx is the transaction q is, if it is one, and txStmts
	// the cached statements made for it, so that a query run many times
	// in one transaction makes one (the store uses a transaction from one
	// goroutine).
	stmts   *stmtCache
	tx      *sql.Tx
	txStmts map[string]*sql.Stmt
}

// prepared returns query's cached statement, in the runner's transaction
// if it has one; nil where there is none (PostgreSQL, a full cache).
func (r runner) prepared(ctx context.Context, query string) *sql.Stmt {
	if r.stmts == nil {
		return nil
	}
	if st, ok := r.txStmts[query]; ok {
		return st
	}
	st := r.stmts.get(ctx, query)
	if st != nil && r.tx != nil {
		st = r.tx.StmtContext(ctx, st)
		r.txStmts[query] = st
	}
	return st
}

func (r runner) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if st := r.prepared(ctx, query); st != nil {
		return st.ExecContext(ctx, args...)
	}
	return r.q.ExecContext(ctx, r.rebind(query), args...)
}

func (r runner) query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st := r.prepared(ctx, query); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return r.q.QueryContext(ctx, r.rebind(query), args...)
}

func (r runner) queryRow(ctx context.Context, query string, args ...any) *sql.Row {
	if st := r.prepared(ctx, query); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return r.q.QueryRowContext(ctx, r.rebind(query), args...)
}

// prepare returns a statement to run many times. On SQLite it is prepared
// once, which saves parsing it each time. On PostgreSQL, pgx already keeps
// a prepared statement per query text on each connection, and preparing
// explicitly would cost two more round trips.
func (r runner) prepare(ctx context.Context, query string) (*stmt, error) {
	if r.pg {
		return &stmt{q: r.q, query: r.rebind(query)}, nil
	}
	st, err := r.q.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	return &stmt{st: st}, nil
}

// stmt is a statement from runner.prepare: prepared (st), or a query to
// pass to q each time.
type stmt struct {
	st    *sql.Stmt
	q     querier
	query string
}

func (s *stmt) ExecContext(ctx context.Context, args ...any) (sql.Result, error) {
	if s.st != nil {
		return s.st.ExecContext(ctx, args...)
	}
	return s.q.ExecContext(ctx, s.query, args...)
}

func (s *stmt) QueryRowContext(ctx context.Context, args ...any) *sql.Row {
	if s.st != nil {
		return s.st.QueryRowContext(ctx, args...)
	}
	return s.q.QueryRowContext(ctx, s.query, args...)
}

func (s *stmt) Close() error {
	if s.st != nil {
		return s.st.Close()
	}
	return nil
}

// execCount runs an exec and returns the number of rows it affected.
func (r runner) execCount(ctx context.Context, query string, args ...any) (int64, error) {
	res, err := r.exec(ctx, query, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// exists reports whether query returns a row.
func (r runner) exists(ctx context.Context, query string, args ...any) (bool, error) {
	var one int
	err := r.queryRow(ctx, query, args...).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

func (r runner) rebind(query string) string {
	if !r.pg || !strings.Contains(query, "?") {
		return query
	}
	var b strings.Builder
	b.Grow(len(query) + 16)
	n := 0
	for i := 0; i < len(query); i++ {
		if query[i] != '?' {
			b.WriteByte(query[i])
			continue
		}
		n++
		b.WriteByte('$')
		b.WriteString(strconv.Itoa(n))
	}
	return b.String()
}

// in is the condition "col is one of vals" with a single bound parameter,
// however long the list: SQLite's and PostgreSQL's limits on the number of
// parameters (32766, 65535) never apply. PostgreSQL binds a text array;
// SQLite a JSON array, read back with json_each.
func (r runner) in(col string, vals []string) (string, any) {
	if r.pg {
		return col + " = ANY(?)", vals
	}
	b, _ := json.Marshal(vals) // cannot fail for strings
	return col + " IN (SELECT value FROM json_each(?))", string(b)
}

// bytewise is the collation that orders text by its bytes, as Go's
// strings.Compare does (SQLite's default; PostgreSQL's "C"): listings the
// controller's model of the cells' states keeps in the same order use it,
// whatever the database's default collation.
func (r runner) bytewise() string {
	if r.pg {
		return ` COLLATE "C"`
	}
	return ""
}

// inInts is in for integers.
func (r runner) inInts(col string, vals []int64) (string, any) {
	if r.pg {
		return col + " = ANY(?)", vals
	}
	if vals == nil {
		vals = []int64{}
	}
	b, _ := json.Marshal(vals) // cannot fail for integers
	return col + " IN (SELECT value FROM json_each(?))", string(b)
}

// where collects ANDed conditions and their arguments.
type where struct {
	r     runner
	conds []string
	args  []any
}

// add adds a condition with "?" placeholders for args.
func (w *where) add(cond string, args ...any) {
	w.conds = append(w.conds, cond)
	w.args = append(w.args, args...)
}

// in adds "col is one of vals", unless vals is empty (no filter).
func (w *where) in(col string, vals []string) {
	if len(vals) == 0 {
		return
	}
	cond, arg := w.r.in(col, vals)
	w.add(cond, arg)
}

func (w *where) String() string {
	if len(w.conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(w.conds, " AND ")
}

// now is the current time as stored: UTC, microsecond precision.
func now() time.Time { return time.UnixMicro(time.Now().UnixMicro()).UTC() }

func micros(t time.Time) int64 { return t.UnixMicro() }

func fromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }

func newGUID() string { return uuid.NewString() }

// distinct returns vals without duplicates, in first-seen order.
func distinct(vals []string) []string {
	seen := make(map[string]bool, len(vals))
	out := make([]string, 0, len(vals))
	for _, v := range vals {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// lower returns vals in lowercase, for columns stored lowercase.
func lower(vals []string) []string {
	if len(vals) == 0 {
		return nil
	}
	out := make([]string, len(vals))
	for i, v := range vals {
		out[i] = strings.ToLower(v)
	}
	return out
}

// stringSet reads a one-column query of strings into a set.
func (r runner) stringSet(ctx context.Context, query string, args ...any) (map[string]bool, error) {
	rows, err := r.query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	set := make(map[string]bool)
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		set[v] = true
	}
	return set, rows.Err()
}

package controller

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/policy"
	"github.com/trellis-c2c/trellis/internal/store"
)

// cellFeed is what the cells' long polls wait on. One watcher (running
// while any cell polls) waits for the store's revision to move, reads what
// changed since its model's revision from the store's change feed, applies
// it to the model (policy.Model), compiles the desired state of the cells
// the change may affect, and wakes the polls; a poll answers only when its
// own cell's state changed. So a change costs what it changes — not a
// snapshot of the store, nor a compile of every cell — whatever the number
// of cells watching, and a cell whose state a change does not touch (an app
// with no instances, a policy to apps that run elsewhere, when their tags
// exist already) is not woken at all. The model is built from a snapshot
// at the first poll, and again when the change feed no longer reaches back
// to it or carries a change it does not apply (a setting's).
//
// Each cell's state carries a revision of its own: the store revision of
// the snapshot in which its content last changed. A poll with ?after=R
// answers when that revision exceeds R. The feed is a cache of the store:
// a controller that starts (or a second controller on the same database)
// compiles from the store again, and may hand a cell the state it has once
// more, at a higher revision — which the cell's dataplane applies as no
// change.
type cellFeed struct {
	store   *store.Store
	compile func(context.Context, store.Snapshot) (*policy.Snapshot, error)
	log     *slog.Logger

	compiling sync.Mutex // one compile at a time; holders of mu never wait for it
	// Held with compiling: the model of every cell's state, at the
	// revision of the last compile (nil until the first, and after a
	// failed one), and the encoder of the states, which keeps the
	// encodings of the shared lists.
	model *policy.Model
	enc   *stateEncoder
	// alwaysRebuild (benchmarks only) compiles every cell from a snapshot
	// on every change, as the feed did before it kept a model.
	alwaysRebuild bool

	// minPush is the least time between two newer states a cell's long
	// polls answer with: the first change after a quiet spell is answered
	// at once, and a burst of changes to a cell costs it at most one push
	// per minPush (the latest state when the hold ends), however many
	// writes the burst has.
	minPush time.Duration

	mu       sync.Mutex
	lastPush map[string]time.Time // cell → when a long poll last answered it with a newer state
	rev      int64                // store revision of the last compiled snapshot (-1: none)
	cells    map[string]*feedEntry
	changed  chan struct{} // closed (and replaced) after each compile
	watchers int           // polls waiting: the watch runs while there are any
	stop     context.CancelFunc

	compileSeconds prometheus.Histogram
	cellChanges    prometheus.Counter
	cellsCompiled  prometheus.Counter
	rebuilds       prometheus.Counter
	// differ diffs the lists all cells share once per change.
	differ      api.Differ
	answers     *prometheus.CounterVec // by kind: "state" or "delta"
	answerBytes *prometheus.CounterVec
}

// feedEntry is one cell's compiled desired state.
type feedEntry struct {
	rev int64    // the cell's revision
	sum [32]byte // hash of the state without its revision: of ownSum and sums
	// body is the state as JSON, in segments: the lists every cell shares
	// (the foundation's endpoints, domains and routes), at sharedAt, are
	// encoded once and written to every cell's poll as they are. ownSum is
	// the hash of the other segments but the revision (body[0]), sums the
	// shared lists' hashes: a change to the shared lists alone makes a new
	// entry of the same own segments (stateEncoder.reshare).
	body     [][]byte
	ownSum   [32]byte
	sums     [nShared][32]byte
	sharedAt [nShared]int
	// st is the state itself (read-only: it shares slices with the model
	// and other states), and older the cell's states before it, newest
	// first, at most stateHistory: the bases of the deltas the feed can
	// answer a poll with.
	st    *api.CellState
	older []keptState
}

// keptState is a state a cell had at a revision, with its entry's sum.
type keptState struct {
	rev int64
	sum [32]byte
	st  *api.CellState
}

// stateHistory is how many of a cell's earlier states the feed keeps as
// bases of deltas: an agent at most that many states behind (held up by
// coalescing, a slow apply, a short outage) gets a delta, else the whole
// state.
const stateHistory = 16

// write sends e's state as the answer to a poll.
func (e *feedEntry) write(w io.Writer) error {
	for _, b := range e.body {
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}

// at is the state the cell had at revision rev with digest (the hex of
// its entry's sum), if the entry keeps it.
func (e *feedEntry) at(rev int64, digest string) *api.CellState {
	if rev == e.rev && digest == hex.EncodeToString(e.sum[:]) {
		return e.st
	}
	for _, k := range e.older {
		if k.rev == rev && digest == hex.EncodeToString(k.sum[:]) {
			return k.st
		}
	}
	return nil
}

// answer writes the answer to a poll. Without delta, the whole state as
// an api.CellState (what agents before deltas ask for). With delta, an
// api.CellStateAnswer with the digest of e's state: the delta from the
// state of revision after whose digest is base when e keeps it, else the
// whole state. It returns whether it wrote a delta.
func (e *feedEntry) answer(w io.Writer, df *api.Differ, after int64, base string, delta bool) (bool, error) {
	if !delta {
		return false, e.write(w)
	}
	digest := hex.EncodeToString(e.sum[:])
	if old := e.at(after, base); old != nil && e.st != nil {
		d, err := df.Diff(old, e.st)
		if err == nil {
			d.Base, d.Revision = after, e.rev
			b, err := json.Marshal(api.CellStateAnswer{Delta: &d, Digest: digest})
			if err != nil {
				return false, err
			}
			_, err = w.Write(b)
			return true, err
		}
		// A state is plain data: it always encodes. Else, the whole state.
	}
	if _, err := io.WriteString(w, `{"state":`); err != nil {
		return false, err
	}
	if err := e.write(w); err != nil {
		return false, err
	}
	_, err := io.WriteString(w, `,"digest":"`+digest+`"}`)
	return false, err
}

func newCellFeed(st *store.Store, compile func(context.Context, store.Snapshot) (*policy.Snapshot, error), log *slog.Logger, reg prometheus.Registerer) *cellFeed {
	f := &cellFeed{store: st, compile: compile, log: log, rev: -1, changed: make(chan struct{}),
		minPush: defaultMinPush, lastPush: map[string]time.Time{},
		compileSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "trellis_controller_cell_state_compile_seconds",
			Help:    "Time to bring the cells' desired states to the store's revision: read its changes, apply them to the model and compile the cells they affect (or, on a rebuild, read a snapshot and compile every cell).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		cellChanges: prometheus.NewCounter(prometheus.CounterOpts{Name: "trellis_controller_cell_state_changes_total",
			Help: "Cells whose desired state a compile changed (each wakes that cell's poll)."}),
		cellsCompiled: prometheus.NewCounter(prometheus.CounterOpts{Name: "trellis_controller_cell_states_compiled_total",
			Help: "Cells' desired states compiled: those a change may have affected, or every cell on a rebuild."}),
		rebuilds: prometheus.NewCounter(prometheus.CounterOpts{Name: "trellis_controller_cell_model_rebuilds_total",
			Help: "Times the model of the cells' states was built from a snapshot of the store rather than brought forward by its changes."}),
		answers: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_controller_cell_state_answers_total",
			Help: "Answers to the cells' state polls, by kind: the whole state, or a delta from the cell's revision."}, []string{"kind"}),
		answerBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_controller_cell_state_answer_bytes_total",
			Help: "Bytes of the answers to the cells' state polls (heartbeats not counted), by kind: the whole state, or a delta."}, []string{"kind"}),
	}
	reg.MustRegister(f.compileSeconds, f.cellChanges, f.cellsCompiled, f.rebuilds, f.answers, f.answerBytes)
	return f
}

// state returns cell's desired state compiled from the store as it is now
// or later; with after >= 0 it waits, at most wait, for one whose revision
// exceeds after, and otherwise returns the current one. A cell the store
// does not know is store.ErrNotFound. held, if not nil, is called once when
// the poll starts to wait (no error can come before the answer after it
// but the cell's deletion and the end of ctx).
func (f *cellFeed) state(ctx context.Context, cell string, after int64, wait time.Duration, held func()) (*feedEntry, error) {
	f.join()
	defer f.leave()
	// Read-your-writes: what was committed before this poll shows in it.
	now, err := f.store.Revision(ctx)
	if err != nil {
		return nil, err
	}
	if err := f.compileAtLeast(ctx, now); err != nil {
		return nil, err
	}
	timeout := time.NewTimer(wait)
	defer timeout.Stop()
	for {
		f.mu.Lock()
		e, changed := f.cells[cell], f.changed
		f.mu.Unlock()
		if e == nil {
			return nil, fmt.Errorf("cell %s: %w", cell, store.ErrNotFound)
		}
		if after < 0 {
			return e, nil
		}
		if e.rev > after {
			return f.push(ctx, cell, e)
		}
		if held != nil && wait > 0 {
			held()
			held = nil
		}
		select {
		case <-changed:
		case <-timeout.C:
			return e, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// defaultMinPush is a cell feed's minPush: a thousand writes in a second
// push a cell at most 21 states.
const defaultMinPush = 50 * time.Millisecond

// push answers a long poll of cell with a newer state, e, or, if the cell
// had one less than minPush ago, with the latest when minPush has passed.
func (f *cellFeed) push(ctx context.Context, cell string, e *feedEntry) (*feedEntry, error) {
	f.mu.Lock()
	hold := time.Until(f.lastPush[cell].Add(f.minPush))
	f.mu.Unlock()
	if hold > 0 {
		t := time.NewTimer(hold)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if latest := f.cells[cell]; latest != nil {
		e = latest
	}
	f.lastPush[cell] = time.Now()
	return e, nil
}

// join counts a waiting poll and starts the watch for the first.
func (f *cellFeed) join() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.watchers++
	if f.watchers == 1 {
		ctx, cancel := context.WithCancel(context.Background())
		f.stop = cancel
		go f.watch(ctx, f.rev)
	}
}

// leave uncounts a poll and stops the watch after the last.
func (f *cellFeed) leave() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.watchers--
	if f.watchers == 0 {
		f.stop()
	}
}

// watch compiles after every change of the store's revision until ctx ends.
func (f *cellFeed) watch(ctx context.Context, rev int64) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		next, err := f.store.WaitRevision(ctx, rev)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = f.compileAtLeast(ctx, next)
		}
		if err != nil {
			f.log.Warn("compile the cells' desired state: retrying", "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		f.mu.Lock()
		rev = f.rev
		f.mu.Unlock()
	}
}

// compileAtLeast makes sure the compiled states are of revision rev or
// later: a burst of changes is compiled once, by whichever caller gets
// there first. It brings the model forward by the store's changes since
// its revision and encodes the cells they affect; it rebuilds the model
// from a snapshot at the first call, when the change feed no longer
// reaches back, or on a change the model does not know (such as a
// setting's).
func (f *cellFeed) compileAtLeast(ctx context.Context, rev int64) error {
	if f.compiled() >= rev {
		return nil
	}
	f.compiling.Lock()
	defer f.compiling.Unlock()
	if f.compiled() >= rev {
		return nil // another caller compiled meanwhile
	}
	start := time.Now()
	if f.model != nil && !f.alwaysRebuild {
		done, err := f.applyChanges(ctx, start)
		if err != nil {
			f.model = nil // it may be ahead of the states: rebuild next time
		}
		if done || err != nil {
			return err
		}
	}
	err := f.rebuild(ctx, start)
	if err != nil {
		f.model = nil
	}
	return err
}

// applyChanges brings the model forward by the store's changes; done is
// false when only a rebuild can (the feed was pruned, the gap is too
// large, or a change is not one the model applies).
func (f *cellFeed) applyChanges(ctx context.Context, start time.Time) (done bool, err error) {
	ch, err := f.store.ChangesSince(ctx, f.model.Revision())
	switch {
	case errors.Is(err, store.ErrChangesPruned) || errors.Is(err, store.ErrTooManyChanges):
		f.log.Info("the change feed does not reach the model's revision: rebuilding it from a snapshot", "revision", f.model.Revision(), "err", err)
		return false, nil
	case err != nil:
		return false, err
	case len(ch.Other) > 0:
		f.log.Debug("changes the model does not apply: rebuilding it from a snapshot", "tables", ch.Other)
		return false, nil
	}
	cells, shared, err := f.model.Apply(compileDelta(&ch))
	if err != nil {
		f.model = nil
		f.log.Info("a change the model does not apply: rebuilding it from a snapshot", "err", err)
		return false, nil
	}
	f.mu.Lock()
	next := maps.Clone(f.cells)
	f.mu.Unlock()
	if next == nil {
		next = map[string]*feedEntry{}
	}
	changes := 0
	for _, guid := range cells {
		st, err := f.model.Cell(guid)
		if errors.Is(err, policy.ErrUnknownCell) {
			delete(next, guid)
			continue
		}
		if err != nil {
			return false, err
		}
		if f.put(next, guid, &st, ch.Revision) {
			changes++
		}
	}
	// The other cells' own parts are as they were: when the shared lists
	// changed (a route, an instance attached elsewhere), each takes the
	// new lists into its state and its encoding, O(1) per cell.
	if shared {
		own := make(map[string]bool, len(cells))
		for _, guid := range cells {
			own[guid] = true
		}
		for guid, e := range next {
			if own[guid] || e.st == nil {
				continue
			}
			st := *e.st
			f.model.Reshare(&st)
			if f.reshare(next, guid, &st, ch.Revision) {
				changes++
			}
		}
	}
	f.publish(ch.Revision, next, changes, len(cells), start)
	return true, nil
}

// rebuild builds the model from a snapshot and encodes every cell.
func (f *cellFeed) rebuild(ctx context.Context, start time.Time) error {
	f.model = nil
	snap, err := f.store.Snapshot(ctx, store.SnapshotFilter{})
	if err != nil {
		return err
	}
	in, err := f.compile(ctx, snap)
	if err != nil {
		return err
	}
	f.model = policy.NewModel(in)
	f.enc = newStateEncoder()
	f.rebuilds.Inc()
	next := map[string]*feedEntry{}
	f.mu.Lock()
	old := f.cells
	f.mu.Unlock()
	changes := 0
	for _, guid := range f.model.Cells() {
		st, err := f.model.Cell(guid)
		if err != nil {
			return err
		}
		if e := old[guid]; e != nil {
			next[guid] = e
		}
		if f.put(next, guid, &st, snap.Revision) {
			changes++
		}
	}
	f.publish(snap.Revision, next, changes, len(next), start)
	return nil
}

// put encodes st into cells[guid] unless its content is what the entry
// there has already (then the entry, and its revision, stay: its poll is
// not woken); it reports whether it changed.
func (f *cellFeed) put(cells map[string]*feedEntry, guid string, st *api.CellState, rev int64) bool {
	e, err := f.enc.encode(rev, st)
	if err != nil { // a state is plain data: it always encodes
		f.log.Error("encode a cell's state", "cell", guid, "err", err)
		return false
	}
	return f.keep(cells, guid, st, e)
}

// reshare is put for a state that differs from the entry's in cells[guid]
// at most by its shared lists (see policy.Model.Reshare): it reuses the
// entry's encoding of the cell's own parts.
func (f *cellFeed) reshare(cells map[string]*feedEntry, guid string, st *api.CellState, rev int64) bool {
	e, err := f.enc.reshare(cells[guid], rev, st)
	if err != nil { // a state is plain data: it always encodes
		f.log.Error("encode a cell's state", "cell", guid, "err", err)
		return false
	}
	return f.keep(cells, guid, st, e)
}

// keep makes e, the encoding of st, cells[guid], unless its content is
// the entry's there; it reports whether it did.
func (f *cellFeed) keep(cells map[string]*feedEntry, guid string, st *api.CellState, e *feedEntry) bool {
	old := cells[guid]
	if old != nil && old.sum == e.sum {
		return false
	}
	e.st = st
	if old != nil && old.st != nil {
		e.older = make([]keptState, 0, stateHistory)
		e.older = append(e.older, keptState{old.rev, old.sum, old.st})
		e.older = append(e.older, old.older[:min(len(old.older), stateHistory-1)]...)
	}
	cells[guid] = e
	return true
}

// publish makes cells the states at revision rev and wakes the polls.
func (f *cellFeed) publish(rev int64, cells map[string]*feedEntry, changes, compiled int, start time.Time) {
	f.mu.Lock()
	f.rev, f.cells = rev, cells
	for c := range f.lastPush {
		if cells[c] == nil {
			delete(f.lastPush, c) // the cell is gone
		}
	}
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
	f.compileSeconds.Observe(time.Since(start).Seconds())
	f.cellChanges.Add(float64(changes))
	f.cellsCompiled.Add(float64(compiled))
	f.log.Debug("compiled the cells' desired state", "revision", rev, "cells", len(cells), "compiled", compiled, "changed", changes, "took", time.Since(start))
}

// sent counts an answer to a poll: a delta or a whole state, of n bytes.
func (f *cellFeed) sent(delta bool, n int64) {
	kind := "state"
	if delta {
		kind = "delta"
	}
	f.answers.WithLabelValues(kind).Inc()
	f.answerBytes.WithLabelValues(kind).Add(float64(n))
}

func (f *cellFeed) compiled() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rev
}

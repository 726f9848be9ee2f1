package controller

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-c2c/trellis/internal/policy"
	"github.com/trellis-c2c/trellis/internal/store"
)

// cellFeed is what the cells' long polls wait on. One watcher (running
// while any cell polls) waits for the store's revision to move, reads one
// snapshot, compiles every cell's desired state once, and wakes the polls;
// a poll answers only when its own cell's state changed. So a change costs
// one snapshot and one compile, whatever the number of cells watching, and
// a cell whose state a change does not touch (an app with no instances, a
// policy to apps that run elsewhere, when their tags exist already) is not
// woken at all.
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

	mu       sync.Mutex
	rev      int64 // store revision of the last compiled snapshot (-1: none)
	cells    map[string]*feedEntry
	changed  chan struct{} // closed (and replaced) after each compile
	watchers int           // polls waiting: the watch runs while there are any
	stop     context.CancelFunc

	compileSeconds prometheus.Histogram
	cellChanges    prometheus.Counter
}

// feedEntry is one cell's compiled desired state.
type feedEntry struct {
	rev int64    // the cell's revision
	sum [32]byte // hash of the state without its revision
	// body is the state as JSON, in segments: the parts every cell shares
	// (the foundation's tagged apps, endpoints and routes) are encoded
	// once per compile and written to every cell's poll as they are.
	body [][]byte
}

// write sends e's state as the answer to a poll.
func (e *feedEntry) write(w io.Writer) error {
	for _, b := range e.body {
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}

func newCellFeed(st *store.Store, compile func(context.Context, store.Snapshot) (*policy.Snapshot, error), log *slog.Logger, reg prometheus.Registerer) *cellFeed {
	f := &cellFeed{store: st, compile: compile, log: log, rev: -1, changed: make(chan struct{}),
		compileSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "trellis_controller_cell_state_compile_seconds",
			Help:    "Time to read one snapshot of the store and compile every cell's desired state from it.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		cellChanges: prometheus.NewCounter(prometheus.CounterOpts{Name: "trellis_controller_cell_state_changes_total",
			Help: "Cells whose desired state a compile changed (each wakes that cell's poll)."}),
	}
	reg.MustRegister(f.compileSeconds, f.cellChanges)
	return f
}

// state returns cell's desired state compiled from the store as it is now
// or later; with after >= 0 it waits, at most wait, for one whose revision
// exceeds after, and otherwise returns the current one. A cell the store
// does not know is store.ErrNotFound.
func (f *cellFeed) state(ctx context.Context, cell string, after int64, wait time.Duration) (*feedEntry, error) {
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
		if after < 0 || e.rev > after {
			return e, nil
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

// compileAtLeast makes sure the compiled states come from a snapshot of
// revision rev or later: a burst of changes is compiled once, by whichever
// caller gets there first.
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
	snap, err := f.store.Snapshot(ctx, store.SnapshotFilter{})
	if err != nil {
		return err
	}
	in, err := f.compile(ctx, snap)
	if err != nil {
		return err
	}
	states := policy.Compile(in)
	f.mu.Lock()
	old := f.cells
	f.mu.Unlock()
	cells := make(map[string]*feedEntry, len(states))
	changes := 0
	enc := newStateEncoder()
	for guid, st := range states {
		e, err := enc.encode(snap.Revision, &st)
		if err != nil {
			return fmt.Errorf("encode the state of cell %s: %w", guid, err)
		}
		if old := old[guid]; old != nil && old.sum == e.sum {
			cells[guid] = old // unchanged: its poll is not woken
			continue
		}
		cells[guid] = e
		changes++
	}
	f.mu.Lock()
	f.rev, f.cells = snap.Revision, cells
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
	f.compileSeconds.Observe(time.Since(start).Seconds())
	f.cellChanges.Add(float64(changes))
	f.log.Debug("compiled the cells' desired state", "revision", snap.Revision, "cells", len(cells), "changed", changes, "took", time.Since(start))
	return nil
}

func (f *cellFeed) compiled() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rev
}

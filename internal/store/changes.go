package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
)

// The change feed keeps the latest ChangesKept changes; a reader further
// behind (ErrChangesPruned) or with more than MaxChanges to read
// (ErrTooManyChanges) reads a snapshot instead.
var (
	ChangesKept = 10000
	MaxChanges  = 5000
)

// pruneEvery is how many revisions apart writes prune the change feed.
const pruneEvery = 64

// Errors of ChangesSince: the feed does not reach back far enough, or the
// gap is larger than it is worth reading change by change.
var (
	ErrChangesPruned  = errors.New("the change feed no longer reaches back to that revision")
	ErrTooManyChanges = errors.New("too many changes since that revision")
)

// Changes is what changed in the store after revision From up to
// Revision: for each table the compile reads, the rows changed, as they
// are at Revision, and the keys of those deleted since.
type Changes struct {
	From, Revision int64

	Cells     []Cell
	Spaces    []Space
	Apps      []App
	Instances []Instance
	Tags      []Tag // assigned tags among those changed
	Policies  []Policy
	PolicyIDs []int64 // of Policies, in order
	Domains   []Domain
	Routes    []Route // routes changed, or whose destinations changed

	// Deleted are the keys of changed rows that no longer exist, by table
	// (for tags: the tags no longer assigned; for policies: ids).
	Deleted map[string][]string
	// Other are the tables changed whose rows Changes does not carry (such
	// as settings, and tables added to changeTriggers later): a reader
	// that does not know what they mean reads a snapshot.
	Other []string
}

// Empty reports whether nothing changed.
func (c *Changes) Empty() bool {
	return len(c.Cells)+len(c.Spaces)+len(c.Apps)+len(c.Instances)+len(c.Tags)+len(c.Policies)+len(c.Domains)+
		len(c.Routes)+len(c.Deleted)+len(c.Other) == 0
}

// ChangesSince returns what changed after revision rev, read in one
// snapshot of the store (as Snapshot does): ErrChangesPruned if the feed no
// longer reaches back to rev (or rev is ahead of the store),
// ErrTooManyChanges if more than MaxChanges rows changed since.
func (s *Store) ChangesSince(ctx context.Context, rev int64) (Changes, error) {
	c, err := s.changesSince(ctx, rev)
	if err != nil {
		return Changes{}, fmt.Errorf("read changes since revision %d: %w", rev, err)
	}
	return c, nil
}

func (s *Store) changesSince(ctx context.Context, rev int64) (Changes, error) {
	opts := &sql.TxOptions{ReadOnly: true}
	if s.pg {
		opts.Isolation = sql.LevelRepeatableRead
	}
	tx, err := s.db.BeginTx(ctx, opts)
	if err != nil {
		return Changes{}, err
	}
	defer tx.Rollback() // read-only
	r := s.tx(tx)
	c := Changes{From: rev}
	var from int64
	if err := r.queryRow(ctx, "SELECT value, changes_from FROM revision WHERE id = 1").Scan(&c.Revision, &from); err != nil {
		return Changes{}, fmt.Errorf("read revision: %w", err)
	}
	if rev < from || rev > c.Revision {
		return Changes{}, ErrChangesPruned
	}
	if rev == c.Revision {
		return c, nil
	}
	var n int
	if err := r.queryRow(ctx, "SELECT COUNT(*) FROM changes WHERE revision > ?", rev).Scan(&n); err != nil {
		return Changes{}, err
	}
	if n > MaxChanges {
		return Changes{}, fmt.Errorf("%d changes: %w", n, ErrTooManyChanges)
	}
	rows, err := r.query(ctx, "SELECT DISTINCT tbl, key1 FROM changes WHERE revision > ?", rev)
	if err != nil {
		return Changes{}, err
	}
	changed := map[string][]string{}
	for rows.Next() {
		var tbl, key string
		if err := rows.Scan(&tbl, &key); err != nil {
			rows.Close()
			return Changes{}, err
		}
		if tbl == "route_destinations" {
			tbl = "routes" // key1 is the route
		}
		changed[tbl] = append(changed[tbl], key)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return Changes{}, err
	}
	c.Deleted = map[string][]string{}
	gone := func(tbl string, found []string) {
		for _, k := range changed[tbl] {
			if !slices.Contains(found, k) {
				c.Deleted[tbl] = append(c.Deleted[tbl], k)
			}
		}
	}
	for tbl, keys := range changed {
		slices.Sort(keys)
		keys = slices.Compact(keys)
		changed[tbl] = keys
		var found []string
		switch tbl {
		case "cells":
			if c.Cells, err = cells(ctx, r, CellFilter{GUIDs: keys}); err != nil {
				return Changes{}, err
			}
			for _, x := range c.Cells {
				found = append(found, x.GUID)
			}
		case "spaces":
			if c.Spaces, err = spaces(ctx, r, SpaceFilter{GUIDs: keys}); err != nil {
				return Changes{}, err
			}
			for _, x := range c.Spaces {
				found = append(found, x.GUID)
			}
		case "apps":
			if c.Apps, err = apps(ctx, r, AppFilter{GUIDs: keys}); err != nil {
				return Changes{}, err
			}
			for _, x := range c.Apps {
				found = append(found, x.GUID)
			}
		case "instances":
			if c.Instances, err = instances(ctx, r, InstanceFilter{GUIDs: keys}); err != nil {
				return Changes{}, err
			}
			for _, x := range c.Instances {
				found = append(found, x.GUID)
			}
		case "tags":
			ids, err := ints(keys)
			if err != nil {
				return Changes{}, err
			}
			if c.Tags, err = tagsIn(ctx, r, ids); err != nil {
				return Changes{}, err
			}
			for _, x := range c.Tags {
				found = append(found, strconv.Itoa(int(x.Tag)))
			}
		case "policies":
			ids, err := ints(keys)
			if err != nil {
				return Changes{}, err
			}
			if c.Policies, c.PolicyIDs, err = policiesWithIDs(ctx, r, PolicyFilter{}, ids); err != nil {
				return Changes{}, err
			}
			for _, id := range c.PolicyIDs {
				found = append(found, strconv.FormatInt(id, 10))
			}
		case "domains":
			if c.Domains, err = domains(ctx, r, DomainFilter{GUIDs: keys}); err != nil {
				return Changes{}, err
			}
			for _, x := range c.Domains {
				found = append(found, x.GUID)
			}
		case "routes":
			if c.Routes, err = routes(ctx, r, RouteFilter{GUIDs: keys}); err != nil {
				return Changes{}, err
			}
			for _, x := range c.Routes {
				found = append(found, x.GUID)
			}
		default:
			c.Other = append(c.Other, tbl)
			continue
		}
		gone(tbl, found)
	}
	slices.Sort(c.Other)
	if len(c.Deleted) == 0 {
		c.Deleted = nil
	}
	return c, nil
}

// ints parses keys as integers.
func ints(keys []string) ([]int64, error) {
	out := make([]int64, len(keys))
	for i, k := range keys {
		v, err := strconv.ParseInt(k, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("change key %q: %w", k, err)
		}
		out[i] = v
	}
	return out, nil
}

// pruneChanges deletes all but the latest ChangesKept changes, and records
// the revision after which the feed is still complete.
func pruneChanges(ctx context.Context, r runner) error {
	var last int64
	if err := r.queryRow(ctx, "SELECT COALESCE(MAX(seq), 0) FROM changes").Scan(&last); err != nil {
		return err
	}
	cut := last - int64(ChangesKept)
	if cut <= 0 {
		return nil
	}
	var upTo sql.NullInt64
	if err := r.queryRow(ctx, "SELECT MAX(revision) FROM changes WHERE seq <= ?", cut).Scan(&upTo); err != nil {
		return err
	}
	if !upTo.Valid {
		return nil // pruned already
	}
	if _, err := r.exec(ctx, "UPDATE revision SET changes_from = ? WHERE id = 1 AND changes_from < ?", upTo.Int64, upTo.Int64); err != nil {
		return err
	}
	_, err := r.exec(ctx, "DELETE FROM changes WHERE seq <= ?", cut)
	return err
}

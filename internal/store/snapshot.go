package store

import (
	"context"
	"database/sql"
	"fmt"
)

// Snapshot is what cells' desired states are compiled from, read in one
// read-only transaction: every row, and Revision, as of one moment.
type Snapshot struct {
	Revision  int64
	Cells     []Cell     // ordered by name
	Spaces    []Space    // ordered by name
	Apps      []App      // ordered by name
	Instances []Instance // ordered by app, index
	Tags      []Tag      // ordered by tag
	Policies  []Policy   // in the order they were created
	// PolicyIDs are the policies' ids (in the order of Policies): the keys
	// of their changes in ChangesSince.
	PolicyIDs []int64
	Domains   []Domain // ordered by name
	Routes    []Route  // ordered by domain name and host
	// Settings are the foundation-wide settings (Setting), by key.
	Settings map[string]string
	// InstanceCA is the stored instance CA, if HasInstanceCA.
	InstanceCA    InstanceCA
	HasInstanceCA bool
	// SecurityGroups are the application security groups, ordered by name.
	SecurityGroups []SecurityGroup
}

// SnapshotFilter narrows a Snapshot to what some cells' states need.
type SnapshotFilter struct {
	// Cells, when set, keeps only the policies whose destination app has
	// an instance attached (running, with an address) on one of these
	// cells: no other policy allows anything there. All rows of every
	// other kind are read.
	Cells []string
}

// Snapshot reads the store in one transaction: on PostgreSQL at
// REPEATABLE READ (one snapshot for every statement), on SQLite a deferred
// read transaction (WAL: one snapshot from its first read, and no write
// lock). So the rows agree with each other and with Revision.
func (s *Store) Snapshot(ctx context.Context, f SnapshotFilter) (Snapshot, error) {
	snap, err := s.snapshot(ctx, f)
	if err != nil {
		return Snapshot{}, fmt.Errorf("read snapshot: %w", err)
	}
	return snap, nil
}

func (s *Store) snapshot(ctx context.Context, f SnapshotFilter) (Snapshot, error) {
	opts := &sql.TxOptions{ReadOnly: true}
	if s.pg {
		opts.Isolation = sql.LevelRepeatableRead
	}
	tx, err := s.db.BeginTx(ctx, opts)
	if err != nil {
		return Snapshot{}, err
	}
	defer tx.Rollback() // read-only: nothing to commit
	r := s.tx(tx)
	var snap Snapshot
	if err := r.queryRow(ctx, "SELECT value FROM revision WHERE id = 1").Scan(&snap.Revision); err != nil {
		return Snapshot{}, fmt.Errorf("read revision: %w", err)
	}
	if snap.Cells, err = cells(ctx, r, CellFilter{}); err != nil {
		return Snapshot{}, err
	}
	if snap.Spaces, err = spaces(ctx, r, SpaceFilter{}); err != nil {
		return Snapshot{}, err
	}
	if snap.Apps, err = apps(ctx, r, AppFilter{}); err != nil {
		return Snapshot{}, err
	}
	if snap.Instances, err = instances(ctx, r, InstanceFilter{}); err != nil {
		return Snapshot{}, err
	}
	if snap.Tags, err = tags(ctx, r); err != nil {
		return Snapshot{}, err
	}
	if snap.Domains, err = domains(ctx, r, DomainFilter{}); err != nil {
		return Snapshot{}, err
	}
	if snap.Routes, err = routes(ctx, r, RouteFilter{}); err != nil {
		return Snapshot{}, fmt.Errorf("list routes: %w", err)
	}
	pf := PolicyFilter{}
	if len(f.Cells) > 0 {
		pf.DestIDs = attachedApps(snap.Instances, f.Cells)
	}
	if len(f.Cells) == 0 || len(pf.DestIDs) > 0 {
		if snap.Policies, snap.PolicyIDs, err = policiesWithIDs(ctx, r, pf, nil); err != nil {
			return Snapshot{}, err
		}
	}
	if snap.SecurityGroups, err = securityGroups(ctx, r, SecurityGroupFilter{}); err != nil {
		return Snapshot{}, err
	}
	if snap.Settings, err = settings(ctx, r); err != nil {
		return Snapshot{}, err
	}
	snap.InstanceCA, snap.HasInstanceCA, err = instanceCAFrom(snap.Settings)
	if err != nil {
		return Snapshot{}, fmt.Errorf("read instance CA: %w", err)
	}
	return snap, nil
}

// attachedApps returns the apps with an instance attached on one of cells.
func attachedApps(ins []Instance, cells []string) []string {
	on := make(map[string]bool, len(cells))
	for _, c := range cells {
		on[c] = true
	}
	seen := map[string]bool{}
	var out []string
	for _, in := range ins {
		if on[in.CellGUID] && in.State == InstanceRunning && in.IP.IsValid() && !seen[in.AppGUID] {
			seen[in.AppGUID] = true
			out = append(out, in.AppGUID)
		}
	}
	return out
}

// settings reads every foundation-wide setting.
func settings(ctx context.Context, r runner) (map[string]string, error) {
	rows, err := r.query(ctx, "SELECT key, value FROM settings")
	if err != nil {
		return nil, fmt.Errorf("read settings: %w", err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return nil, fmt.Errorf("read settings: %w", err)
		}
		out[k] = v
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read settings: %w", err)
	}
	return out, nil
}

package store

import (
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/trellis-c2c/trellis/internal/ipam"
)

// Errors of cells and instances.
var (
	ErrBadJoinToken = errors.New("join token is unknown, used or expired")
	ErrOverlayFull  = errors.New("overlay full")
)

// Cell is a host running an agent, with its overlay lease.
type Cell struct {
	GUID, Name string
	UnderlayIP netip.Addr
	Subnet     netip.Prefix
	CreatedAt  time.Time
	UpdatedAt  time.Time
	LastSeen   time.Time
	// The cell's WireGuard public key (base64; "" until registered), its
	// port, the generation the key answers and when it was registered,
	// and the generation the controller wants (see wireguard.go).
	WireGuardKey           string
	WireGuardPort          int
	WireGuardKeyGeneration int64
	WireGuardKeyAt         time.Time
	KeyGeneration          int64
}

// Instance states.
const (
	InstanceDown    = "DOWN"    // scheduled, not attached to the network (yet)
	InstanceRunning = "RUNNING" // attached: has an overlay address
)

// Instance is one app instance: managed (scheduled by the controller, run by
// its cell's agent) or registered by a runtime through CNI.
type Instance struct {
	GUID, AppGUID string
	Index         int
	Managed       bool
	CellGUID      string // "" while a managed instance waits for a cell
	IP            netip.Addr
	ContainerID   string
	State         string
	CreatedAt     time.Time
	UpdatedAt     time.Time
}

// CellFilter and InstanceFilter select rows, as the other filters do.
type (
	CellFilter     struct{ GUIDs, Names []string }
	InstanceFilter struct{ GUIDs, AppGUIDs, CellGUIDs []string }
)

// OverlaySettings records pool as the overlay of this store on first use and
// checks it on every later one: controllers sharing a database must agree,
// and a lease made under one overlay means nothing under another.
func (s *Store) OverlaySettings(ctx context.Context, pool ipam.Pool) error {
	want := fmt.Sprintf("%s /%d", pool.Overlay, pool.SubnetLen)
	var have string
	err := s.r().queryRow(ctx, "SELECT value FROM settings WHERE key = 'overlay'").Scan(&have)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		_, err = s.r().exec(ctx, "INSERT INTO settings (key, value) VALUES ('overlay', ?) ON CONFLICT DO NOTHING", want)
		if err != nil {
			return fmt.Errorf("record overlay settings: %w", err)
		}
		return s.OverlaySettings(ctx, pool) // another controller may have won
	case err != nil:
		return fmt.Errorf("read overlay settings: %w", err)
	case have != want:
		return fmt.Errorf("overlay %s does not match the store's %s: every controller of a foundation must use the same --overlay-cidr and --cell-subnet-prefix", want, have)
	}
	return nil
}

// CreateJoinToken stores the hash of a one-time join token valid until expires.
func (s *Store) CreateJoinToken(ctx context.Context, hash []byte, expires time.Time) error {
	return s.write(ctx, func(r runner) (bool, error) {
		_, err := r.exec(ctx, "INSERT INTO join_tokens (hash, created_at, expires_at) VALUES (?, ?, ?)",
			hex.EncodeToString(hash), micros(now()), micros(expires))
		return err == nil, err
	})
}

// JoinCell consumes a join token and registers a cell with a fresh subnet
// from pool, in one transaction: a bad token, a taken name or address, or a
// full overlay changes nothing (not even the token). Managed instances that
// waited for a cell are placed.
func (s *Store) JoinCell(ctx context.Context, tokenHash []byte, name string, underlay netip.Addr, pool ipam.Pool) (Cell, error) {
	t := now()
	c := Cell{GUID: newGUID(), Name: name, UnderlayIP: underlay, CreatedAt: t, UpdatedAt: t, LastSeen: t, KeyGeneration: 1}
	err := s.write(ctx, func(r runner) (bool, error) {
		n, err := r.execCount(ctx, "DELETE FROM join_tokens WHERE hash = ? AND expires_at > ?", hex.EncodeToString(tokenHash), micros(t))
		if err != nil {
			return false, err
		}
		if n == 0 {
			return false, ErrBadJoinToken
		}
		if ok, err := r.exists(ctx, "SELECT 1 FROM cells WHERE name = ?", name); err != nil || ok {
			return false, errors.Join(err, fmt.Errorf("cell name %q: %w", name, ErrConflict))
		}
		if ok, err := r.exists(ctx, "SELECT 1 FROM cells WHERE underlay_ip = ?", underlay.String()); err != nil || ok {
			return false, errors.Join(err, fmt.Errorf("underlay address %s: %w", underlay, ErrConflict))
		}
		used, err := r.stringSet(ctx, "SELECT subnet FROM cells")
		if err != nil {
			return false, err
		}
		taken := map[netip.Prefix]bool{}
		for sub := range used {
			if p, err := netip.ParsePrefix(sub); err == nil {
				taken[p] = true
			}
		}
		c.Subnet, err = pool.FirstFree(taken)
		if err != nil {
			return false, fmt.Errorf("%w: %w", ErrOverlayFull, err)
		}
		if _, err := r.exec(ctx, "INSERT INTO cells (guid, name, underlay_ip, subnet, created_at, updated_at, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?)",
			c.GUID, name, underlay.String(), c.Subnet.String(), micros(t), micros(t), micros(t)); err != nil {
			return false, err
		}
		return true, placeWaiting(ctx, r)
	})
	if err != nil {
		return Cell{}, fmt.Errorf("join cell: %w", err)
	}
	return c, nil
}

// Cells lists cells, ordered by name.
func (s *Store) Cells(ctx context.Context, f CellFilter) ([]Cell, error) {
	return cells(ctx, s.r(), f)
}

func cells(ctx context.Context, r runner, f CellFilter) ([]Cell, error) {
	w := where{r: r}
	w.in("guid", f.GUIDs)
	w.in("name", f.Names)
	rows, err := w.r.query(ctx, "SELECT guid, name, underlay_ip, subnet, created_at, updated_at, last_seen, "+
		"wireguard_key, wireguard_port, wireguard_key_generation, wireguard_key_at, key_generation FROM cells"+w.String()+" ORDER BY name"+r.bytewise(), w.args...)
	if err != nil {
		return nil, fmt.Errorf("list cells: %w", err)
	}
	defer rows.Close()
	var out []Cell
	for rows.Next() {
		var c Cell
		var ip, subnet string
		var created, updated, seen, keyAt int64
		if err := rows.Scan(&c.GUID, &c.Name, &ip, &subnet, &created, &updated, &seen,
			&c.WireGuardKey, &c.WireGuardPort, &c.WireGuardKeyGeneration, &keyAt, &c.KeyGeneration); err != nil {
			return nil, fmt.Errorf("list cells: %w", err)
		}
		c.UnderlayIP, _ = netip.ParseAddr(ip)
		c.Subnet, _ = netip.ParsePrefix(subnet)
		c.CreatedAt, c.UpdatedAt, c.LastSeen = fromMicros(created), fromMicros(updated), fromMicros(seen)
		if keyAt != 0 {
			c.WireGuardKeyAt = fromMicros(keyAt)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// TouchCell records that a cell was heard from. It does not bump the
// revision: heartbeats must not wake every watcher.
func (s *Store) TouchCell(ctx context.Context, guid string) error {
	_, err := s.r().exec(ctx, "UPDATE cells SET last_seen = ? WHERE guid = ?", micros(now()), guid)
	return err
}

// DeleteCell removes a cell and frees its lease: instances a runtime
// registered there are gone, managed ones are placed on other cells.
func (s *Store) DeleteCell(ctx context.Context, guid string) error {
	err := s.write(ctx, func(r runner) (bool, error) {
		if ok, err := r.exists(ctx, "SELECT 1 FROM cells WHERE guid = ?", guid); err != nil || !ok {
			return false, errors.Join(err, fmt.Errorf("cell %s: %w", guid, ErrNotFound))
		}
		if _, err := r.exec(ctx, "DELETE FROM instances WHERE cell_guid = ? AND NOT managed", guid); err != nil {
			return false, err
		}
		if _, err := r.exec(ctx, "UPDATE instances SET cell_guid = NULL, ip = NULL, container_id = NULL, state = ?, updated_at = ? WHERE cell_guid = ?",
			InstanceDown, micros(now()), guid); err != nil {
			return false, err
		}
		if _, err := r.exec(ctx, "UPDATE apps SET cell_guid = NULL WHERE cell_guid = ?", guid); err != nil {
			return false, err
		}
		if _, err := r.exec(ctx, "DELETE FROM cells WHERE guid = ?", guid); err != nil {
			return false, err
		}
		return true, placeWaiting(ctx, r)
	})
	if err != nil {
		return fmt.Errorf("delete cell: %w", err)
	}
	return nil
}

// AppUpdate changes an app's process settings; nil fields stay as they are.
type AppUpdate struct {
	State     *string
	Instances *int
	Command   *[]string
	Env       *map[string]string
	CellGUID  *string // "" unpins
}

// UpdateApp applies u and reschedules the app's managed instances: a
// STARTED app has one per index 0..Instances-1, a STOPPED app none.
func (s *Store) UpdateApp(ctx context.Context, guid string, u AppUpdate) (App, error) {
	err := s.write(ctx, func(r runner) (bool, error) {
		if ok, err := r.exists(ctx, "SELECT 1 FROM apps WHERE guid = ?", guid); err != nil || !ok {
			return false, errors.Join(err, fmt.Errorf("app %s: %w", guid, ErrNotFound))
		}
		t := micros(now())
		set := func(col string, v any) error {
			_, err := r.exec(ctx, "UPDATE apps SET "+col+" = ?, updated_at = ? WHERE guid = ?", v, t, guid)
			return err
		}
		var err error
		if u.State != nil {
			if *u.State != AppStarted && *u.State != AppStopped {
				return false, fmt.Errorf("state %q: must be %s or %s", *u.State, AppStarted, AppStopped)
			}
			err = errors.Join(err, set("state", *u.State))
		}
		if u.Instances != nil {
			if *u.Instances < 0 {
				return false, fmt.Errorf("instances %d: must not be negative", *u.Instances)
			}
			err = errors.Join(err, set("instances", *u.Instances))
		}
		if u.Command != nil {
			b, _ := json.Marshal(*u.Command)
			err = errors.Join(err, set("command", string(b)))
		}
		if u.Env != nil {
			env := *u.Env
			if env == nil {
				env = map[string]string{}
			}
			b, _ := json.Marshal(env)
			err = errors.Join(err, set("env", string(b)))
		}
		if u.CellGUID != nil {
			var cell any
			if *u.CellGUID != "" {
				if ok, err := r.exists(ctx, "SELECT 1 FROM cells WHERE guid = ?", *u.CellGUID); err != nil || !ok {
					return false, errors.Join(err, fmt.Errorf("cell %s: %w", *u.CellGUID, ErrNotFound))
				}
				cell = *u.CellGUID
			}
			err = errors.Join(err, set("cell_guid", cell))
		}
		if err != nil {
			return false, err
		}
		return true, schedule(ctx, r, guid)
	})
	if err != nil {
		return App{}, fmt.Errorf("update app: %w", err)
	}
	apps, err := s.Apps(ctx, AppFilter{GUIDs: []string{guid}})
	if err != nil || len(apps) == 0 {
		return App{}, errors.Join(err, fmt.Errorf("update app: app %s: %w", guid, ErrNotFound))
	}
	return apps[0], nil
}

// schedule makes an app's managed instances match its state and count, and
// places them: on the app's pinned cell, else on the cell with the fewest
// managed instances. Instances of a pinned app on another cell are moved.
func schedule(ctx context.Context, r runner, app string) error {
	var state, pinned string
	var count int
	if err := r.queryRow(ctx, "SELECT state, instances, COALESCE(cell_guid, '') FROM apps WHERE guid = ?", app).Scan(&state, &count, &pinned); err != nil {
		return err
	}
	if state != AppStarted {
		count = 0
	}
	t := micros(now())
	if _, err := r.exec(ctx, "DELETE FROM instances WHERE app_guid = ? AND managed AND idx >= ?", app, count); err != nil {
		return err
	}
	if pinned != "" {
		if _, err := r.exec(ctx, "UPDATE instances SET cell_guid = NULL, ip = NULL, container_id = NULL, state = ?, updated_at = ? WHERE app_guid = ? AND managed AND cell_guid IS NOT NULL AND cell_guid <> ?",
			InstanceDown, t, app, pinned); err != nil {
			return err
		}
	}
	have, err := r.stringSet(ctx, "SELECT CAST(idx AS TEXT) FROM instances WHERE app_guid = ? AND managed", app)
	if err != nil {
		return err
	}
	for i := 0; i < count; i++ {
		if have[fmt.Sprint(i)] {
			continue
		}
		if _, err := r.exec(ctx, "INSERT INTO instances (guid, app_guid, idx, managed, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
			newGUID(), app, i, true, InstanceDown, t, t); err != nil {
			return err
		}
	}
	return placeWaiting(ctx, r)
}

// placeWaiting gives a cell to every managed instance that has none.
func placeWaiting(ctx context.Context, r runner) error {
	rows, err := r.query(ctx, `SELECT i.guid, COALESCE(a.cell_guid, '') FROM instances i JOIN apps a ON a.guid = i.app_guid
		WHERE i.managed AND i.cell_guid IS NULL ORDER BY i.app_guid, i.idx`)
	if err != nil {
		return err
	}
	type waiting struct{ guid, pinned string }
	var ws []waiting
	for rows.Next() {
		var w waiting
		if err := rows.Scan(&w.guid, &w.pinned); err != nil {
			rows.Close()
			return err
		}
		ws = append(ws, w)
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(ws) == 0 {
		return err
	}
	load := map[string]int{}
	cells, err := r.stringSet(ctx, "SELECT guid FROM cells")
	if err != nil {
		return err
	}
	for c := range cells {
		load[c] = 0
	}
	if len(load) == 0 {
		return nil
	}
	rows, err = r.query(ctx, "SELECT cell_guid, COUNT(*) FROM instances WHERE managed AND cell_guid IS NOT NULL GROUP BY cell_guid")
	if err != nil {
		return err
	}
	for rows.Next() {
		var c string
		var n int
		if err := rows.Scan(&c, &n); err != nil {
			rows.Close()
			return err
		}
		load[c] = n
	}
	rows.Close()
	names := make([]string, 0, len(load))
	for c := range load {
		names = append(names, c)
	}
	sort.Strings(names)
	t := micros(now())
	for _, w := range ws {
		cell := w.pinned
		if cell == "" {
			for _, c := range names {
				if cell == "" || load[c] < load[cell] {
					cell = c
				}
			}
		}
		load[cell]++
		if _, err := r.exec(ctx, "UPDATE instances SET cell_guid = ?, updated_at = ? WHERE guid = ?", cell, t, w.guid); err != nil {
			return err
		}
	}
	return nil
}

// Instances lists instances, ordered by app and index.
func (s *Store) Instances(ctx context.Context, f InstanceFilter) ([]Instance, error) {
	return instances(ctx, s.r(), f)
}

func instances(ctx context.Context, r runner, f InstanceFilter) ([]Instance, error) {
	w := where{r: r}
	w.in("guid", f.GUIDs)
	w.in("app_guid", f.AppGUIDs)
	w.in("cell_guid", f.CellGUIDs)
	rows, err := w.r.query(ctx, `SELECT guid, app_guid, idx, managed, COALESCE(cell_guid, ''), COALESCE(ip, ''), COALESCE(container_id, ''), state, created_at, updated_at
		FROM instances`+w.String()+" ORDER BY app_guid"+r.bytewise()+", idx, guid"+r.bytewise(), w.args...)
	if err != nil {
		return nil, fmt.Errorf("list instances: %w", err)
	}
	defer rows.Close()
	var out []Instance
	for rows.Next() {
		var in Instance
		var ip string
		var created, updated int64
		if err := rows.Scan(&in.GUID, &in.AppGUID, &in.Index, &in.Managed, &in.CellGUID, &ip, &in.ContainerID, &in.State, &created, &updated); err != nil {
			return nil, fmt.Errorf("list instances: %w", err)
		}
		in.IP, _ = netip.ParseAddr(ip)
		in.CreatedAt, in.UpdatedAt = fromMicros(created), fromMicros(updated)
		out = append(out, in)
	}
	return out, rows.Err()
}

// RegisterInstance records that an instance is attached on cell with an
// overlay address. A managed instance must be scheduled on that cell; any
// other is created (its app must exist). Registering the same attachment
// again is a no-op. It fails with ErrConflict if another instance holds the
// address on cell, or the instance is on another cell.
func (s *Store) RegisterInstance(ctx context.Context, cell string, in Instance) error {
	err := s.write(ctx, func(r runner) (bool, error) {
		var managed bool
		var at, ip, container, state string
		err := r.queryRow(ctx, "SELECT managed, COALESCE(cell_guid, ''), COALESCE(ip, ''), COALESCE(container_id, ''), state FROM instances WHERE guid = ?", in.GUID).
			Scan(&managed, &at, &ip, &container, &state)
		t := micros(now())
		if err == nil || errors.Is(err, sql.ErrNoRows) {
			var holder string
			herr := r.queryRow(ctx, "SELECT guid FROM instances WHERE cell_guid = ? AND ip = ? AND guid <> ?", cell, in.IP.String(), in.GUID).Scan(&holder)
			if herr == nil {
				return false, fmt.Errorf("ip %s is already used by instance %s on this cell: %w", in.IP, holder, ErrConflict)
			}
			if !errors.Is(herr, sql.ErrNoRows) {
				return false, herr
			}
		}
		switch {
		case errors.Is(err, sql.ErrNoRows):
			if ok, err := r.exists(ctx, "SELECT 1 FROM apps WHERE guid = ?", in.AppGUID); err != nil || !ok {
				return false, errors.Join(err, fmt.Errorf("app %s: %w", in.AppGUID, ErrAppNotFound))
			}
			_, err := r.exec(ctx, "INSERT INTO instances (guid, app_guid, idx, managed, cell_guid, ip, container_id, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
				in.GUID, in.AppGUID, in.Index, false, cell, in.IP.String(), in.ContainerID, InstanceRunning, t, t)
			return true, err
		case err != nil:
			return false, err
		case at != cell:
			return false, fmt.Errorf("instance %s is not on this cell: %w", in.GUID, ErrConflict)
		case ip == in.IP.String() && container == in.ContainerID && state == InstanceRunning:
			return false, nil
		}
		_, err = r.exec(ctx, "UPDATE instances SET ip = ?, container_id = ?, state = ?, updated_at = ? WHERE guid = ?",
			in.IP.String(), in.ContainerID, InstanceRunning, t, in.GUID)
		return true, err
	})
	if err != nil {
		return fmt.Errorf("register instance: %w", err)
	}
	return nil
}

// DeregisterInstance records that an instance's container left the network
// of cell: a managed instance goes DOWN (its agent may start it again), any
// other is deleted. Unknown instances are fine (idempotent).
func (s *Store) DeregisterInstance(ctx context.Context, cell, guid string) error {
	err := s.write(ctx, func(r runner) (bool, error) {
		n, err := r.execCount(ctx, "DELETE FROM instances WHERE guid = ? AND cell_guid = ? AND NOT managed", guid, cell)
		if err != nil || n > 0 {
			return n > 0, err
		}
		n, err = r.execCount(ctx, "UPDATE instances SET ip = NULL, container_id = NULL, state = ?, updated_at = ? WHERE guid = ? AND cell_guid = ? AND state <> ?",
			InstanceDown, micros(now()), guid, cell, InstanceDown)
		return n > 0, err
	})
	if err != nil {
		return fmt.Errorf("deregister instance: %w", err)
	}
	return nil
}

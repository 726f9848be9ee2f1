package store

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/ipam"
)

// testKey is a random WireGuard-shaped public key (32 bytes, base64).
func testKey() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

func cellByName(t *testing.T, s *Store, name string) Cell {
	t.Helper()
	cs := must(s.Cells(t.Context(), CellFilter{Names: []string{name}}))(t)
	if len(cs) != 1 {
		t.Fatalf("cell %s: %d found", name, len(cs))
	}
	return cs[0]
}

func storeRevision(t *testing.T, s *Store) int64 {
	t.Helper()
	var rev int64
	if err := s.r().queryRow(t.Context(), "SELECT value FROM revision WHERE id = 1").Scan(&rev); err != nil {
		t.Fatal(err)
	}
	return rev
}

// TestCellKeys registers, validates and rotates cells' WireGuard keys, and
// sees every change in the change feed.
func TestCellKeys(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		pool, _ := ipam.NewPool(ipam.DefaultOverlay, 24)
		c1 := mustJoin(t, s, pool, "c1", "198.51.100.1")
		mustJoin(t, s, pool, "c2", "198.51.100.2")
		if got := cellByName(t, s, "c1"); got.KeyGeneration != 1 || got.WireGuardKey != "" || got.WireGuardKeyGeneration != 0 || c1.KeyGeneration != 1 {
			t.Fatalf("a new cell = %+v, want key generation 1 wanted, no key", got)
		}

		// Bad input changes nothing and names the field.
		rev := storeRevision(t, s)
		zero := base64.StdEncoding.EncodeToString(make([]byte, 32))
		short := base64.StdEncoding.EncodeToString(make([]byte, 31))
		for _, bad := range []struct {
			k    CellKey
			want string
		}{
			{CellKey{"", 51820, 1}, "public_key: required"},
			{CellKey{"not base64!", 51820, 1}, "public_key: not standard base64"},
			{CellKey{short, 51820, 1}, "public_key: 31 bytes"},
			{CellKey{zero, 51820, 1}, "public_key: all zero"},
			{CellKey{testKey(), 0, 1}, "listen_port: 0"},
			{CellKey{testKey(), 65536, 1}, "listen_port: 65536"},
			{CellKey{testKey(), 51820, 0}, "generation: 0"},
		} {
			err := s.RegisterCellKey(ctx, c1.GUID, bad.k)
			if err == nil || !strings.Contains(err.Error(), bad.want) {
				t.Errorf("RegisterCellKey(%+v) = %v, want an error with %q", bad.k, err, bad.want)
			}
		}
		if err := s.RegisterCellKey(ctx, c1.GUID, CellKey{testKey(), 51820, 2}); !errors.Is(err, ErrKeyGeneration) || !strings.Contains(err.Error(), "newer") {
			t.Errorf("a generation not asked for = %v, want ErrKeyGeneration (newer)", err)
		}
		if err := s.RegisterCellKey(ctx, "no-such-cell", CellKey{testKey(), 51820, 1}); !errors.Is(err, ErrNotFound) {
			t.Errorf("an unknown cell = %v, want ErrNotFound", err)
		}
		if got := storeRevision(t, s); got != rev {
			t.Errorf("refused registrations moved the revision %d → %d", rev, got)
		}
		if got := cellByName(t, s, "c1"); got.WireGuardKey != "" {
			t.Errorf("refused registrations left a key: %+v", got)
		}

		// A registration is a change of the cell; the same again is none.
		k1 := testKey()
		before := time.Now().Add(-time.Second)
		if err := s.RegisterCellKey(ctx, c1.GUID, CellKey{k1, 51820, 1}); err != nil {
			t.Fatal(err)
		}
		ch := must(s.ChangesSince(ctx, rev))(t)
		if len(ch.Cells) != 1 || ch.Cells[0].WireGuardKey != k1 || ch.Cells[0].WireGuardPort != 51820 || len(ch.Other) != 0 {
			t.Errorf("changes of a key registration = %+v, want c1 with its key", ch)
		}
		got := cellByName(t, s, "c1")
		if got.WireGuardKeyGeneration != 1 || got.WireGuardKeyAt.Before(before) {
			t.Errorf("registered = %+v, want generation 1 at about now", got)
		}
		rev = storeRevision(t, s)
		if err := s.RegisterCellKey(ctx, c1.GUID, CellKey{k1, 51820, 1}); err != nil || storeRevision(t, s) != rev {
			t.Errorf("the same registration again = %v, revision %d → %d; want nil and no change", err, rev, storeRevision(t, s))
		}
		// No two cells share a key.
		c2 := cellByName(t, s, "c2")
		if err := s.RegisterCellKey(ctx, c2.GUID, CellKey{k1, 51820, 1}); !errors.Is(err, ErrConflict) {
			t.Errorf("c2 registering c1's key = %v, want ErrConflict", err)
		}

		// Rotation: one past the registered generation, asked once.
		if _, err := s.RotateCellKeys(ctx, []string{"c1", "nope"}); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `"nope"`) {
			t.Errorf("rotate an unknown cell = %v, want ErrNotFound naming it", err)
		}
		if got := cellByName(t, s, "c1"); got.KeyGeneration != 1 {
			t.Errorf("a refused rotation changed c1: %+v", got)
		}
		rev = storeRevision(t, s)
		cs := must(s.RotateCellKeys(ctx, []string{"c1"}))(t)
		if len(cs) != 1 || cs[0].Name != "c1" || cs[0].KeyGeneration != 2 {
			t.Errorf("rotate c1 = %+v, want c1 at key generation 2", cs)
		}
		ch = must(s.ChangesSince(ctx, rev))(t)
		if len(ch.Cells) != 1 || ch.Cells[0].KeyGeneration != 2 {
			t.Errorf("changes of a rotation = %+v, want c1 wanting generation 2", ch)
		}
		rev = storeRevision(t, s)
		if cs := must(s.RotateCellKeys(ctx, []string{"c1"}))(t); cs[0].KeyGeneration != 2 || storeRevision(t, s) != rev {
			t.Errorf("a second rotation while one is pending = %+v (revision %d → %d), want generation 2 and no change", cs, rev, storeRevision(t, s))
		}
		// The new key answers generation 2; the old one may not come back.
		k2 := testKey()
		if err := s.RegisterCellKey(ctx, c1.GUID, CellKey{k2, 51821, 2}); err != nil {
			t.Fatal(err)
		}
		if err := s.RegisterCellKey(ctx, c1.GUID, CellKey{k1, 51820, 1}); !errors.Is(err, ErrKeyGeneration) || !strings.Contains(err.Error(), "older") {
			t.Errorf("the old key again = %v, want ErrKeyGeneration (older)", err)
		}
		// All cells: c1 to 3; c2 (no key) stays at 1.
		cs = must(s.RotateCellKeys(ctx, nil))(t)
		gens := map[string]int64{}
		for _, c := range cs {
			gens[c.Name] = c.KeyGeneration
		}
		if gens["c1"] != 3 || gens["c2"] != 1 || len(gens) != 2 {
			t.Errorf("rotate all = %v, want c1:3 c2:1", gens)
		}
	})
}

// TestRotateOldCellKeys asks for new keys of cells whose keys are older
// than the age given, once per registered key.
func TestRotateOldCellKeys(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		pool, _ := ipam.NewPool(ipam.DefaultOverlay, 24)
		c1 := mustJoin(t, s, pool, "c1", "198.51.100.1")
		mustJoin(t, s, pool, "c2", "198.51.100.2") // no key: never rotated
		if err := s.RegisterCellKey(ctx, c1.GUID, CellKey{testKey(), 51820, 1}); err != nil {
			t.Fatal(err)
		}
		if names := must(s.RotateOldCellKeys(ctx, time.Hour))(t); len(names) != 0 {
			t.Errorf("rotate keys older than an hour = %v, want none", names)
		}
		time.Sleep(20 * time.Millisecond)
		if names := must(s.RotateOldCellKeys(ctx, 10*time.Millisecond))(t); !slices.Equal(names, []string{"c1"}) {
			t.Errorf("rotate keys older than 10ms = %v, want [c1]", names)
		}
		if got := cellByName(t, s, "c1"); got.KeyGeneration != 2 {
			t.Errorf("c1 after the scheduled rotation = %+v, want key generation 2", got)
		}
		rev := storeRevision(t, s)
		if names := must(s.RotateOldCellKeys(ctx, 10*time.Millisecond))(t); len(names) != 0 || storeRevision(t, s) != rev {
			t.Errorf("again while pending = %v (revision %d → %d), want none and no change", names, rev, storeRevision(t, s))
		}
	})
}

// TestInitSetting keeps a stored setting and sets a missing one.
func TestInitSetting(t *testing.T) {
	forEachStore(t, func(t *testing.T, s *Store) {
		ctx := t.Context()
		if v := must(s.InitSetting(ctx, "encryption", "wireguard"))(t); v != "wireguard" {
			t.Errorf("InitSetting on a new store = %q", v)
		}
		if v := must(s.InitSetting(ctx, "encryption", "off"))(t); v != "wireguard" {
			t.Errorf("InitSetting on a set one = %q, want the stored wireguard", v)
		}
	})
}

// TestMigrateCellKeyTriggers opens a database made before 0011 (cells'
// change trigger watching name, address and subnet only) with this
// trellis: a key registration is in the change feed (the SQLite trigger
// was made anew with the new columns).
func TestMigrateCellKeyTriggers(t *testing.T) {
	forEachEngine(t, func(t *testing.T, url string) {
		ctx := t.Context()
		old, err := open(ctx, url, 10)
		if err != nil {
			t.Fatalf("open at version 10: %v", err)
		}
		if _, err := old.r().exec(ctx, "INSERT INTO cells (guid, name, underlay_ip, subnet, created_at, updated_at, last_seen) VALUES ('g1', 'c1', '198.51.100.1', '10.255.1.0/24', 1, 1, 1)"); err != nil {
			t.Fatal(err)
		}
		old.Close()
		s := openStore(t, url)
		if c := cellByName(t, s, "c1"); c.KeyGeneration != 1 || c.WireGuardKey != "" {
			t.Errorf("an old cell after the migration = %+v, want key generation 1, no key", c)
		}
		rev := storeRevision(t, s)
		if err := s.RegisterCellKey(ctx, "g1", CellKey{testKey(), 51820, 1}); err != nil {
			t.Fatal(err)
		}
		ch := must(s.ChangesSince(ctx, rev))(t)
		if len(ch.Cells) != 1 || ch.Cells[0].GUID != "g1" {
			t.Errorf("changes of a key registration after the upgrade = %+v, want cell g1", ch)
		}
		// Opening again leaves the triggers as they are.
		s.Close()
		s = openStore(t, url)
		rev = storeRevision(t, s)
		if _, err := s.RotateCellKeys(ctx, nil); err != nil {
			t.Fatal(err)
		}
		if ch := must(s.ChangesSince(ctx, rev))(t); len(ch.Cells) != 1 {
			t.Errorf("changes of a rotation after a second open = %+v", ch)
		}
	})
}

package agent

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/wireguard"
)

// TestCellKeysRotation walks a key's life: made on the cell (0600),
// registered, kept across a restart, rotated when the state asks, and
// switched to only once the controller's state names the new key.
func TestCellKeysRotation(t *testing.T) {
	dir := t.TempDir()
	regs := make(chan api.CellKey, 10)
	register := func(_ context.Context, k api.CellKey) error { regs <- k; return nil }
	k, err := newCellKeys(slog.New(slog.DiscardHandler), dir, register)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(dir, wgKeyFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v, want mode 0600", st, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go k.loop(ctx)
	next := func() api.CellKey {
		t.Helper()
		select {
		case ck := <-regs:
			return ck
		case <-time.After(10 * time.Second):
			t.Fatal("no registration")
			return api.CellKey{}
		}
	}

	first := k.update(api.CellState{KeyGeneration: 1})
	ck := next()
	if ck.PublicKey != first.PublicKey().String() || ck.Generation != 1 || ck.ListenPort != wireguard.DefaultPort {
		t.Fatalf("registered %+v, want the first key at generation 1", ck)
	}
	own := api.Cell{WireGuardKey: ck.PublicKey}

	// A restarted agent keeps the key.
	k2, err := newCellKeys(slog.New(slog.DiscardHandler), dir, register)
	if err != nil {
		t.Fatal(err)
	}
	if got := k2.update(api.CellState{Cell: own, KeyGeneration: 1}); got != first {
		t.Fatal("a restarted agent made a new key")
	}

	// Rotation: the next key is registered while the old one stays in use.
	if got := k.update(api.CellState{Cell: own, KeyGeneration: 2}); got != first {
		t.Fatal("the dataplane key changed before the controller had the new one")
	}
	ck = next()
	if ck.Generation != 2 || ck.PublicKey == own.WireGuardKey {
		t.Fatalf("registered %+v, want a new key at generation 2", ck)
	}
	// Until the state names the new key, the old one stays.
	if got := k.update(api.CellState{Cell: own, KeyGeneration: 2}); got != first {
		t.Fatal("switched to the new key before the state named it")
	}
	got := k.update(api.CellState{Cell: api.Cell{WireGuardKey: ck.PublicKey}, KeyGeneration: 2})
	if got.PublicKey().String() != ck.PublicKey {
		t.Fatal("the state names the new key, the dataplane does not use it")
	}
	kf, err := wireguard.LoadOrCreateKey(filepath.Join(dir, wgKeyFile))
	if err != nil || kf.PrivateKey != got || kf.Generation != 2 {
		t.Fatalf("key file after rotation: generation %d, %v; want the new key at 2", kf.Generation, err)
	}
	if _, err := os.Stat(filepath.Join(dir, wgNextKeyFile)); !os.IsNotExist(err) {
		t.Fatalf("next key file still there: %v", err)
	}
}

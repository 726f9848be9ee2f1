package policy

import (
	"testing"

	"github.com/trellis-c2c/trellis/internal/api"
)

// TestCompileEncryption: every cell's state carries the foundation's
// encryption mode, its own wanted key generation, and its peers' WireGuard
// keys and ports — never a peer's key generations — the same from a
// snapshot and from a model.
func TestCompileEncryption(t *testing.T) {
	s := foundation()
	s.Encryption = api.EncryptionWireGuard
	s.Cells[0].WireGuardKey, s.Cells[0].WireGuardPort, s.Cells[0].KeyGeneration, s.Cells[0].WireGuardKeyGeneration = "a2V5MQ==", 51820, 3, 2
	s.Cells[1].WireGuardKey, s.Cells[1].WireGuardPort, s.Cells[1].KeyGeneration = "a2V5Mg==", 51821, 1
	s.PolicyIDs = make([]int64, len(s.Policies)) // a model needs them
	for i := range s.PolicyIDs {
		s.PolicyIDs[i] = int64(i + 1)
	}
	m := NewModel(s)
	for _, from := range []struct {
		name string
		cell func(string) (api.CellState, error)
	}{{"snapshot", func(c string) (api.CellState, error) { return CompileCell(s, c) }}, {"model", m.Cell}} {
		st1, err := from.cell("c1")
		if err != nil {
			t.Fatal(err)
		}
		st2, _ := from.cell("c2")
		if st1.Encryption != api.EncryptionWireGuard || st1.KeyGeneration != 3 || st2.KeyGeneration != 1 {
			t.Errorf("%s: encryption %q, key generations %d and %d; want wireguard, 3 and 1", from.name, st1.Encryption, st1.KeyGeneration, st2.KeyGeneration)
		}
		if p := st2.Peers[0]; p.WireGuardKey != "a2V5MQ==" || p.WireGuardPort != 51820 || p.KeyGeneration != 0 || p.WireGuardKeyGeneration != 0 {
			t.Errorf("%s: cell2's peer = %+v, want cell1's key and port and no generations", from.name, p)
		}
		if c := st1.Cell; c.WireGuardKey != "a2V5MQ==" || c.KeyGeneration != 0 || c.WireGuardKeyGeneration != 0 {
			t.Errorf("%s: cell1's own cell = %+v, want its key, no generations (KeyGeneration says the wanted one)", from.name, c)
		}
	}
	if s.Cells[0].KeyGeneration != 3 {
		t.Errorf("compiling changed the snapshot's cells")
	}
}

package agent

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/trellis-c2c/trellis/internal/api"
)

// TestStateFileRestoresEveryState saves a walk of states, as the agent
// does (a delta when it got one, else the whole state), and after every
// save checks that a restarted agent's load gives exactly the state saved
// (the same JSON). The walk must both append to the journal and fold it
// into snapshots.
func TestStateFileRestoresEveryState(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(13, 13))
	s := newStateFile(dir)
	st := randomState(r, 1)
	if err := s.save(st, nil); err != nil {
		t.Fatal(err)
	}
	for step := range 300 {
		next := mutateState(r, st)
		d, err := api.Diff(&st, &next)
		if err != nil {
			t.Fatal(err)
		}
		var delta *api.CellDelta
		if r.IntN(10) > 0 { // mostly deltas, as the controller sends
			delta = &d
		}
		if err := s.save(next, delta); err != nil {
			t.Fatalf("step %d: save = %v", step, err)
		}
		st = next
		got, ok := newStateFile(dir).load()
		if !ok {
			t.Fatalf("step %d: load found no state", step)
		}
		if g, w := mustJSON(t, got), mustJSON(t, st); !bytes.Equal(g, w) {
			t.Fatalf("step %d: load = %s\nwant %s", step, g, w)
		}
	}
	t.Logf("%d snapshots, %d appends", s.snapshots, s.appends)
	if s.appends < 200 || s.snapshots < 3 {
		t.Errorf("%d appends and %d snapshots in 300 saves: the walk does not test both", s.appends, s.snapshots)
	}
	s.close()
}

// TestStateFileRecovers: a journal torn by a crash keeps what came before
// the tear, and a snapshot replaced behind the agent's back (as by hand,
// or a crash amid a compaction) is the state, whatever the journal says.
func TestStateFileRecovers(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(5, 5))
	s := newStateFile(dir)
	states := []api.CellState{randomState(r, 1)}
	if err := s.save(states[0], nil); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		last := states[len(states)-1]
		next := mutateState(r, last)
		d, _ := api.Diff(&last, &next)
		if err := s.save(next, &d); err != nil {
			t.Fatal(err)
		}
		states = append(states, next)
	}
	s.close()
	if s.appends != 3 {
		t.Fatalf("%d appends, want 3", s.appends)
	}
	journal := filepath.Join(dir, stateJournalFile)
	b, err := os.ReadFile(journal)
	if err != nil {
		t.Fatal(err)
	}
	// Tear the last line.
	if err := os.WriteFile(journal, b[:len(b)-5], 0o600); err != nil {
		t.Fatal(err)
	}
	got, _ := newStateFile(dir).load()
	if g, w := mustJSON(t, got), mustJSON(t, states[2]); !bytes.Equal(g, w) {
		t.Errorf("load with a torn journal = revision %d, want the state before the tear (revision %d)", got.Revision, states[2].Revision)
	}
	// A state file written by someone else: the journal does not extend it.
	other := states[1]
	other.Revision += 1000
	if err := os.WriteFile(filepath.Join(dir, lastStateFile), mustJSON(t, other), 0o600); err != nil {
		t.Fatal(err)
	}
	got, _ = newStateFile(dir).load()
	if g, w := mustJSON(t, got), mustJSON(t, other); !bytes.Equal(g, w) {
		t.Errorf("load after the snapshot was replaced = revision %d, want the replacement alone (revision %d)", got.Revision, other.Revision)
	}
	// The next save after a load writes a snapshot: never appends after
	// a torn line.
	s = newStateFile(dir)
	s.load()
	next := mutateState(r, other)
	d, _ := api.Diff(&other, &next)
	if err := s.save(next, &d); err != nil {
		t.Fatal(err)
	}
	if s.snapshots != 1 || s.appends != 0 {
		t.Errorf("first save after a load: %d snapshots, %d appends; want a snapshot", s.snapshots, s.appends)
	}
	s.close()
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// randomState is a cell's state with some of every list.
func randomState(r *rand.Rand, rev int64) api.CellState {
	st := api.CellState{Revision: rev, Cell: api.Cell{GUID: "cell-01", Name: "cell01"}, Enforce: true,
		Overlay: api.Overlay{CIDR: netip.MustParsePrefix("10.255.0.0/16"), VNI: 1, Port: 4789}, Domains: []string{"apps.internal"}}
	for range 40 {
		st = mutateState(r, st)
	}
	st.Revision = rev
	return st
}

// mutateState returns st one revision on, with a random change to one of
// its lists or fields; st is not modified.
func mutateState(r *rand.Rand, st api.CellState) api.CellState {
	st.Revision++
	ip := func() netip.Addr { return netip.AddrFrom4([4]byte{10, 255, byte(1 + r.IntN(3)), byte(2 + r.IntN(40))}) }
	switch r.IntN(6) {
	case 0:
		st.Allows = edit(r, st.Allows, func() api.Allow {
			p := uint16(8000 + r.IntN(50))
			return api.Allow{DestIP: ip(), SrcTag: uint16(1 + r.IntN(20)), Protocol: "tcp", StartPort: p, EndPort: p}
		})
	case 1:
		st.Endpoints = edit(r, st.Endpoints, func() api.Endpoint {
			n := r.IntN(30)
			return api.Endpoint{IP: ip(), Instance: "inst-" + string(rune('a'+n)), AppGUID: "app-" + string(rune('a'+n%7)), Index: n, CellGUID: "cell-01"}
		})
	case 2:
		st.Apps = edit(r, st.Apps, func() api.TaggedApp {
			n := r.IntN(20)
			return api.TaggedApp{GUID: "app-" + string(rune('a'+n)), Name: "name-" + string(rune('a'+n)), Tag: uint16(1 + n)}
		})
	case 3:
		st.Routes = edit(r, st.Routes, func() api.RouteEntry {
			return api.RouteEntry{Host: "h" + string(rune('a'+r.IntN(10))), Domain: "apps.internal", AppGUIDs: []string{"app-" + string(rune('a'+r.IntN(7)))}}
		})
	case 4:
		st.Peers = edit(r, st.Peers, func() api.Cell {
			n := r.IntN(10)
			return api.Cell{GUID: "cell-x" + string(rune('a'+n)), Name: "x" + string(rune('a'+n)),
				UnderlayIP: netip.AddrFrom4([4]byte{198, 51, 100, byte(20 + n)}), Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 255, byte(10 + n), 0}), 24)}
		})
	case 5:
		st.Enforce = !st.Enforce
		st.KeyGeneration++
	}
	return st
}

// edit returns a copy of list with an entry inserted, removed or replaced
// at random (list is not modified).
func edit[T any](r *rand.Rand, list []T, entry func() T) []T {
	out := append([]T(nil), list...)
	switch k := r.IntN(3); {
	case k == 0 || len(out) == 0:
		i := r.IntN(len(out) + 1)
		out = append(out[:i], append([]T{entry()}, out[i:]...)...)
	case k == 1:
		i := r.IntN(len(out))
		out = append(out[:i], out[i+1:]...)
	default:
		out[r.IntN(len(out))] = entry()
	}
	return out
}

package controller

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"slices"
	"testing"

	"github.com/trellis-c2c/trellis/internal/api"
)

// TestStateEncoderMatchesMarshal: the feed's segmented JSON of a state is
// byte for byte what json.Marshal makes of it, for every field of
// api.CellState (a field added there and not to the encoder fails here),
// and its hash ignores the revision alone.
func TestStateEncoderMatchesMarshal(t *testing.T) {
	shared := []api.TaggedApp{{GUID: "a1", Name: "frontend", Tag: 1}}
	st := api.CellState{Revision: 42,
		Cell:       api.Cell{GUID: "c1", Name: "cell1", UnderlayIP: netip.MustParseAddr("198.51.100.11"), Subnet: netip.MustParsePrefix("10.255.1.0/24")},
		Overlay:    api.Overlay{CIDR: netip.MustParsePrefix("10.255.0.0/16"), SubnetPrefix: 24, VNI: 1, Port: 4789},
		Peers:      []api.Cell{{GUID: "c2", Name: "cell2", UnderlayIP: netip.MustParseAddr("198.51.100.12"), Subnet: netip.MustParsePrefix("10.255.2.0/24")}},
		Instances:  []api.DesiredInstance{{GUID: "i1", AppGUID: "a1", AppName: "frontend", Index: 0, Command: []string{"run"}, Env: map[string]string{"K": "<v>"}}},
		Enforce:    true,
		Allows:     []api.Allow{{DestIP: netip.MustParseAddr("10.255.1.2"), SrcTag: 1, Protocol: "tcp", StartPort: 8080, EndPort: 8080}},
		Apps:       shared,
		Endpoints:  []api.Endpoint{{IP: netip.MustParseAddr("10.255.1.2"), Instance: "i1", AppGUID: "a1", AppName: "frontend", CellGUID: "c1"}},
		Domains:    []string{"apps.internal"},
		Routes:     []api.RouteEntry{{Host: "frontend", Domain: "apps.internal", AppGUIDs: []string{"a1"}}},
		InstanceCA: api.InstanceCA{Generation: 3, Bundle: "PEM"},
		LocalApps:  []api.LocalApp{{GUID: "a1", Hosts: []string{"frontend.apps.internal"}, TLSClients: []string{}}},
	}
	want, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	enc := newStateEncoder()
	e, err := enc.encode(st.Revision, &st)
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	e.write(&got)
	if !bytes.Equal(got.Bytes(), want) {
		t.Errorf("encode =\n%s\nwant (json.Marshal)\n%s", got.Bytes(), want)
	}
	// Every field is in the encoding: a decoded copy equals the state.
	var back api.CellState
	if err := json.Unmarshal(got.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(back); !bytes.Equal(b, want) {
		t.Errorf("decoded and encoded again =\n%s\nwant\n%s", b, want)
	}

	other := st
	other.Revision = 43
	if e2, _ := enc.encode(other.Revision, &other); e2.sum != e.sum {
		t.Error("the hash changed with the revision alone")
	}
	other.Apps = []api.TaggedApp{{GUID: "a1", Name: "frontend", Tag: 2}}
	if e3, _ := enc.encode(other.Revision, &other); e3.sum == e.sum {
		t.Error("the hash did not change with a shared part")
	}
	other = st
	other.Allows = nil
	if e4, _ := enc.encode(other.Revision, &other); e4.sum == e.sum {
		t.Error("the hash did not change with the cell's own part")
	}
}

// TestStateEncoderReshare: a state whose shared lists changed, encoded by
// reshare from the entry of the state before (its own segments kept), is
// byte for byte, and hash for hash, what encode makes of it; the encoder
// never hands back the bytes of a list it kept for another slice.
func TestStateEncoderReshare(t *testing.T) {
	st := api.CellState{Revision: 7, Cell: api.Cell{GUID: "c1", Name: "cell1"}, Enforce: true,
		Allows:    []api.Allow{{DestIP: netip.MustParseAddr("10.255.1.2"), SrcTag: 1, Protocol: "tcp", StartPort: 80, EndPort: 80}},
		Endpoints: []api.Endpoint{{IP: netip.MustParseAddr("10.255.1.2"), Instance: "i1", AppGUID: "a1", CellGUID: "c1"}},
		Domains:   []string{"apps.internal"},
		Routes:    []api.RouteEntry{},
	}
	enc := newStateEncoder()
	old, err := enc.encode(st.Revision, &st)
	if err != nil {
		t.Fatal(err)
	}
	steps := []func(s *api.CellState){
		func(s *api.CellState) {
			s.Routes = []api.RouteEntry{{Host: "fe", Domain: "apps.internal", AppGUIDs: []string{"a1"}}}
		},
		func(s *api.CellState) {
			s.Endpoints = append(slices.Clone(s.Endpoints), api.Endpoint{IP: netip.MustParseAddr("10.255.2.2"), Instance: "i2", AppGUID: "a2", CellGUID: "c2"})
		},
		func(s *api.CellState) { s.Domains, s.Routes = []string{}, nil },
		func(s *api.CellState) {}, // the same lists: the same content
		func(s *api.CellState) { s.Routes = []api.RouteEntry{} },
	}
	for i, step := range steps {
		next := st
		next.Revision = st.Revision + 1
		step(&next)
		got, err := enc.reshare(old, next.Revision, &next)
		if err != nil {
			t.Fatal(err)
		}
		want, err := newStateEncoder().encode(next.Revision, &next)
		if err != nil {
			t.Fatal(err)
		}
		var gb, wb bytes.Buffer
		got.write(&gb)
		want.write(&wb)
		if !bytes.Equal(gb.Bytes(), wb.Bytes()) || got.sum != want.sum || got.rev != next.Revision {
			t.Fatalf("step %d: reshare = %s (sum %x, revision %d)\nwant (encode) %s (sum %x, revision %d)", i, gb.Bytes(), got.sum, got.rev, wb.Bytes(), want.sum, next.Revision)
		}
		if m, _ := json.Marshal(next); !bytes.Equal(gb.Bytes(), m) {
			t.Fatalf("step %d: reshare = %s\nwant (json.Marshal) %s", i, gb.Bytes(), m)
		}
		if same := got.sum == old.sum; same != (i == 3) {
			t.Errorf("step %d: the hash stayed %v; want it the same only when the lists are", i, same)
		}
		st, old = next, got
	}
}

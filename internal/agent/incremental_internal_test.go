package agent

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/policy"
)

// TestIncrementalMatchesFromScratch walks a foundation through random
// changes (policies added and removed, routes mapped and unmapped,
// instances stopped and started on the cell, the agent's own records
// lagging behind or running ahead of the controller's), hands the cell's
// agent each change as the controller would (a delta, through its JSON),
// and after every step checks that what the agent derives with its caches
// — the dataplane's policy and egress, the DNS table, the state it saved —
// equals what it derives from scratch from the state, as the model's
// TestModelMatchesCompile checks the controller's side.
func TestIncrementalMatchesFromScratch(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 11))
	f := newFoundation(t, foundationShape{cells: 4, apps: 60, policies: 150, instances: 40, pairs: 4})
	cell := f.cells[1].GUID
	running := map[string]bool{} // instances on the cell
	var local []string           // their apps
	for _, in := range f.insts {
		if in.CellGUID == cell {
			running[in.GUID] = true
			local = append(local, in.AppGUID)
		}
	}
	dir := t.TempDir()
	saved := newStateFile(dir)
	defer saved.close()
	cs := &containers{subnet: f.cells[1].Subnet, records: f.localRecords(cell)}
	e := &enforcer{containers: cs}
	var tables dnsTables
	have := f.state(t, cell)
	if err := saved.save(have, nil); err != nil {
		t.Fatal(err)
	}
	var added []int64
	deltas := 0
	for step := range 400 {
		var d policy.Delta
		switch k := r.IntN(10); {
		case k < 4: // a policy between two apps, tagged if they are not yet
			// Half of them to an app on the cell, most from another.
			src, dst := f.apps[r.IntN(len(f.apps))].GUID, f.apps[r.IntN(len(f.apps))].GUID
			if r.IntN(2) == 0 {
				dst = local[r.IntN(len(local))]
			}
			for _, app := range []string{src, dst} {
				if _, ok := f.tags[app]; !ok {
					f.tags[app] = f.nextTag
					d.Tags = append(d.Tags, policy.Tag{AppGUID: app, Tag: f.nextTag})
					f.nextTag++
				}
			}
			port := 8000 + r.IntN(20)
			d.Policies = []policy.Policy{{SourceApp: src, DestApp: dst, SourceTag: f.tags[src], Protocol: []string{"tcp", "udp"}[r.IntN(2)],
				StartPort: port, EndPort: port + r.IntN(3)}}
			d.PolicyIDs = []int64{f.nextID}
			added = append(added, f.nextID)
			f.nextID++
		case k < 6 && len(added) > 0: // one of those removed
			i := r.IntN(len(added))
			d.Deleted = map[string][]string{"policies": {strconv.FormatInt(added[i], 10)}}
			added = slices.Delete(added, i, i+1)
		case k < 7:
			d = f.mapRoute(f.apps[r.IntN(len(f.apps))].GUID, r.IntN(2) == 0)
		case k < 9: // an instance of the cell stopped or started
			var in policy.Instance
			for {
				if in = f.insts[r.IntN(len(f.insts))]; in.CellGUID == cell {
					break
				}
			}
			in.Running = !running[in.GUID]
			running[in.GUID] = in.Running
			d.Instances = []policy.Instance{in}
			// The agent's record follows, or not yet.
			if r.IntN(3) > 0 {
				setRecord(cs, f, in)
			}
		default: // the agent's records catch up with the controller
			for _, in := range f.insts {
				if in.CellGUID == cell {
					in.Running = running[in.GUID]
					setRecord(cs, f, in)
				}
			}
		}
		next := f.apply(t, d, cell)
		cd, err := api.Diff(&have, &next)
		if err != nil {
			t.Fatal(err)
		}
		b, err := json.Marshal(cd)
		if err != nil {
			t.Fatal(err)
		}
		var wire api.CellDelta
		if err := json.Unmarshal(b, &wire); err != nil {
			t.Fatal(err)
		}
		got, err := have.Apply(wire)
		if err != nil {
			t.Fatalf("step %d: Apply = %v", step, err)
		}
		if !cd.Empty() {
			deltas++
		}
		if err := saved.save(got, &wire); err != nil {
			t.Fatal(err)
		}
		have = got

		// From scratch: a fresh enforcer and table builder.
		fresh := &enforcer{containers: cs}
		if g, w := e.policy(have), fresh.policy(have); !cmp.Equal(g, w, addrCmp) {
			t.Fatalf("step %d: policy = %v\nfrom scratch %v", step, g, w)
		}
		_, owner := e.locals()
		if g, w := egressFor(have, e.index.agreedIn(have, owner)), egressFor(have, new(stateIndex).agreedIn(have, owner)); !cmp.Equal(g, w, addrCmp) {
			t.Fatalf("step %d: egress = %v\nfrom scratch %v", step, g, w)
		}
		if g, w := tables.table(have).Records(), new(dnsTables).table(have).Records(); !cmp.Equal(g, w, addrCmp) {
			t.Fatalf("step %d: DNS records = %v\nfrom scratch %v", step, g, w)
		}
		loaded, ok := newStateFile(dir).load()
		if !ok {
			t.Fatalf("step %d: no saved state", step)
		}
		if g, w := mustJSON(t, loaded), mustJSON(t, have); !bytes.Equal(g, w) {
			t.Fatalf("step %d: saved state (revision %d) differs from the state in force (revision %d)", step, loaded.Revision, have.Revision)
		}
	}
	if deltas < 150 {
		t.Errorf("only %d of 400 steps changed the cell's state: the walk does not test it", deltas)
	}
	t.Logf("%d steps changed the cell's state; state file: %d snapshots, %d appends", deltas, saved.snapshots, saved.appends)
}

var addrCmp = cmp.Options{cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })}

// setRecord makes the agent's records hold in as attached (or not).
func setRecord(cs *containers, f *foundation, in policy.Instance) {
	id := "ctr-" + in.GUID
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if !in.Running {
		delete(cs.records, id)
		return
	}
	cs.records[id] = &record{ContainerID: id, IP: in.IP, NetNS: "/var/run/netns/" + id, IfName: "eth0", Committed: true,
		HostVeth: "s-" + in.GUID, Identity: api.Identity{AppGUID: in.AppGUID, InstanceGUID: in.GUID, Index: in.Index}}
}

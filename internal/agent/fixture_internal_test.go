package agent

import (
	"fmt"
	"net/netip"
	"strconv"
	"testing"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/policy"
)

// foundation is a store shaped like `trellis bench scale`'s: cells, apps,
// policies among the apps as the bench loads them, and instances spread
// over the cells (the first 2*pairs of them each of its own "pair" app, the
// others of the store's apps), compiled by the controller's own model.
type foundation struct {
	model   *policy.Model
	cells   []api.Cell
	insts   []policy.Instance
	apps    []policy.App
	nextTag uint16
	nextID  int64
	route   policy.Route
	tags    map[string]uint16 // app → its tag
}

// foundationShape is the size of a foundation.
type foundationShape struct {
	cells, apps, policies, instances, pairs int
	// dense makes every policy's destination an app with an instance, so
	// that a cell's allows and tagged apps grow with the policies (the
	// bench's cells hold few of them).
	dense bool
}

// newFoundation builds the foundation s describes.
func newFoundation(tb testing.TB, s foundationShape) *foundation {
	tb.Helper()
	f := &foundation{nextTag: 1, nextID: 1, tags: map[string]uint16{}}
	snap := &policy.Snapshot{Revision: 1, Enforce: true, Encryption: api.EncryptionOff,
		Overlay: api.Overlay{CIDR: netip.MustParsePrefix("10.255.0.0/16"), VNI: 1, Port: 4789}}
	for i := range s.cells {
		c := api.Cell{GUID: fmt.Sprintf("cell-%02d", i), Name: fmt.Sprintf("cell%02d", i),
			UnderlayIP: netip.AddrFrom4([4]byte{198, 51, 100, byte(10 + i)}),
			Subnet:     netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 255, byte(1 + i), 0}), 24)}
		f.cells = append(f.cells, c)
	}
	snap.Cells = f.cells
	snap.Spaces = []policy.Space{{GUID: "space", OrgGUID: "org"}}
	for i := range s.apps {
		f.apps = append(f.apps, policy.App{GUID: fmt.Sprintf("app-%05d", i), Name: fmt.Sprintf("app-%05d", i), SpaceGUID: "space"})
	}
	for i := range 2 * s.pairs {
		f.apps = append(f.apps, policy.App{GUID: fmt.Sprintf("pair-%03d-%d", i/2, i%2), Name: fmt.Sprintf("pair-%03d-%d", i/2, i%2), SpaceGUID: "space"})
	}
	snap.Apps = f.apps
	perCell := map[int]int{}
	for i := range s.instances {
		cell := i % s.cells
		app := f.apps[i%s.apps].GUID
		if i < 2*s.pairs {
			app = f.apps[s.apps+i].GUID
		}
		ip := f.cells[cell].Subnet.Addr().As4()
		ip[3] = byte(2 + perCell[cell])
		perCell[cell]++
		f.insts = append(f.insts, policy.Instance{GUID: fmt.Sprintf("inst-%04d", i), AppGUID: app, Index: i,
			CellGUID: f.cells[cell].GUID, Running: true, IP: netip.AddrFrom4(ip)})
	}
	snap.Instances = f.insts
	tags := f.tags
	tag := func(app string) uint16 {
		if t, ok := tags[app]; ok {
			return t
		}
		t := f.nextTag
		f.nextTag++
		tags[app] = t
		snap.Tags = append(snap.Tags, policy.Tag{AppGUID: app, Tag: t})
		return t
	}
	n := s.apps
	withInstance := min(s.instances-2*s.pairs, s.apps) // store apps i%apps for i >= 2*pairs
	for j := range s.policies {
		src, dst := f.apps[j%n].GUID, f.apps[(j*7+1+j/n)%n].GUID
		if s.dense {
			dst = f.apps[(2*s.pairs+(j*7+1)%withInstance)%n].GUID
		}
		port := 8000 + j/n
		snap.Policies = append(snap.Policies, policy.Policy{SourceApp: src, DestApp: dst, SourceTag: tag(src), Protocol: "tcp",
			StartPort: port, EndPort: port})
		snap.PolicyIDs = append(snap.PolicyIDs, f.nextID)
		f.nextID++
	}
	snap.Domains = []policy.Domain{{GUID: "dom", Name: "apps.internal", Internal: true}}
	f.route = policy.Route{GUID: "route-scale-dns", Host: "scale-dns", DomainGUID: "dom", DomainName: "apps.internal"}
	snap.Routes = []policy.Route{f.route}
	f.model = policy.NewModel(snap)
	return f
}

// apply brings the model one revision forward with d and returns cell's
// new state.
func (f *foundation) apply(tb testing.TB, d policy.Delta, cell string) api.CellState {
	tb.Helper()
	d.Revision = f.model.Revision() + 1
	if _, _, err := f.model.Apply(&d); err != nil {
		tb.Fatal(err)
	}
	return f.state(tb, cell)
}

func (f *foundation) state(tb testing.TB, cell string) api.CellState {
	tb.Helper()
	st, err := f.model.Cell(cell)
	if err != nil {
		tb.Fatal(err)
	}
	return st
}

// addPolicy is the delta of a policy between two apps, tagging them as the
// store does for an app's first policy; removePolicy undoes it.
func (f *foundation) addPolicy(src, dst string, port int) (policy.Delta, int64) {
	id := f.nextID
	f.nextID++
	st, dt := f.nextTag, f.nextTag+1
	f.nextTag += 2
	return policy.Delta{Tags: []policy.Tag{{AppGUID: src, Tag: st}, {AppGUID: dst, Tag: dt}},
		Policies:  []policy.Policy{{SourceApp: src, DestApp: dst, SourceTag: st, Protocol: "tcp", StartPort: port, EndPort: port}},
		PolicyIDs: []int64{id}}, id
}

func removePolicy(d policy.Delta, id int64) policy.Delta {
	return policy.Delta{Deleted: map[string][]string{"policies": {strconv.FormatInt(id, 10)},
		"tags": {strconv.Itoa(int(d.Tags[0].Tag)), strconv.Itoa(int(d.Tags[1].Tag))}}}
}

// mapRoute maps (or, with unmap, unmaps) the foundation's route to app.
func (f *foundation) mapRoute(app string, unmap bool) policy.Delta {
	rt := f.route
	if !unmap {
		rt.AppGUIDs = []string{app}
	}
	return policy.Delta{Routes: []policy.Route{rt}}
}

// localRecords are the container records the agent of cell keeps for the
// foundation's instances there.
func (f *foundation) localRecords(cell string) map[string]*record {
	recs := map[string]*record{}
	for _, in := range f.insts {
		if in.CellGUID != cell {
			continue
		}
		id := "ctr-" + in.GUID
		recs[id] = &record{ContainerID: id, IP: in.IP, NetNS: "/var/run/netns/" + id, IfName: "eth0", Committed: true,
			HostVeth: "s-" + in.GUID, Identity: api.Identity{AppGUID: in.AppGUID, InstanceGUID: in.GUID, Index: in.Index}}
	}
	return recs
}

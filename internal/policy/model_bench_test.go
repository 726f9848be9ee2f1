package policy

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/trellis-c2c/trellis/internal/api"
)

// BenchmarkModelRouteChange measures what a route change costs the model
// alone, by the number of routes stored (50 cells, 1,000 attached
// instances, one route per app): Apply (which recomputes the shared lists
// a change touches, from all their rows) and the states of every cell —
// compiled for the cells Apply lists, Reshare for the others. What grows
// with the routes is the shared route list, recomputed once per change.
//
//	go test -run '^$' -bench ModelRouteChange ./internal/policy/
func BenchmarkModelRouteChange(b *testing.B) {
	for _, nRoutes := range []int{100, 20000} {
		b.Run(fmt.Sprintf("routes=%d", nRoutes), func(b *testing.B) {
			const nCells, nInstances = 50, 1000
			s := &Snapshot{Revision: 1, Enforce: true}
			for i := range nCells {
				s.Cells = append(s.Cells, api.Cell{GUID: fmt.Sprintf("cell-%02d", i), Name: fmt.Sprintf("cell%02d", i),
					Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 255, byte(i), 0}), 24)})
			}
			s.Domains = []Domain{{GUID: "d1", Name: "apps.internal", Internal: true}}
			for i := range max(nRoutes, nInstances) {
				app := fmt.Sprintf("app-%05d", i)
				s.Apps = append(s.Apps, App{GUID: app, Name: app, SpaceGUID: "s1"})
				if i < nInstances {
					s.Instances = append(s.Instances, Instance{GUID: fmt.Sprintf("in-%05d", i), AppGUID: app, CellGUID: s.Cells[i%nCells].GUID,
						Running: true, IP: netip.AddrFrom4([4]byte{10, 255, byte(i % nCells), byte(2 + i/nCells)})})
				}
				if i < nRoutes {
					s.Routes = append(s.Routes, Route{GUID: fmt.Sprintf("rt-%05d", i), Host: app, DomainGUID: "d1", DomainName: "apps.internal", AppGUIDs: []string{app}})
				}
			}
			m := NewModel(s)
			states := map[string]api.CellState{}
			for _, c := range m.Cells() {
				states[c], _ = m.Cell(c)
			}
			rt := s.Routes[1]
			for i := 0; b.Loop(); i++ {
				next := rt
				if i%2 == 0 {
					next.AppGUIDs = nil
				}
				cells, shared, err := m.Apply(&Delta{Revision: int64(i + 2), Routes: []Route{next}})
				if err != nil {
					b.Fatal(err)
				}
				own := map[string]bool{}
				for _, c := range cells {
					own[c] = true
					states[c], _ = m.Cell(c)
				}
				for c, st := range states {
					if !own[c] && shared {
						m.Reshare(&st)
						states[c] = st
					}
				}
			}
		})
	}
}

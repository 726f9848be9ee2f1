package policy

import (
	"cmp"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"slices"
	"strings"

	"github.com/trellis-c2c/trellis/internal/api"
)

// TLSPort is the port on which a cell terminates TLS for its instances: a
// policy that allows tcp to it makes its source a TLS client of the
// destination.
const TLSPort = 61443

// Snapshot is what cells' desired states are compiled from: the store as one
// consistent read saw it, as plain data. Compile reads it and never changes
// it; its slices keep the order the store gave them, which the desired
// states keep where they list rows (cells, instances, endpoints, routes).
type Snapshot struct {
	// Revision is the store's revision the rows were read at.
	Revision int64
	// Overlay is the foundation's overlay network.
	Overlay api.Overlay
	// Enforce is false when an operator turned policy enforcement off.
	Enforce bool
	// Encryption is the encryption between cells (api.EncryptionOff or
	// api.EncryptionWireGuard). Cells carry their WireGuard keys, and
	// their wanted key generation in KeyGeneration.
	Encryption string
	// InstanceCA is the trust anchor of instance identities, as cells see it.
	InstanceCA api.InstanceCA

	Cells     []api.Cell
	Spaces    []Space
	Apps      []App
	Instances []Instance
	Tags      []Tag
	// Policies must hold every policy to or from an app attached on the
	// cells compiled (the tagged apps of a cell are its apps' peers in
	// both directions); others may be left out.
	Policies []Policy
	// PolicyIDs are the policies' store ids, in the order of Policies: a
	// Model needs them (to apply changes), Compile does not.
	PolicyIDs []int64
	Domains   []Domain
	Routes    []Route
	// SecurityGroups allow egress (see egress.go).
	SecurityGroups []SecurityGroup
}

// Space is a space: apps inherit its org.
type Space struct {
	GUID, OrgGUID string
}

// App is an application, the unit policies name.
type App struct {
	GUID, Name, SpaceGUID string
	// Command and Env are what its instances run (nil: the defaults).
	Command []string
	Env     map[string]string
	// RequireClientCert makes its port 61443 demand a client certificate.
	RequireClientCert bool
}

// Instance is one instance of an app.
type Instance struct {
	GUID, AppGUID string
	Index         int
	// Managed instances are run by their cell's agent; others were
	// registered by a runtime through CNI.
	Managed bool
	// CellGUID is the cell it is placed on ("" while it waits for one).
	CellGUID string
	// Running is true while it is attached to the overlay at IP.
	Running bool
	IP      netip.Addr
}

// Tag is the 16-bit policy tag of an app that takes part in a policy.
type Tag struct {
	AppGUID string
	Tag     uint16
}

// Policy allows SourceApp (tagged SourceTag) to connect to DestApp on
// Protocol, ports StartPort..EndPort inclusive.
type Policy struct {
	SourceApp, DestApp string
	SourceTag          uint16
	Protocol           string
	StartPort, EndPort int
}

// Domain is a DNS domain of routes; cells answer for the internal ones.
type Domain struct {
	GUID, Name string
	Internal   bool
}

// Route is Host.DomainName mapped to apps.
type Route struct {
	// GUID is the route's key in changes (Compile does not read it).
	GUID                         string
	Host, DomainGUID, DomainName string
	AppGUIDs                     []string
}

// ErrUnknownCell is the error of compiling a cell the snapshot does not
// hold (it was deleted).
var ErrUnknownCell = errors.New("cell not in the snapshot")

// Compile returns every cell's desired state, by cell GUID. The states
// share the slices that are the same for every cell (apps, endpoints,
// domains, routes): treat them as read-only.
func Compile(s *Snapshot) map[string]api.CellState {
	x := NewIndex(s)
	out := make(map[string]api.CellState, len(s.Cells))
	for _, c := range s.Cells {
		out[c.GUID], _ = x.Cell(c.GUID) // c is in the snapshot: no error
	}
	return out
}

// CompileCell returns one cell's desired state, or ErrUnknownCell.
func CompileCell(s *Snapshot, cell string) (api.CellState, error) {
	return NewIndex(s).Cell(cell)
}

// source is what compiling one cell reads: the parts every cell shares,
// computed once, and lookups of what concerns the cell. Index (from a
// snapshot) and Model (kept up to date by changes) both implement it, so
// that the one compileCell gives the same state from either.
type source interface {
	// header returns the revision, overlay, enforcement and instance CA.
	header() *Snapshot
	// cellList returns the cells, ordered by name.
	cellList() []api.Cell
	// app returns an app by GUID (nil if missing).
	app(guid string) *App
	// orgOf returns the org of a space.
	orgOf(space string) string
	// onCell yields the instances placed on a cell, ordered by app GUID,
	// index and GUID.
	onCell(cell string) iter.Seq[*Instance]
	// policiesTo yields the policies to an app, in the order they were
	// created.
	policiesTo(app string) iter.Seq[*Policy]
	// policiesFrom yields the policies from an app.
	policiesFrom(app string) iter.Seq[*Policy]
	// tagOf returns an app's tag, if it has one.
	tagOf(app string) (uint16, bool)
	// hosts returns the sorted FQDNs of an app's internal routes.
	hosts(app string) []string
	// shared returns the parts of every cell's state that do not depend
	// on the cell.
	shared() *sharedParts
	// securityGroups returns the application security groups.
	securityGroups() []SecurityGroup
}

// sharedParts are the parts of every cell's state that do not depend on
// the cell.
type sharedParts struct {
	endpoints []api.Endpoint
	domains   []string
	routes    []api.RouteEntry
}

// Index is a snapshot arranged so that compiling one cell reads only what
// concerns that cell (its instances, the policies to its apps) and the
// parts every cell shares, which it computes once. Build it with NewIndex;
// it does not change afterwards, so Cell may be called from several
// goroutines.
type Index struct {
	s        *Snapshot
	cells    map[string]int      // cell GUID → index in s.Cells
	apps     map[string]*App     // by GUID
	orgs     map[string]string   // space GUID → org GUID
	instOn   map[string][]int    // cell GUID → indexes in s.Instances, in order
	toApp    map[string][]int    // destination app → indexes in s.Policies, in order
	fromApp  map[string][]int    // source app → indexes in s.Policies, in order
	tags     map[string]uint16   // app → tag
	hostsOf  map[string][]string // app → FQDNs of its internal routes, sorted
	sharedOf sharedParts
}

// NewIndex indexes s in one pass over each of its slices.
func NewIndex(s *Snapshot) *Index {
	x := &Index{s: s, cells: make(map[string]int, len(s.Cells)), apps: make(map[string]*App, len(s.Apps)),
		orgs: make(map[string]string, len(s.Spaces)), instOn: map[string][]int{}, toApp: map[string][]int{},
		fromApp: map[string][]int{}, tags: make(map[string]uint16, len(s.Tags))}
	for i, c := range s.Cells {
		x.cells[c.GUID] = i
	}
	for i := range s.Apps {
		x.apps[s.Apps[i].GUID] = &s.Apps[i]
	}
	for _, sp := range s.Spaces {
		x.orgs[sp.GUID] = sp.OrgGUID
	}
	for i, in := range s.Instances {
		if x.apps[in.AppGUID] != nil && in.CellGUID != "" {
			x.instOn[in.CellGUID] = append(x.instOn[in.CellGUID], i)
		}
	}
	for i, p := range s.Policies {
		x.toApp[p.DestApp] = append(x.toApp[p.DestApp], i)
		x.fromApp[p.SourceApp] = append(x.fromApp[p.SourceApp], i)
	}
	for _, t := range s.Tags {
		x.tags[t.AppGUID] = t.Tag
	}
	x.sharedOf = computeShared(s.Instances, s.Domains, s.Routes, x.app)
	x.hostsOf = RouteHosts(s.Domains, s.Routes)
	return x
}

// computeShared computes the parts of every cell's state that do not
// depend on the cell, from rows in the orders a Snapshot keeps.
func computeShared(instances []Instance, domains []Domain, routes []Route, app func(string) *App) sharedParts {
	var x sharedParts
	x.endpoints = []api.Endpoint{}
	for _, in := range instances {
		a := app(in.AppGUID)
		if a == nil {
			continue // its app is gone
		}
		if attached(in) {
			x.endpoints = append(x.endpoints, api.Endpoint{IP: in.IP, Instance: in.GUID, AppGUID: a.GUID,
				AppName: a.Name, Index: in.Index, CellGUID: in.CellGUID})
		}
	}
	x.domains = []string{}
	for _, d := range domains {
		if d.Internal {
			x.domains = append(x.domains, d.Name)
		}
	}
	x.routes = []api.RouteEntry{}
	for _, rt := range routes {
		if len(rt.AppGUIDs) > 0 {
			x.routes = append(x.routes, api.RouteEntry{Host: rt.Host, Domain: rt.DomainName, AppGUIDs: rt.AppGUIDs})
		}
	}
	return x
}

func (x *Index) header() *Snapshot               { return x.s }
func (x *Index) cellList() []api.Cell            { return x.s.Cells }
func (x *Index) app(guid string) *App            { return x.apps[guid] }
func (x *Index) orgOf(space string) string       { return x.orgs[space] }
func (x *Index) hosts(app string) []string       { return x.hostsOf[app] }
func (x *Index) shared() *sharedParts            { return &x.sharedOf }
func (x *Index) securityGroups() []SecurityGroup { return x.s.SecurityGroups }
func (x *Index) onCell(cell string) iter.Seq[*Instance] {
	return func(yield func(*Instance) bool) {
		for _, i := range x.instOn[cell] {
			if !yield(&x.s.Instances[i]) {
				return
			}
		}
	}
}
func (x *Index) tagOf(app string) (uint16, bool) {
	t, ok := x.tags[app]
	return t, ok
}
func (x *Index) policiesTo(app string) iter.Seq[*Policy]   { return x.policies(x.toApp[app]) }
func (x *Index) policiesFrom(app string) iter.Seq[*Policy] { return x.policies(x.fromApp[app]) }
func (x *Index) policies(at []int) iter.Seq[*Policy] {
	return func(yield func(*Policy) bool) {
		for _, i := range at {
			if !yield(&x.s.Policies[i]) {
				return
			}
		}
	}
}

// RouteHosts maps every app to the sorted FQDNs of its internal routes:
// the DNS names of its instances' certificates.
func RouteHosts(domains []Domain, routes []Route) map[string][]string {
	internal := map[string]bool{}
	for _, d := range domains {
		if d.Internal {
			internal[d.GUID] = true
		}
	}
	hosts := map[string][]string{}
	for _, rt := range routes {
		if !internal[rt.DomainGUID] {
			continue
		}
		for _, a := range rt.AppGUIDs {
			hosts[a] = append(hosts[a], rt.Host+"."+rt.DomainName)
		}
	}
	for a, hs := range hosts {
		slices.Sort(hs)
		hosts[a] = slices.Compact(hs)
	}
	return hosts
}

// attached reports whether in holds an overlay address.
func attached(in Instance) bool { return in.Running && in.IP.IsValid() }

// Cell returns the desired state of one cell, or ErrUnknownCell.
func (x *Index) Cell(cell string) (api.CellState, error) { return compileCell(x, cell) }

// compileCell compiles one cell's desired state from src.
func compileCell(src source, cell string) (api.CellState, error) {
	h, cells := src.header(), src.cellList()
	ci := slices.IndexFunc(cells, func(c api.Cell) bool { return c.GUID == cell })
	if ci < 0 {
		return api.CellState{}, fmt.Errorf("cell %s: %w", cell, ErrUnknownCell)
	}
	sh := src.shared()
	st := api.CellState{Revision: h.Revision, Cell: cells[ci], Overlay: h.Overlay, Enforce: h.Enforce,
		Peers: make([]api.Cell, 0, len(cells)-1), Instances: []api.DesiredInstance{},
		Endpoints: sh.endpoints, Domains: sh.domains, Routes: sh.routes, InstanceCA: h.InstanceCA}
	// A cell's wanted key generation is its own state's, not its peers'.
	st.KeyGeneration, st.Cell.KeyGeneration, st.Cell.WireGuardKeyGeneration = st.Cell.KeyGeneration, 0, 0
	st.Encryption = h.Encryption
	for i, c := range cells {
		if i != ci {
			c.KeyGeneration, c.WireGuardKeyGeneration = 0, 0
			st.Peers = append(st.Peers, c)
		}
	}
	var local []string                    // apps attached here, first seen first
	localIPs := map[string][]netip.Addr{} // app → its addresses here
	for in := range src.onCell(cell) {
		a := src.app(in.AppGUID)
		if a == nil {
			continue // its app is gone
		}
		if in.Managed {
			st.Instances = append(st.Instances, api.DesiredInstance{GUID: in.GUID, AppGUID: a.GUID, AppName: a.Name,
				SpaceGUID: a.SpaceGUID, OrgGUID: src.orgOf(a.SpaceGUID), Index: in.Index, Command: a.Command, Env: a.Env})
		}
		if attached(*in) {
			if localIPs[a.GUID] == nil {
				local = append(local, a.GUID)
			}
			localIPs[a.GUID] = append(localIPs[a.GUID], in.IP)
		}
	}
	st.Allows = []api.Allow{}
	clients := map[string][]string{} // app → apps allowed to reach its 61443
	for _, app := range local {
		for p := range src.policiesTo(app) {
			if !validRange(*p) {
				continue
			}
			for _, ip := range localIPs[app] {
				st.Allows = append(st.Allows, api.Allow{DestIP: ip, SrcTag: p.SourceTag, Protocol: p.Protocol,
					StartPort: uint16(p.StartPort), EndPort: uint16(p.EndPort)})
			}
			if p.Protocol == TCP && p.StartPort <= TLSPort && TLSPort <= p.EndPort {
				clients[app] = append(clients[app], p.SourceApp)
			}
		}
	}
	st.Apps = taggedApps(src, local)
	slices.SortFunc(st.Allows, compareAllows)
	st.Allows = slices.Compact(st.Allows)
	slices.Sort(local)
	st.LocalApps = make([]api.LocalApp, 0, len(local))
	for _, app := range local {
		la := api.LocalApp{GUID: app, Hosts: src.hosts(app), RequireClientCert: src.app(app).RequireClientCert, TLSClients: clients[app]}
		if la.Hosts == nil {
			la.Hosts = []string{}
		}
		slices.Sort(la.TLSClients)
		la.TLSClients = slices.Compact(la.TLSClients)
		if la.TLSClients == nil {
			la.TLSClients = []string{}
		}
		st.LocalApps = append(st.LocalApps, la)
	}
	st.Egress = egress(src, cell)
	return st, nil
}

// taggedApps returns the tagged apps a cell needs, ordered by tag: those
// attached on it (its local apps) and their policy peers in both
// directions — and no other, so that a tag given to an app that concerns
// no instance of the cell does not change its state.
func taggedApps(src source, local []string) []api.TaggedApp {
	need := map[string]bool{}
	for _, app := range local {
		need[app] = true
		for p := range src.policiesTo(app) {
			need[p.SourceApp] = true
		}
		for p := range src.policiesFrom(app) {
			need[p.DestApp] = true
		}
	}
	out := []api.TaggedApp{}
	for app := range need {
		tag, ok := src.tagOf(app)
		if !ok {
			continue
		}
		name := ""
		if a := src.app(app); a != nil {
			name = a.Name
		}
		out = append(out, api.TaggedApp{GUID: app, Name: name, Tag: tag})
	}
	slices.SortFunc(out, func(a, b api.TaggedApp) int { return cmp.Compare(a.Tag, b.Tag) })
	return out
}

// validRange reports whether p's protocol and ports can be enforced; the
// store holds only such policies, and a cell is never sent another.
func validRange(p Policy) bool {
	return (p.Protocol == TCP || p.Protocol == UDP) && 1 <= p.StartPort && p.StartPort <= p.EndPort && p.EndPort <= 65535
}

// compareAllows orders allows by destination, source tag, protocol and
// ports: the order of a cell's Allows.
func compareAllows(x, y api.Allow) int {
	return cmp.Or(x.DestIP.Compare(y.DestIP), cmp.Compare(x.SrcTag, y.SrcTag), strings.Compare(x.Protocol, y.Protocol),
		cmp.Compare(x.StartPort, y.StartPort), cmp.Compare(x.EndPort, y.EndPort))
}

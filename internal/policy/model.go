package policy

import (
	"cmp"
	"errors"
	"iter"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/trellis-c2c/trellis/internal/api"
)

// Delta is what changed in the store after a Model's revision, up to
// Revision: the rows changed, as they are at Revision, and the keys of
// those deleted, by table ("cells", "spaces", "apps", "instances", "tags"
// (the tag, in decimal), "policies" (the id), "domains", "routes").
type Delta struct {
	Revision  int64
	Cells     []api.Cell
	Spaces    []Space
	Apps      []App
	Instances []Instance
	Tags      []Tag
	Policies  []Policy
	PolicyIDs []int64 // of Policies, in order
	Domains   []Domain
	Routes    []Route
	Deleted   map[string][]string
}

// ErrUnknownChange is the error of applying a delta that deletes from a
// table the model does not hold: rebuild it from a snapshot.
var ErrUnknownChange = errors.New("change the model does not understand")

// Model is every cell's desired state kept up to date change by change:
// built once from a snapshot (NewModel), then brought forward by Apply,
// which reports the cells whose own part of the state the change may have
// changed, and whether the lists every cell shares (endpoints, domains,
// routes) changed. Cell returns exactly what Compile would from a snapshot
// at the model's revision: both compile with compileCell, the model from
// indexes it keeps. A change to the shared lists alone (an instance
// attached elsewhere, a route mapped) reaches the other cells through
// Reshare, which swaps the new lists into a cell's state: O(1) per cell,
// not a compile of its whole state.
// A Model is not safe for concurrent use.
type Model struct {
	hdr Snapshot // Revision, Overlay, Enforce, Encryption, InstanceCA

	cells     []api.Cell // ordered by name
	apps      map[string]*App
	orgs      map[string]string
	instances map[string]*Instance
	instOn    map[string][]*Instance // cell → instances, ordered by app, index, GUID
	instOf    map[string][]*Instance // app → instances
	tags      map[uint16]string      // tag → app
	appTag    map[string]uint16      // app → tag
	policies  map[int64]*Policy
	toApp     map[string][]policyRef // destination app → policies, ordered by id
	fromApp   map[string][]policyRef // source app → policies, ordered by id
	domains   map[string]Domain
	routes    map[string]*Route
	// routeOrder holds the routes in the order of the shared list (domain
	// name, host, GUID), kept in order change by change; routesOf the
	// routes of each app, by GUID: a route change costs what it changes,
	// not a sort of every route.
	routeOrder []*Route
	routesOf   map[string]map[string]*Route
	groups     []SecurityGroup // replaced whole: their changes rebuild the model

	// Recomputed when dirty: what every cell shares. Each list is
	// replaced only when what it is made of changed, so that a list that
	// did not change stays the same slice (its encoding and diffs reused).
	sharedOf sharedParts
	hostsOf  map[string][]string
}

type policyRef struct {
	id int64
	p  *Policy
}

// NewModel builds a model from a snapshot (with its PolicyIDs and route
// GUIDs); it keeps no reference to s's slices.
func NewModel(s *Snapshot) *Model {
	m := &Model{hdr: Snapshot{Revision: s.Revision, Overlay: s.Overlay, Enforce: s.Enforce, Encryption: s.Encryption, InstanceCA: s.InstanceCA},
		cells: slices.Clone(s.Cells), apps: make(map[string]*App, len(s.Apps)), orgs: make(map[string]string, len(s.Spaces)),
		instances: make(map[string]*Instance, len(s.Instances)), instOn: map[string][]*Instance{}, instOf: map[string][]*Instance{},
		tags: make(map[uint16]string, len(s.Tags)), appTag: make(map[string]uint16, len(s.Tags)),
		policies: make(map[int64]*Policy, len(s.Policies)), toApp: map[string][]policyRef{}, fromApp: map[string][]policyRef{},
		domains: make(map[string]Domain, len(s.Domains)), routes: make(map[string]*Route, len(s.Routes)),
		groups: slices.Clone(s.SecurityGroups)}
	for _, a := range s.Apps {
		m.apps[a.GUID] = &a
	}
	for _, sp := range s.Spaces {
		m.orgs[sp.GUID] = sp.OrgGUID
	}
	for _, in := range s.Instances { // in the order onCell keeps
		m.instances[in.GUID] = &in
		if in.CellGUID != "" {
			m.instOn[in.CellGUID] = append(m.instOn[in.CellGUID], &in)
		}
		m.instOf[in.AppGUID] = append(m.instOf[in.AppGUID], &in)
	}
	for _, t := range s.Tags {
		m.tags[t.Tag], m.appTag[t.AppGUID] = t.AppGUID, t.Tag
	}
	for i, p := range s.Policies { // by id
		m.policies[s.PolicyIDs[i]] = &p
		m.toApp[p.DestApp] = append(m.toApp[p.DestApp], policyRef{s.PolicyIDs[i], &p})
		m.fromApp[p.SourceApp] = append(m.fromApp[p.SourceApp], policyRef{s.PolicyIDs[i], &p})
	}
	for _, d := range s.Domains {
		m.domains[d.GUID] = d
	}
	m.routesOf = map[string]map[string]*Route{}
	for _, rt := range s.Routes {
		m.routes[rt.GUID] = &rt
		m.indexRoute(&rt)
	}
	m.refresh(true, true, nil)
	return m
}

// Revision is the store revision the model is at.
func (m *Model) Revision() int64 { return m.hdr.Revision }

// Cells returns the GUIDs of the cells, ordered by name.
func (m *Model) Cells() []string {
	out := make([]string, len(m.cells))
	for i, c := range m.cells {
		out[i] = c.GUID
	}
	return out
}

// Cell returns one cell's desired state, or ErrUnknownCell. The slices
// every cell shares are shared with the model: treat them as read-only.
func (m *Model) Cell(cell string) (api.CellState, error) { return compileCell(m, cell) }

// SetHeader sets what is not rows of tables (the overlay, enforcement,
// the instance CA) and returns whether it changed; the caller compiles
// every cell again if it did.
func (m *Model) SetHeader(overlay api.Overlay, enforce bool, ca api.InstanceCA) bool {
	changed := m.hdr.Overlay != overlay || m.hdr.Enforce != enforce || !reflect.DeepEqual(m.hdr.InstanceCA, ca)
	m.hdr.Overlay, m.hdr.Enforce, m.hdr.InstanceCA = overlay, enforce, ca
	return changed
}

// Apply brings the model to d.Revision and returns the cells whose own
// part of the state (all but the shared lists: endpoints, domains, routes)
// the change may have changed (those deleted included: Cell says
// ErrUnknownCell for them), and whether the shared lists changed. A cell
// not in cells has the state it had but for the shared lists: when shared
// is true, Reshare brings it to the model's revision. With
// ErrUnknownChange the model is unusable: build a new one.
func (m *Model) Apply(d *Delta) (cells []string, shared bool, err error) {
	aff := affected{m: m, cells: map[string]bool{}}
	for tbl := range d.Deleted {
		switch tbl {
		case "cells", "spaces", "apps", "instances", "tags", "policies", "domains", "routes":
		default:
			return nil, false, ErrUnknownChange
		}
	}
	m.hdr.Revision = d.Revision
	// Apps first: the other changes look them up.
	for _, a := range d.Apps {
		old := m.apps[a.GUID]
		if old != nil && old.Name != a.Name && m.shows(a.GUID) {
			aff.all = true // tagged apps and endpoints carry names
			aff.endpoints = true
		}
		aff.app(a.GUID)
		m.apps[a.GUID] = &a
	}
	for _, guid := range d.Deleted["apps"] {
		if m.shows(guid) {
			aff.all = true
			aff.endpoints = true
		}
		aff.app(guid)
		delete(m.apps, guid)
	}
	for _, sp := range d.Spaces {
		if org, ok := m.orgs[sp.GUID]; ok && org != sp.OrgGUID {
			aff.all = true // managed instances carry their org
		}
		m.orgs[sp.GUID] = sp.OrgGUID
	}
	for _, guid := range d.Deleted["spaces"] {
		delete(m.orgs, guid) // no app is left in it
	}
	for _, in := range d.Instances {
		m.removeInstance(in.GUID, &aff)
		m.instances[in.GUID] = &in
		if in.CellGUID != "" {
			m.instOn[in.CellGUID] = insertInstance(m.instOn[in.CellGUID], &in)
			aff.cells[in.CellGUID] = true
		}
		m.instOf[in.AppGUID] = append(m.instOf[in.AppGUID], &in)
		if attached(in) {
			aff.endpoints = true // no other cell's own part shows it
		}
	}
	for _, guid := range d.Deleted["instances"] {
		m.removeInstance(guid, &aff)
	}
	// A tag is in the states of the cells where its app or a policy peer
	// of it is attached: marked once the policies are applied.
	var retagged []string
	for _, t := range d.Tags {
		retagged = append(retagged, m.dropTag(t.Tag), t.AppGUID)
		m.tags[t.Tag], m.appTag[t.AppGUID] = t.AppGUID, t.Tag
	}
	for _, k := range d.Deleted["tags"] {
		tag, err := strconv.ParseUint(k, 10, 16)
		if err != nil {
			return nil, false, ErrUnknownChange
		}
		retagged = append(retagged, m.dropTag(uint16(tag)))
	}
	for _, k := range d.Deleted["policies"] {
		id, err := strconv.ParseInt(k, 10, 64)
		if err != nil {
			return nil, false, ErrUnknownChange
		}
		m.removePolicy(id, &aff)
	}
	for i, p := range d.Policies {
		id := d.PolicyIDs[i]
		m.removePolicy(id, &aff)
		m.policies[id] = &p
		refs := m.toApp[p.DestApp]
		at, _ := slices.BinarySearchFunc(refs, id, func(r policyRef, id int64) int { return cmp.Compare(r.id, id) })
		m.toApp[p.DestApp] = slices.Insert(refs, at, policyRef{id, &p})
		refs = m.fromApp[p.SourceApp]
		at, _ = slices.BinarySearchFunc(refs, id, func(r policyRef, id int64) int { return cmp.Compare(r.id, id) })
		m.fromApp[p.SourceApp] = slices.Insert(refs, at, policyRef{id, &p})
		aff.attachedCells(p.DestApp)
		aff.attachedCells(p.SourceApp) // its peers' tags
	}
	for _, app := range retagged {
		if app != "" {
			aff.peers(app)
		}
	}
	for _, dom := range d.Domains {
		m.domains[dom.GUID] = dom
		aff.all = true // the hosts of every app in it
		aff.domains = true
	}
	for _, guid := range d.Deleted["domains"] {
		delete(m.domains, guid)
		aff.all = true
		aff.domains = true
	}
	// A route is in the shared list, and in the hosts of its apps: the
	// cells where those (before and after) are attached list them in
	// their local apps.
	for _, rt := range d.Routes {
		m.dropRoute(rt.GUID, &aff)
		m.routes[rt.GUID] = &rt
		m.indexRoute(&rt)
		aff.routes = true
		for _, app := range rt.AppGUIDs {
			aff.attachedCells(app)
			aff.hostApps = append(aff.hostApps, app)
		}
	}
	for _, guid := range d.Deleted["routes"] {
		m.dropRoute(guid, &aff)
	}
	if len(d.Cells) > 0 || len(d.Deleted["cells"]) > 0 {
		aff.all = true // peers
		byGUID := map[string]api.Cell{}
		for _, c := range m.cells {
			byGUID[c.GUID] = c
		}
		for _, c := range d.Cells {
			byGUID[c.GUID] = c
		}
		for _, guid := range d.Deleted["cells"] {
			delete(byGUID, guid)
			aff.cells[guid] = true
		}
		m.cells = slices.SortedFunc(maps.Values(byGUID), func(a, b api.Cell) int { return strings.Compare(a.Name, b.Name) })
	}
	if aff.all {
		for _, c := range m.cells {
			aff.cells[c.GUID] = true
		}
	}
	shared = aff.endpoints || aff.routes || aff.domains
	if shared {
		if aff.domains {
			aff.hostApps = nil // every app's hosts: the domains' internal flags, their names
		}
		m.refresh(aff.endpoints, aff.routes || aff.domains, aff.hostApps)
	}
	return slices.Sorted(maps.Keys(aff.cells)), shared, nil
}

// compareRoutes orders routes by domain name, host and GUID: the order of
// the shared list.
func compareRoutes(a, b *Route) int {
	return cmp.Or(strings.Compare(a.DomainName, b.DomainName), strings.Compare(a.Host, b.Host), strings.Compare(a.GUID, b.GUID))
}

// indexRoute adds a route to routeOrder and routesOf.
func (m *Model) indexRoute(rt *Route) {
	at, _ := slices.BinarySearchFunc(m.routeOrder, rt, compareRoutes)
	m.routeOrder = slices.Insert(m.routeOrder, at, rt)
	for _, app := range rt.AppGUIDs {
		if m.routesOf[app] == nil {
			m.routesOf[app] = map[string]*Route{}
		}
		m.routesOf[app][rt.GUID] = rt
	}
}

// unindexRoute removes a route from routeOrder and routesOf.
func (m *Model) unindexRoute(rt *Route) {
	if at, ok := slices.BinarySearchFunc(m.routeOrder, rt, compareRoutes); ok {
		m.routeOrder = slices.Delete(m.routeOrder, at, at+1)
	}
	for _, app := range rt.AppGUIDs {
		delete(m.routesOf[app], rt.GUID)
		if len(m.routesOf[app]) == 0 {
			delete(m.routesOf, app)
		}
	}
}

// dropRoute removes a route, marking the cells where its apps are
// attached.
func (m *Model) dropRoute(guid string, aff *affected) {
	old := m.routes[guid]
	if old == nil {
		return
	}
	delete(m.routes, guid)
	m.unindexRoute(old)
	aff.routes = true
	for _, app := range old.AppGUIDs {
		aff.attachedCells(app)
		aff.hostApps = append(aff.hostApps, app)
	}
}

// Reshare brings a state of a cell that Apply did not list to the model's
// revision: the state the cell had, with the shared lists as they are
// now. It is what Cell returns for that cell, at the cost of a few
// assignments.
func (m *Model) Reshare(st *api.CellState) {
	st.Revision = m.hdr.Revision
	st.Endpoints, st.Domains, st.Routes = m.sharedOf.endpoints, m.sharedOf.domains, m.sharedOf.routes
}

// shows reports whether an app's name is in every cell's state: it has a
// tag or an attached instance.
func (m *Model) shows(app string) bool {
	if _, ok := m.appTag[app]; ok {
		return true
	}
	return slices.ContainsFunc(m.instOf[app], func(in *Instance) bool { return attached(*in) })
}

// affected collects the cells whose own parts a delta may change (all:
// every cell's), and which shared lists it changes: endpoints, or domains
// and routes (and the hosts of the apps).
type affected struct {
	m                          *Model
	all                        bool
	cells                      map[string]bool
	endpoints, routes, domains bool
	hostApps                   []string // apps whose routes changed
}

// app marks the cells where an app has instances.
func (a *affected) app(guid string) {
	for _, in := range a.m.instOf[guid] {
		if in.CellGUID != "" {
			a.cells[in.CellGUID] = true
		}
	}
}

// peers marks the cells whose tagged apps show app's tag: where it or one of
// its policy peers is attached.
func (a *affected) peers(app string) {
	a.attachedCells(app)
	for _, r := range a.m.toApp[app] {
		a.attachedCells(r.p.SourceApp)
	}
	for _, r := range a.m.fromApp[app] {
		a.attachedCells(r.p.DestApp)
	}
}

// attachedCells marks the cells where an app has attached instances: those
// policies to or from it change.
func (a *affected) attachedCells(guid string) {
	for _, in := range a.m.instOf[guid] {
		if attached(*in) {
			a.cells[in.CellGUID] = true
		}
	}
}

func (m *Model) removeInstance(guid string, aff *affected) {
	old := m.instances[guid]
	if old == nil {
		return
	}
	delete(m.instances, guid)
	if old.CellGUID != "" {
		aff.cells[old.CellGUID] = true
		m.instOn[old.CellGUID] = slices.DeleteFunc(m.instOn[old.CellGUID], func(in *Instance) bool { return in == old })
		if len(m.instOn[old.CellGUID]) == 0 {
			delete(m.instOn, old.CellGUID)
		}
	}
	m.instOf[old.AppGUID] = slices.DeleteFunc(m.instOf[old.AppGUID], func(in *Instance) bool { return in == old })
	if len(m.instOf[old.AppGUID]) == 0 {
		delete(m.instOf, old.AppGUID)
	}
	if attached(*old) {
		aff.endpoints = true
	}
}

// insertInstance inserts in into ins, ordered by app, index and GUID.
func insertInstance(ins []*Instance, in *Instance) []*Instance {
	at, _ := slices.BinarySearchFunc(ins, in, compareInstances)
	return slices.Insert(ins, at, in)
}

func compareInstances(a, b *Instance) int {
	return cmp.Or(strings.Compare(a.AppGUID, b.AppGUID), cmp.Compare(a.Index, b.Index), strings.Compare(a.GUID, b.GUID))
}

// dropTag removes a tag and returns the app that had it ("" if none).
func (m *Model) dropTag(tag uint16) string {
	app, ok := m.tags[tag]
	if ok {
		delete(m.tags, tag)
		if m.appTag[app] == tag {
			delete(m.appTag, app)
		}
	}
	return app
}

func (m *Model) removePolicy(id int64, aff *affected) {
	old := m.policies[id]
	if old == nil {
		return
	}
	delete(m.policies, id)
	m.toApp[old.DestApp] = slices.DeleteFunc(m.toApp[old.DestApp], func(r policyRef) bool { return r.id == id })
	if len(m.toApp[old.DestApp]) == 0 {
		delete(m.toApp, old.DestApp)
	}
	m.fromApp[old.SourceApp] = slices.DeleteFunc(m.fromApp[old.SourceApp], func(r policyRef) bool { return r.id == id })
	if len(m.fromApp[old.SourceApp]) == 0 {
		delete(m.fromApp, old.SourceApp)
	}
	aff.attachedCells(old.DestApp)
	aff.attachedCells(old.SourceApp)
}

// refresh recomputes the shared lists: the endpoints, and the domains and
// routes, in the orders a snapshot keeps: instances by app, index and GUID,
// domains by name, routes by domain name, host and GUID. A list it is not
// asked to recompute stays the same slice. With routes, the hosts of
// hostApps are recomputed, or with hostApps nil every app's (and the
// routes' order: a domain's name may have changed).
func (m *Model) refresh(endpoints, routes bool, hostApps []string) {
	if endpoints {
		var ins []Instance
		for _, in := range m.instances {
			if attached(*in) {
				ins = append(ins, *in)
			}
		}
		slices.SortFunc(ins, func(a, b Instance) int { return compareInstances(&a, &b) })
		m.sharedOf.endpoints = computeShared(ins, nil, nil, m.app).endpoints
	}
	if !routes {
		return
	}
	if hostApps == nil {
		domains := slices.SortedFunc(maps.Values(m.domains), func(a, b Domain) int { return strings.Compare(a.Name, b.Name) })
		slices.SortFunc(m.routeOrder, compareRoutes)
		rts := make([]Route, len(m.routeOrder))
		for i, rt := range m.routeOrder {
			rts[i] = *rt
		}
		x := computeShared(nil, domains, rts, m.app)
		m.sharedOf.domains, m.sharedOf.routes = x.domains, x.routes
		m.hostsOf = RouteHosts(domains, rts)
		return
	}
	list := make([]api.RouteEntry, 0, len(m.routeOrder))
	for _, rt := range m.routeOrder {
		if len(rt.AppGUIDs) > 0 {
			list = append(list, api.RouteEntry{Host: rt.Host, Domain: rt.DomainName, AppGUIDs: rt.AppGUIDs})
		}
	}
	m.sharedOf.routes = list
	for _, app := range hostApps {
		var hs []string
		for _, rt := range m.routesOf[app] {
			if m.domains[rt.DomainGUID].Internal {
				hs = append(hs, rt.Host+"."+rt.DomainName)
			}
		}
		if hs == nil {
			delete(m.hostsOf, app)
			continue
		}
		slices.Sort(hs)
		m.hostsOf[app] = slices.Compact(hs)
	}
}

func (m *Model) header() *Snapshot               { return &m.hdr }
func (m *Model) cellList() []api.Cell            { return m.cells }
func (m *Model) app(guid string) *App            { return m.apps[guid] }
func (m *Model) orgOf(space string) string       { return m.orgs[space] }
func (m *Model) hosts(app string) []string       { return m.hostsOf[app] }
func (m *Model) shared() *sharedParts            { return &m.sharedOf }
func (m *Model) securityGroups() []SecurityGroup { return m.groups }
func (m *Model) onCell(cell string) iter.Seq[*Instance] {
	return slices.Values(m.instOn[cell])
}
func (m *Model) tagOf(app string) (uint16, bool) {
	t, ok := m.appTag[app]
	return t, ok
}
func (m *Model) policiesTo(app string) iter.Seq[*Policy]   { return refsOf(m.toApp[app]) }
func (m *Model) policiesFrom(app string) iter.Seq[*Policy] { return refsOf(m.fromApp[app]) }
func refsOf(refs []policyRef) iter.Seq[*Policy] {
	return func(yield func(*Policy) bool) {
		for _, r := range refs {
			if !yield(r.p) {
				return
			}
		}
	}
}

package dns

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	mdns "github.com/miekg/dns"
)

// Route is an internal route as the controller hands it out: HOST.DOMAIN
// mapped to one or more apps.
type Route struct {
	Host   string   // "backend"; "" for a route on the domain itself
	Domain string   // "apps.internal"; a trailing dot is allowed
	Apps   []string // GUIDs of the apps the route sends to
}

// Instance is a running app instance: only running instances belong in a
// Table, because a name answers with every address it is given.
type Instance struct {
	App   string     // the app's GUID
	Index int        // CF_INSTANCE_INDEX; negative for none
	IP    netip.Addr // the instance's overlay address (IPv4)
}

// Record is one address a name answers with.
type Record struct {
	Name  string     // host.domain or INDEX.host.domain, lowercase, no trailing dot
	IP    netip.Addr // an instance's address
	Index int        // the instance's index
}

// Table is what the server answers from: the internal domains and, for
// every name in them, its addresses. It is immutable once built, so a
// Server swaps in a new one atomically and a query never waits for, or sees
// half of, an update.
type Table struct {
	domains map[string]bool   // lowercase FQDNs with the trailing dot
	names   map[string]*entry // lowercase FQDN → addresses
	records int               // number of Records
}

// entry is a name in the table. A name without addresses exists because
// names below it do (an empty non-terminal) or because it is a domain's
// apex: it answers NOERROR with no records rather than NXDOMAIN, so that
// resolvers applying RFC 8020 do not conclude the names below it are gone.
type entry struct {
	addrs []netip.Addr
	index []int // index[i] is the instance index of addrs[i]
}

// NewTable builds the table for the internal domains from routes and the
// running instances. HOST.DOMAIN answers with the address of every
// instance of every app the route maps to; INDEX.HOST.DOMAIN with those of
// index INDEX. Names are matched case-insensitively. Routes outside the
// domains, instances without an IPv4 address and names that are not valid
// DNS names are left out; a name never lists an address twice. When a
// route's name and an INDEX name coincide, the route wins.
func NewTable(domains []string, routes []Route, instances []Instance) *Table {
	return NewTableFrom(domains, routes, IndexInstances(instances))
}

// Instances are running instances indexed by app, what a table is built
// from. An index is immutable once made: a table rebuilt for a change of
// routes can reuse the index of the instances, and cost the routes and
// the names they give, not a walk of every instance of the foundation.
type Instances struct {
	byApp map[string][]Instance
}

// IndexInstances indexes instances for NewTableFrom (see NewTable for
// those left out).
func IndexInstances(instances []Instance) *Instances {
	byApp := map[string][]Instance{}
	for _, in := range instances {
		if !in.IP.Is4() && !in.IP.Is4In6() {
			continue
		}
		in.IP = in.IP.Unmap()
		byApp[in.App] = append(byApp[in.App], in)
	}
	return &Instances{byApp: byApp}
}

// NewTableFrom is NewTable from indexed instances.
func NewTableFrom(domains []string, routes []Route, ins *Instances) *Table {
	t := &Table{domains: map[string]bool{}, names: make(map[string]*entry, len(domains)+2*len(routes))}
	for _, d := range domains {
		if d, ok := canonical(d); ok {
			t.domains[d] = true
			t.names[d] = &entry{}
		}
	}
	byApp := ins.byApp
	// Route names first, so that an INDEX name never shadows a route.
	type named struct {
		name string
		apps []string
	}
	valid := make([]named, 0, len(routes))
	isRoute := make(map[string]bool, len(routes))
	for _, r := range routes {
		domain, ok := canonical(r.Domain)
		if !ok || !t.domains[domain] {
			continue
		}
		name := domain
		if r.Host != "" {
			if name, ok = canonical(r.Host + "." + domain); !ok {
				continue
			}
		}
		isRoute[name] = true
		valid = append(valid, named{name, r.Apps})
	}
	for _, r := range valid {
		for _, app := range r.apps {
			for _, in := range byApp[app] {
				t.add(r.name, in)
				if in.Index < 0 {
					continue
				}
				// INDEX. before a valid name is valid when short enough.
				idx := strconv.Itoa(in.Index) + "." + r.name
				if len(idx) <= 254 && !isRoute[idx] {
					t.add(idx, in)
				}
			}
		}
	}
	// Mark the names between each name and its domain as existing.
	for name := range t.names {
		for n := name; !t.domains[n]; {
			i, end := mdns.NextLabel(n, 0)
			if end {
				break
			}
			n = n[i:]
			if t.names[n] == nil {
				t.names[n] = &entry{}
			}
		}
	}
	return t
}

// add gives name the address of in, once.
func (t *Table) add(name string, in Instance) {
	e := t.names[name]
	if e == nil {
		e = &entry{}
		t.names[name] = e
	}
	if slices.Contains(e.addrs, in.IP) {
		return
	}
	e.addrs = append(e.addrs, in.IP)
	e.index = append(e.index, in.Index)
	t.records++
}

// canonical returns name lowercased with one trailing dot, and whether it
// is a host name the table can hold: labels of 1 to 63 letters, digits,
// hyphens and underscores, at most 253 characters in all. (Other bytes
// would need escaping in miekg/dns's presentation form of a query.)
func canonical(name string) (string, bool) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if name == "" || len(name) > 253 {
		return "", false
	}
	label := 0
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case c == '.':
			if label == 0 {
				return "", false
			}
			label = 0
			continue
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return "", false
		}
		if label++; label > 63 {
			return "", false
		}
	}
	if label == 0 {
		return "", false
	}
	return name + ".", true
}

// internal reports whether the lowercase FQDN name is one of the table's
// domains or below one.
func (t *Table) internal(name string) bool {
	for off, end := 0, false; !end; off, end = mdns.NextLabel(name, off) {
		if t.domains[name[off:]] {
			return true
		}
	}
	return false
}

// lookup returns the entry of the lowercase FQDN name, nil when the name
// does not exist.
func (t *Table) lookup(name string) *entry { return t.names[name] }

// Lookup returns the addresses name answers with (in no particular order)
// and whether name exists in the table. The name is matched
// case-insensitively, with or without the trailing dot.
func (t *Table) Lookup(name string) (addrs []netip.Addr, ok bool) {
	n, ok := canonical(name)
	if !ok || t == nil {
		return nil, false
	}
	e := t.lookup(n)
	if e == nil {
		return nil, false
	}
	return slices.Clone(e.addrs), true
}

// Internal reports whether name is in one of the table's internal domains,
// so that the server answers it rather than forwarding it.
func (t *Table) Internal(name string) bool {
	n, ok := canonical(name)
	return ok && t != nil && t.internal(n)
}

// Domains returns the table's internal domains, sorted, without the
// trailing dot.
func (t *Table) Domains() []string {
	var out []string
	for d := range t.domains {
		out = append(out, strings.TrimSuffix(d, "."))
	}
	slices.Sort(out)
	return out
}

// Records returns every name and address of the table, sorted by name,
// index and address: for logs, debugging endpoints and tests.
func (t *Table) Records() []Record {
	out := make([]Record, 0, t.records)
	for name, e := range t.names {
		for i, ip := range e.addrs {
			out = append(out, Record{Name: strings.TrimSuffix(name, "."), IP: ip, Index: e.index[i]})
		}
	}
	slices.SortFunc(out, func(a, b Record) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), cmp.Compare(a.Index, b.Index), a.IP.Compare(b.IP))
	})
	return out
}

// Len returns the number of records, as Records would list them.
func (t *Table) Len() int { return t.records }

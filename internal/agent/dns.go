package agent

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/dns"
)

// startDNS serves the internal domains at DNSAddr:53 in the cell's
// namespace, from the agent's own copy of routes and instances: a lookup
// never waits on the controller, and keeps being answered while it is down.
// The server runs on bg until ctx is done.
func (a *Agent) startDNS(ctx context.Context, bg *sync.WaitGroup) error {
	ip := netip.MustParseAddr(DNSAddr)
	if err := dns.AddAddress(a.nsPath, ip); err != nil {
		return fmt.Errorf("dns: add %s to the cell: %w", ip, err)
	}
	a.dns = dns.NewServer(dns.Options{Upstreams: a.cfg.DNSUpstreams, Registerer: a.metrics, Logger: a.log})
	st := a.desired()
	a.mu.Lock()
	t := a.dnsTables.table(st)
	a.mu.Unlock()
	a.dns.SetTable(t)
	if err := a.dns.Listen(a.nsPath, netip.AddrPortFrom(ip, 53).String()); err != nil {
		return err
	}
	bg.Go(func() {
		if err := a.dns.Serve(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("dns server stopped", "err", err)
		}
	})
	return nil
}

// sameDNS reports whether a and b hold the same lists the DNS table is
// made of (the same slices: a delta keeps the lists it does not change),
// so that a change elsewhere (a policy) does not rebuild the table.
func sameDNS(a, b api.CellState) bool {
	return sameSlice(a.Domains, b.Domains) && sameSlice(a.Routes, b.Routes) && sameSlice(a.Endpoints, b.Endpoints)
}

func sameSlice[T any](a, b []T) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// dnsTables builds the cell's DNS tables from successive states. It keeps
// the index of the endpoints it built the last table from, and reuses it
// while a state keeps the same endpoints (the same slice: a delta keeps
// the lists it does not change): a route change then costs the routes and
// the names they give, not a walk of every endpoint of the foundation.
type dnsTables struct {
	endpoints []api.Endpoint
	index     *dns.Instances
}

// table is what the cell's DNS server answers from in st.
func (b *dnsTables) table(st api.CellState) *dns.Table {
	if b.index == nil || !sameSlice(b.endpoints, st.Endpoints) {
		ins := make([]dns.Instance, 0, len(st.Endpoints))
		for _, ep := range st.Endpoints {
			ins = append(ins, dns.Instance{App: ep.AppGUID, Index: ep.Index, IP: ep.IP})
		}
		b.endpoints, b.index = st.Endpoints, dns.IndexInstances(ins)
	}
	routes := make([]dns.Route, 0, len(st.Routes))
	for _, r := range st.Routes {
		routes = append(routes, dns.Route{Host: r.Host, Domain: r.Domain, Apps: r.AppGUIDs})
	}
	domains := make([]string, 0, len(st.Domains))
	for _, d := range st.Domains {
		domains = append(domains, strings.ToLower(d))
	}
	return dns.NewTableFrom(domains, routes, b.index)
}

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
	a.dns.SetTable(dnsTable(a.desired()))
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

// dnsTable is what the cell's DNS server answers from in st.
func dnsTable(st api.CellState) *dns.Table {
	routes := make([]dns.Route, 0, len(st.Routes))
	for _, r := range st.Routes {
		routes = append(routes, dns.Route{Host: r.Host, Domain: r.Domain, Apps: r.AppGUIDs})
	}
	var ins []dns.Instance
	for _, ep := range st.Endpoints {
		ins = append(ins, dns.Instance{App: ep.AppGUID, Index: ep.Index, IP: ep.IP})
	}
	domains := make([]string, 0, len(st.Domains))
	for _, d := range st.Domains {
		domains = append(domains, strings.ToLower(d))
	}
	return dns.NewTable(domains, routes, ins)
}

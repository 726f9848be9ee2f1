package dns_test

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
	"github.com/trellis-c2c/trellis/internal/dns"
	"github.com/trellis-c2c/trellis/internal/netns"
)

func TestMain(m *testing.M) { os.Exit(dataplanetest.Run(m)) }

// TestServeInNamespace serves on 169.254.0.2:53 inside a cell namespace
// and queries it from inside that namespace over UDP and TCP.
func TestServeInNamespace(t *testing.T) {
	dataplanetest.RequireRoot(t)
	cell := dataplanetest.Namespace(t, "dnscell")
	for range 2 { // idempotent
		if err := dns.AddAddress(cell, dns.DefaultAddr); err != nil {
			t.Fatalf("AddAddress(%s, %s) = %v", cell, dns.DefaultAddr, err)
		}
	}
	h := dataplanetest.Handle(t, cell)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	list, err := h.AddrList(lo, 2 /* AF_INET */)
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, a := range list {
		if a.IP.Equal(dns.DefaultAddr.AsSlice()) {
			found++
		}
	}
	if found != 1 {
		t.Errorf("lo in the cell has %s %d times, want once: %v", dns.DefaultAddr, found, list)
	}

	s := dns.NewServer(dns.Options{})
	s.SetTable(testTable())
	addr := netip.AddrPortFrom(dns.DefaultAddr, 53).String()
	if err := s.Listen(cell, addr); err != nil {
		t.Fatalf("Listen(%s, %s) = %v", cell, addr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve = %v", err)
		}
	}()

	for _, network := range []string{"udp", "tcp"} {
		var resp *mdns.Msg
		err := netns.Do(cell, func() (err error) {
			c := &mdns.Client{Net: network, Timeout: 2 * time.Second}
			resp, _, err = c.Exchange(query("backend.apps.internal.", mdns.TypeA), addr)
			return err
		})
		if err != nil {
			t.Fatalf("%s query in %s: %v", network, cell, err)
		}
		if got := sorted(addrs(t, resp)); len(got) != 3 || got[0] != b0 {
			t.Errorf("%s: %v, want backend's 3 addresses", network, resp)
		}
	}
	// The sockets are the cell's: its /proc/net lists them, the test's own
	// namespace does not. (Nothing is sent from the test's namespace: there
	// 169.254.0.2 routes to the machine's uplink.)
	for _, proto := range []string{"udp", "tcp"} {
		var inCell bool
		err := netns.Do(cell, func() (err error) {
			inCell, err = bound(proto)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		outside, err := bound(proto)
		if err != nil {
			t.Fatal(err)
		}
		if !inCell || outside {
			t.Errorf("%s socket on %s: in the cell %v, in the test's namespace %v; want only in the cell", proto, addr, inCell, outside)
		}
	}
}

// bound reports whether /proc/thread-self/net/PROTO (the calling thread's
// namespace) lists a socket bound to 169.254.0.2:53.
func bound(proto string) (bool, error) {
	b, err := os.ReadFile("/proc/thread-self/net/" + proto)
	if err != nil {
		return false, err
	}
	return strings.Contains(string(b), " 0200FEA9:0035 "), nil
}

func TestAddAddressNeedsNamespace(t *testing.T) {
	if err := dns.AddAddress("", dns.DefaultAddr); err == nil {
		t.Error(`AddAddress("") = nil, want an error: never the process's own namespace`)
	}
	if err := dns.AddAddress("/run/netns/"+dataplanetest.Prefix+"missing", dns.DefaultAddr); err == nil {
		t.Error("AddAddress(missing namespace) = nil, want an error")
	}
}

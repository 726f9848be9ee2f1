package ipam

import (
	"errors"
	"net/netip"
	"testing"
)

func TestPool(t *testing.T) {
	p, err := NewPool(DefaultOverlay, DefaultSubnetPrefix)
	if err != nil {
		t.Fatal(err)
	}
	if p.Size() != 255 {
		t.Errorf("Size() = %d, want 255", p.Size())
	}
	for i, want := range map[int]string{0: "10.255.1.0/24", 1: "10.255.2.0/24", 254: "10.255.255.0/24"} {
		if got := p.Subnet(i); got.String() != want {
			t.Errorf("Subnet(%d) = %s, want %s", i, got, want)
		}
		if got, ok := p.Index(netip.MustParsePrefix(want)); !ok || got != i {
			t.Errorf("Index(%s) = %d, %v, want %d", want, got, ok, i)
		}
	}
	for _, s := range []string{"10.255.0.0/24", "10.254.1.0/24", "10.255.1.0/25", "10.255.1.5/24"} {
		if i, ok := p.Index(netip.MustParsePrefix(s)); ok {
			t.Errorf("Index(%s) = %d, true; want not leasable", s, i)
		}
	}
	used := map[netip.Prefix]bool{}
	for i := 0; i < p.Size(); i++ {
		s, err := p.FirstFree(used)
		if err != nil {
			t.Fatalf("FirstFree after %d = %v", i, err)
		}
		used[s] = true
	}
	if _, err := p.FirstFree(used); !errors.Is(err, ErrFull) {
		t.Errorf("FirstFree(full) = %v, want ErrFull", err)
	}
}

func TestNewPoolErrors(t *testing.T) {
	for _, tt := range []struct {
		overlay string
		bits    int
	}{{"10.255.0.0/16", 16}, {"10.255.0.0/16", 31}, {"fd00::/64", 96}, {"10.0.0.0/4", 30}} {
		if _, err := NewPool(netip.MustParsePrefix(tt.overlay), tt.bits); err == nil {
			t.Errorf("NewPool(%s, %d) = nil error, want one", tt.overlay, tt.bits)
		}
	}
	if p, err := NewPool(netip.MustParsePrefix("10.10.0.0/22"), 24); err != nil || p.Size() != 3 {
		t.Errorf("NewPool(10.10.0.0/22, 24) = %v, %v; want 3 subnets", p.Size(), err)
	}
}

func TestNextAddr(t *testing.T) {
	subnet := netip.MustParsePrefix("10.255.7.0/24")
	used := map[netip.Addr]bool{}
	a, err := NextAddr(subnet, used, netip.Addr{})
	if err != nil || a.String() != "10.255.7.2" {
		t.Fatalf("NextAddr(empty) = %v, %v; want 10.255.7.2", a, err)
	}
	used[a] = true
	b, _ := NextAddr(subnet, used, a)
	if b.String() != "10.255.7.3" {
		t.Errorf("NextAddr after .2 = %v, want .3", b)
	}
	// A released address is not reused at once: allocation moves on.
	delete(used, a)
	used[b] = true
	c, _ := NextAddr(subnet, used, b)
	if c.String() != "10.255.7.4" {
		t.Errorf("NextAddr after releasing .2 = %v, want .4", c)
	}
	// Wraps after .254 and reports full.
	for x := FirstHost(subnet); x.Compare(LastHost(subnet)) <= 0; x = x.Next() {
		used[x] = true
	}
	delete(used, netip.MustParseAddr("10.255.7.9"))
	if got, _ := NextAddr(subnet, used, LastHost(subnet)); got.String() != "10.255.7.9" {
		t.Errorf("NextAddr wrap = %v, want 10.255.7.9", got)
	}
	used[netip.MustParseAddr("10.255.7.9")] = true
	if _, err := NextAddr(subnet, used, c); !errors.Is(err, ErrFull) {
		t.Errorf("NextAddr(full) = %v, want ErrFull", err)
	}
	if LastHost(subnet).String() != "10.255.7.254" {
		t.Errorf("LastHost = %v", LastHost(subnet))
	}
}

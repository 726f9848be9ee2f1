package dataplane

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
)

// benchPolicy is a cell with 100 local instances and n allows from 1,000
// apps to them.
func benchPolicy(n int) Policy {
	p := Policy{Enforce: true, DenyLogGroup: 1}
	var dsts []netip.Addr
	for i := range 100 {
		ip := netip.AddrFrom4([4]byte{10, 255, 1, byte(2 + i)})
		dsts = append(dsts, ip)
		p.Locals = append(p.Locals, Local{IP: ip, Tag: uint16(100 + i)})
	}
	p.Allows = manyAllows(n, dsts...)
	return p
}

// BenchmarkSetPolicyFull creates the table with 10,000 allows among 1,000
// apps in a namespace that has none.
func BenchmarkSetPolicyFull(b *testing.B) {
	dataplanetest.RequireRoot(b)
	d := New(dataplanetest.Namespace(b, "bench-full"), nil)
	p := benchPolicy(10000)
	for b.Loop() {
		b.StopTimer()
		if err := d.TeardownPolicy(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := d.Set(context.Background(), Desired{Policy: &p}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSetPolicyAddOne adds (and, on the next iteration, removes) one
// single-port allow with n single-port allows present.
func BenchmarkSetPolicyAddOne(b *testing.B) { benchAddOne(b, 0) }

// BenchmarkSetPolicyAddOneRange is BenchmarkSetPolicyAddOne with port
// ranges, which the kernel keeps in a concatenated-range (pipapo) set.
func BenchmarkSetPolicyAddOneRange(b *testing.B) { benchAddOne(b, 1) }

func benchAddOne(b *testing.B, width uint16) {
	for _, n := range []int{100, 10000} {
		b.Run(fmt.Sprintf("present=%d", n), func(b *testing.B) {
			dataplanetest.RequireRoot(b)
			d := New(dataplanetest.Namespace(b, fmt.Sprintf("bench-add%d-%d", width, n)), nil)
			base := benchPolicy(n)
			for i := range base.Allows {
				base.Allows[i].EndPort += width
			}
			more := base
			more.Allows = append(append([]Allow(nil), base.Allows...), Allow{DestIP: base.Locals[0].IP, SrcTag: 7, Protocol: "tcp", StartPort: 443, EndPort: 443 + width})
			if _, err := d.Set(context.Background(), Desired{Policy: &base}); err != nil {
				b.Fatal(err)
			}
			i := 0
			for b.Loop() {
				p := more
				if i%2 == 1 {
					p = base
				}
				i++
				if ch, err := d.Set(context.Background(), Desired{Policy: &p}); err != nil || !ch.Policy {
					b.Fatalf("Set = %+v, %v", ch, err)
				}
			}
		})
	}
}

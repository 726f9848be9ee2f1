package controller

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/ipam"
	"github.com/trellis-c2c/trellis/internal/store"
	"github.com/trellis-c2c/trellis/internal/store/storetest"
)

// BenchmarkCellFeedCompile measures what one change costs the cells'
// feed at Cloud Foundry's validated scale — 50 cells, 20,000 apps, 60,000
// policies, 1,000 attached instances — against 1,000 policies: one
// snapshot of the store and one compile of every cell (what a policy add
// waits for before any cell hears of it):
//
//	TRELLIS_TEST_POSTGRES=postgres://… go test -run '^$' -bench CellFeedCompile -benchtime 10x ./internal/controller/
func BenchmarkCellFeedCompile(b *testing.B) {
	for _, engine := range storetest.Engines {
		for _, nPolicies := range []int{1000, 60000} {
			b.Run(fmt.Sprintf("%s/policies=%d", engine, nPolicies), func(b *testing.B) {
				benchFeed(b, storetest.Open(b, engine), nPolicies)
			})
		}
	}
}

func benchFeed(b *testing.B, st *store.Store, nPolicies int) {
	ctx := context.Background()
	const nCells, nApps, nInstances = 50, 20000, 1000
	pool, _ := ipam.NewPool(ipam.DefaultOverlay, ipam.DefaultSubnetPrefix)
	if err := st.OverlaySettings(ctx, pool); err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if _, err := ensureInstanceCA(ctx, st, log); err != nil {
		b.Fatal(err)
	}
	apps := loadApps(b, st, nApps, nPolicies)
	cells := make([]store.Cell, nCells)
	for i := range cells {
		hash := []byte(fmt.Sprintf("join-%d", i))
		if err := st.CreateJoinToken(ctx, hash, time.Now().Add(time.Hour)); err != nil {
			b.Fatal(err)
		}
		c, err := st.JoinCell(ctx, hash, fmt.Sprintf("cell%d", i), netip.AddrFrom4([4]byte{198, 51, 100, byte(10 + i)}), pool)
		if err != nil {
			b.Fatal(err)
		}
		cells[i] = c
	}
	// 20 instances per cell, of the first 1,000 apps (each in policies).
	for i := range nInstances {
		c := cells[i%nCells]
		ip := c.Subnet.Addr().Next().Next()
		for range i / nCells {
			ip = ip.Next()
		}
		if err := st.RegisterInstance(ctx, c.GUID, store.Instance{GUID: uuid.NewString(), AppGUID: apps[i], IP: ip, ContainerID: fmt.Sprint(i)}); err != nil {
			b.Fatal(err)
		}
	}
	ca, err := identity.LoadOrCreateCA(b.TempDir(), "bench CA")
	if err != nil {
		b.Fatal(err)
	}
	s := NewServer(st, ca, pool, InstanceIdentity{}, log)
	if err := s.feed.compileAtLeast(ctx, 0); err != nil {
		b.Fatal(err)
	}
	for i := 0; b.Loop(); i++ {
		p := store.Policy{SourceApp: apps[i%nInstances], DestApp: apps[(i+7)%nInstances], Protocol: "udp", StartPort: 1000 + i, EndPort: 1000 + i}
		if err := st.CreatePolicies(ctx, []store.Policy{p}, store.CreatePoliciesOptions{}); err != nil {
			b.Fatal(err)
		}
		rev, err := st.Revision(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.feed.compileAtLeast(ctx, rev); err != nil {
			b.Fatal(err)
		}
	}
}

package agent_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	vnetns "github.com/vishvananda/netns"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/controller"
	"github.com/trellis-c2c/trellis/internal/dataplane"
)

// policyTable is what a cell's trellis table holds, read from the kernel.
type policyTable struct {
	tags   map[netip.Addr]uint32 // src_tag: the tag a local address's packets are marked with
	locals map[netip.Addr]string // local_ids: the host veth each local address must come from
	allows int                   // elements of allow_ports
}

// readPolicyTable reads the cell's trellis table in the namespace at path.
func readPolicyTable(path string) (policyTable, error) {
	pt := policyTable{tags: map[netip.Addr]uint32{}, locals: map[netip.Addr]string{}}
	fd, err := vnetns.GetFromPath(path)
	if err != nil {
		return pt, err
	}
	defer fd.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(fd)))
	if err != nil {
		return pt, err
	}
	table := &nftables.Table{Name: dataplane.PolicyTable, Family: nftables.TableFamilyINet}
	elements := func(name string) ([]nftables.SetElement, error) {
		s, err := c.GetSetByName(table, name)
		if err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
		return c.GetSetElements(s)
	}
	tags, err := elements("src_tag")
	if err != nil {
		return pt, err
	}
	for _, e := range tags {
		ip, _ := netip.AddrFromSlice(e.Key)
		var tag uint32
		for i := len(e.Val) - 1; i >= 0; i-- { // host byte order (little endian here)
			tag = tag<<8 | uint32(e.Val[i])
		}
		pt.tags[ip] = tag
	}
	locals, err := elements("local_ids")
	if err != nil {
		return pt, err
	}
	for _, e := range locals {
		// interface name (16 bytes), address, MAC (padded)
		if len(e.Key) < 20 {
			continue
		}
		name := e.Key[:16]
		if i := indexZero(name); i >= 0 {
			name = name[:i]
		}
		ip, _ := netip.AddrFromSlice(e.Key[16:20])
		pt.locals[ip] = string(name)
	}
	allows, err := elements("allow_ports")
	if err != nil {
		return pt, err
	}
	pt.allows = len(allows)
	return pt, nil
}

func indexZero(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

// TestAddStepsInvariants adds containers one by one and many at once, and
// checks at the moment each ADD returns — its registration, certificate
// and policy table ran while the plugin wired it — that the container's
// address is marked with its app's tag and policed in the cell's policy
// table (packets from its veth pass nowhere before that), and that its
// key and certificate files exist and name its address. DEL of them all,
// also at once, leaves no element, file or registration behind.
func TestAddStepsInvariants(t *testing.T) {
	w := newWorld(t, "steps", 1)
	c := startController(t, w, controller.Config{StateDir: t.TempDir(), Listen: freePort(t)})
	cfg := w.agentCfg(t, c, 1)
	a := w.startAgent(t, cfg)
	p := installPlugin(t)
	l := cniList(t, a)
	src, dst := createApp(t, c, "src").GUID, createApp(t, c, "dst").GUID
	ctx := context.Background()
	if err := c.admin.CreatePolicies(ctx, []api.Policy{{Source: api.Source{ID: src},
		Destination: api.Destination{ID: dst, Protocol: "tcp", Ports: api.Ports{Start: echoPort, End: echoPort}}}}); err != nil {
		t.Fatalf("CreatePolicies: %v", err)
	}
	d := w.newContainer("dst", 1, dst, "inst-dst")
	if err := w.add(p, l, d, d.rt); err != nil {
		t.Fatalf("ADD dst: %v", err)
	}
	echoServer(t, d.ns, echoPort)
	// dst's packets are marked once the agent has the policy, and so the
	// tags of both apps.
	poll(t, 30*time.Second, "the policy's tags in the cell's table", func() (bool, error) {
		pt, err := readPolicyTable(w.cellPath(1))
		return err == nil && pt.tags[d.ip] != 0, err
	})

	// check is run the moment an ADD returns.
	check := func(ctr *container, guid string) error {
		var errs []error
		pt, err := readPolicyTable(w.cellPath(1))
		if err != nil {
			return fmt.Errorf("%s: read the policy table: %w", ctr.id, err)
		}
		if pt.tags[ctr.ip] == 0 {
			errs = append(errs, fmt.Errorf("%s (%s): no tag for its address in the table when ADD returned", ctr.id, ctr.ip))
		}
		if got, want := pt.locals[ctr.ip], dataplane.HostVethName(ctr.ip); got != want {
			errs = append(errs, fmt.Errorf("%s (%s): local element for veth %q when ADD returned, want %q", ctr.id, ctr.ip, got, want))
		}
		dir := filepath.Join(cfg.StateDir, "credentials", guid)
		kp, err := tls.LoadX509KeyPair(filepath.Join(dir, "instance.crt"), filepath.Join(dir, "instance.key"))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: credentials when ADD returned: %w", ctr.id, err))
		case len(kp.Leaf.IPAddresses) != 1 || kp.Leaf.IPAddresses[0].String() != ctr.ip.String():
			errs = append(errs, fmt.Errorf("%s: certificate for %v, want %s", ctr.id, kp.Leaf.IPAddresses, ctr.ip))
		}
		return errors.Join(errs...)
	}

	var ctrs []*container
	var guids []string
	addAll := func(n int, atOnce bool, name string) {
		var wg sync.WaitGroup
		start := len(ctrs)
		for i := range n {
			guids = append(guids, instGUID(fmt.Sprintf("inst-%s-%d", name, i)))
			ctrs = append(ctrs, w.newContainer(fmt.Sprintf("%s-%d", name, i), 1, src, fmt.Sprintf("inst-%s-%d", name, i)))
		}
		for i := start; i < len(ctrs); i++ {
			one := func() {
				if err := w.add(p, l, ctrs[i], ctrs[i].rt); err != nil {
					t.Errorf("ADD %s: %v", ctrs[i].id, err)
					return
				}
				if err := check(ctrs[i], guids[i]); err != nil {
					t.Error(err)
				}
			}
			if atOnce {
				wg.Go(one)
			} else {
				one()
			}
		}
		wg.Wait()
	}
	addAll(3, false, "seq")
	addAll(8, true, "burst")
	if t.Failed() {
		t.FailNow()
	}
	tags := map[uint32]bool{}
	pt, err := readPolicyTable(w.cellPath(1))
	if err != nil {
		t.Fatal(err)
	}
	for _, ctr := range ctrs {
		tags[pt.tags[ctr.ip]] = true
	}
	if len(tags) != 1 || pt.tags[d.ip] == 0 || tags[pt.tags[d.ip]] {
		t.Errorf("tags of the src containers %v, dst %d: want one tag, src's, not dst's", tags, pt.tags[d.ip])
	}
	for _, ctr := range []*container{ctrs[0], ctrs[len(ctrs)-1]} {
		if err := talk(t, ctr, d, echoPort); err != nil {
			t.Errorf("TCP from %s to dst, allowed: %v", ctr.id, err)
		}
	}
	waitInstances(t, c, src, func() []string {
		var want []string
		for i, ctr := range ctrs {
			want = append(want, fmt.Sprintf("%s RUNNING %s", guids[i], ctr.ip))
		}
		return want
	}()...)

	// DEL, all at once.
	var wg sync.WaitGroup
	for _, ctr := range ctrs {
		wg.Go(func() {
			if err := w.del(p, l, ctr); err != nil {
				t.Errorf("DEL %s: %v", ctr.id, err)
			}
		})
	}
	wg.Wait()
	pt, err = readPolicyTable(w.cellPath(1))
	if err != nil {
		t.Fatal(err)
	}
	for i, ctr := range ctrs {
		if _, ok := pt.locals[ctr.ip]; ok {
			t.Errorf("%s: local element still in the table after DEL", ctr.id)
		}
		if _, err := os.Stat(filepath.Join(cfg.StateDir, "credentials", guids[i])); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: credentials after DEL: %v, want none", ctr.id, err)
		}
	}
	waitInstances(t, c, src)
}

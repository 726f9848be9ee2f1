package agent_test

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/cli"
	"github.com/trellis-c2c/trellis/internal/controller"
	"github.com/trellis-c2c/trellis/internal/dataplane"
)

// runControllerCommand runs `trellis controller ARGS...` (cli.Main, as the
// binary does) until the test ends, waits until it serves its API, and
// returns it as a ctrl for the harness.
func runControllerCommand(t *testing.T, args ...string) *ctrl {
	t.Helper()
	dir := t.TempDir()
	args = append([]string{"controller", "--state-dir", dir, "--listen", freePort(t)}, args...)
	logs := &testWriter{t: t}
	t.Cleanup(logs.close)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- cli.Main(ctx, args, strings.NewReader(""), io.Discard, logs) }()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("trellis %s exited %d after its cancellation, want 0", strings.Join(args, " "), code)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("trellis %s did not return within 30s of its cancellation", strings.Join(args, " "))
		}
	})
	c := &ctrl{t: t, cfg: controller.Config{StateDir: dir}}
	poll(t, 30*time.Second, "trellis controller serving its API", func() (bool, error) {
		select {
		case code := <-done:
			done <- code
			t.Fatalf("trellis %s exited %d before it served", strings.Join(args, " "), code)
		default:
		}
		cc, err := api.LoadClientConfig(filepath.Join(dir, controller.AdminConfigFile))
		if err != nil {
			return false, err
		}
		if c.admin, err = api.NewClient(cc); err != nil {
			return false, err
		}
		c.url = cc.APIURL
		_, err = c.admin.Cells(ctx)
		return err == nil, err
	})
	// As startController: these tests are not about policy.
	if err := c.admin.SetEnforcement(ctx, false); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestControllerOverlayFlags runs the controller command with a
// non-default --overlay-cidr and --cell-subnet-prefix: cells lease their
// subnets from that overlay, in subnets of that size, and their dataplanes
// carry traffic between containers with addresses from it.
func TestControllerOverlayFlags(t *testing.T) {
	w := newWorld(t, "ovl", 2)
	c := runControllerCommand(t, "--overlay-cidr", "10.77.0.0/20", "--cell-subnet-prefix", "26")
	a1 := w.startAgent(t, w.agentCfg(t, c, 1))
	a2 := w.startAgent(t, w.agentCfg(t, c, 2))

	cells := cellsByName(t, c)
	got := map[string]string{}
	for name, cell := range cells {
		got[name] = cell.Subnet.String()
	}
	// The first block of the overlay is never leased (ipam.Pool).
	want := map[string]string{"cell1": "10.77.0.64/26", "cell2": "10.77.0.128/26"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("cell leases (-want +got):\n%s", diff)
	}
	for i, r := range map[int]*running{1: a1, 2: a2} {
		if st := agentStatus(t, r.cfg.Socket); st.Subnet != want[r.cfg.Name] || !st.Ready {
			t.Errorf("status of cell%d's agent = %+v, want %s, ready", i, st, want[r.cfg.Name])
		}
	}
	for i, other := range map[int]string{1: "cell2", 2: "cell1"} {
		waitProgrammed(t, w.cellPath(i), peerOf(t, cells[other]))
		// The VTEP holds the subnet's first address with the overlay's
		// prefix length.
		h := handle(t, w.cellPath(i))
		vtep, err := h.LinkByName(dataplane.VTEPName)
		if err != nil {
			t.Fatalf("cell%d: %s: %v", i, dataplane.VTEPName, err)
		}
		addrs, err := h.AddrList(vtep, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		var have []string
		for _, a := range addrs {
			have = append(have, a.IPNet.String())
		}
		wantAddr := netip.PrefixFrom(netip.MustParsePrefix(want[fmt.Sprintf("cell%d", i)]).Addr(), 20).String()
		if diff := cmp.Diff([]string{wantAddr}, have); diff != "" {
			t.Errorf("cell%d: addresses of %s (-want +got):\n%s", i, dataplane.VTEPName, diff)
		}
	}

	p := installPlugin(t)
	l1, l2 := cniList(t, a1), cniList(t, a2)
	app := createApp(t, c, "web").GUID
	ctrA, ctrB := w.addPair(t, p, l1, l2, app)
	for _, x := range []*container{ctrA, ctrB} {
		if s := netip.MustParsePrefix(want[fmt.Sprintf("cell%d", x.cell)]); !s.Contains(x.ip) {
			t.Errorf("%s got %s, want an address in %s", x.id, x.ip, s)
		}
	}
	echoServer(t, ctrB.ns, echoPort)
	if err := talk(t, ctrA, ctrB, echoPort); err != nil {
		t.Errorf("TCP from a (cell1) to b (cell2): %v", err)
	}
	if err := w.del(p, l1, ctrA); err != nil {
		t.Errorf("DEL a: %v", err)
	}
	if err := w.del(p, l2, ctrB); err != nil {
		t.Errorf("DEL b: %v", err)
	}
}

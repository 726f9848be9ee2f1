package agent_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/controller"
	"github.com/trellis-c2c/trellis/internal/dataplane"
	"github.com/trellis-c2c/trellis/internal/ipam"
)

const echoPort = 8080

// freePort returns a loopback TCP port that was free a moment ago, so a
// controller can be restarted on the port it had.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func createApp(t *testing.T, c *ctrl, name string) api.App {
	t.Helper()
	return createAppWith(t, c.admin, name)
}

// createAppWith creates app name in a space of its own through admin.
func createAppWith(t *testing.T, admin *api.Client, name string) api.App {
	t.Helper()
	ctx := context.Background()
	org, err := admin.CreateOrg(ctx, "org-"+name)
	if err != nil {
		t.Fatal(err)
	}
	space, err := admin.CreateSpace(ctx, org.GUID, "space-"+name)
	if err != nil {
		t.Fatal(err)
	}
	app, err := admin.CreateApp(ctx, space.GUID, name)
	if err != nil {
		t.Fatal(err)
	}
	return app
}

// instances returns the app's instances as "GUID STATE IP", sorted.
func instances(t *testing.T, c *ctrl, app string) []string {
	t.Helper()
	ins, err := c.admin.Instances(context.Background(), app)
	if err != nil {
		t.Fatalf("Instances: %v", err)
	}
	var out []string
	for _, in := range ins {
		out = append(out, fmt.Sprintf("%s %s %s", in.GUID, in.State, in.IP))
	}
	slices.Sort(out)
	return out
}

func runningAs(name string, c *container) string {
	return fmt.Sprintf("%s RUNNING %s", instGUID(name), c.ip)
}

func wantInstances(t *testing.T, c *ctrl, app string, want ...string) {
	t.Helper()
	slices.Sort(want)
	if diff := cmp.Diff(want, instances(t, c, app)); diff != "" {
		t.Errorf("instances of the app (-want +got):\n%s", diff)
	}
}

// waitInstances waits until the controller lists want as the app's
// instances: registrations made while a plugin wires its container land
// when they do.
func waitInstances(t *testing.T, c *ctrl, app string, want ...string) {
	t.Helper()
	slices.Sort(want)
	var diff string
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if diff = cmp.Diff(want, instances(t, c, app)); diff == "" {
			return
		}
	}
	t.Errorf("instances of the app (-want +got):\n%s", diff)
}

func wantLinks(t *testing.T, what, ns string, want []string) {
	t.Helper()
	if diff := cmp.Diff(want, linkNames(t, ns)); diff != "" {
		t.Errorf("links in %s (-want +got):\n%s", what, diff)
	}
}

func wantNoRecord(t *testing.T, r *running, c *container) {
	t.Helper()
	if code, _, err := getContainer(r.cfg.Socket, c.id); err != nil || code != http.StatusNotFound {
		t.Errorf("GET /v1/containers/%s = %d, %v; want 404", c.id, code, err)
	}
	if _, err := os.Stat(filepath.Join(r.cfg.StateDir, "containers", c.id+".json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("record file of %s: %v, want none", c.id, err)
	}
}

func TestCNISocketAPI(t *testing.T) {
	w := newWorld(t, "cni", 2)
	c := startController(t, w, controller.Config{StateDir: t.TempDir(), Listen: freePort(t)})
	a1, a2 := w.startTwo(t, c)
	p := installPlugin(t)
	l1, l2 := cniList(t, a1), cniList(t, a2)
	app := createApp(t, c, "web").GUID

	// ADD into namespaces trellis did not make, one on each cell.
	ctrA, ctrB := w.addPair(t, p, l1, l2, app)
	for _, x := range []struct {
		c      *container
		subnet string
	}{{ctrA, "10.255.1.0/24"}, {ctrB, "10.255.2.0/24"}} {
		if !netip.MustParsePrefix(x.subnet).Contains(x.c.ip) {
			t.Errorf("%s got %s, want an address in %s", x.c.id, x.c.ip, x.subnet)
		}
	}
	conn := echoConn(t, ctrA, ctrB, "TCP from a (cell1) to b (cell2)", "a to b")
	wantInstances(t, c, app, runningAs("inst-a", ctrA), runningAs("inst-b", ctrB))
	// Each ADD says in the agent's log how long its steps took.
	for _, x := range []*container{ctrA, ctrB} {
		if got := w.logs.logged("msg=attached", "container="+x.id, "register=", "policy=", "certificate=", "took="); len(got) != 1 {
			t.Errorf("agent log lines for the ADD of %s with its steps' times: %q, want one", x.id, got)
		}
	}
	if err := w.inCell(1, func(ctx context.Context) error { return p.cni.CheckNetworkList(ctx, l1, ctrA.rt) }); err != nil {
		t.Errorf("CHECK a: %v", err)
	}
	for i, l := range map[int]*libcni.NetworkConfigList{1: l1, 2: l2} {
		if err := w.inCell(i, func(ctx context.Context) error { return p.cni.GetStatusNetworkList(ctx, l) }); err != nil {
			t.Errorf("STATUS on cell%d: %v", i, err)
		}
	}

	t.Log("duplicate container ID")
	cell1Links := linkNames(t, w.cellPath(1))
	dup := &container{id: ctrA.id, ns: w.namespace("ctr-dup"), cell: 1}
	rt := *ctrA.rt
	rt.NetNS = dup.ns
	err := w.add(p, l1, dup, &rt)
	wantErrorSays(t, "ADD of a container ID already attached", err, ctrA.id, "already attached")
	wantLinks(t, "cell1 after a duplicate ADD", w.cellPath(1), cell1Links)
	wantLinks(t, "the namespace of the duplicate", dup.ns, []string{"lo"})
	if code, rec, err := getContainer(a1.cfg.Socket, ctrA.id); err != nil || code != http.StatusOK || rec.IP != ctrA.ip.String() || !rec.Committed {
		t.Errorf("GET /v1/containers/%s after a duplicate ADD = %d %+v %v, want 200 with %s committed", ctrA.id, code, rec, err, ctrA.ip)
	}
	if err := roundTrip(conn, "still a to b"); err != nil {
		t.Errorf("TCP from a to b after a duplicate ADD: %v", err)
	}
	wantInstances(t, c, app, runningAs("inst-a", ctrA), runningAs("inst-b", ctrB))

	t.Log("DEL, twice")
	ctrC := w.newContainer("ctr-c", 1, app, "inst-c")
	if err := w.add(p, l1, ctrC, ctrC.rt); err != nil {
		t.Fatalf("ADD c: %v", err)
	}
	wantInstances(t, c, app, runningAs("inst-a", ctrA), runningAs("inst-b", ctrB), runningAs("inst-c", ctrC))
	if err := talk(t, ctrC, ctrB, echoPort); err != nil {
		t.Errorf("TCP from c to b: %v", err)
	}
	if err := w.del(p, l1, ctrC); err != nil {
		t.Fatalf("DEL c: %v", err)
	}
	wantInstances(t, c, app, runningAs("inst-a", ctrA), runningAs("inst-b", ctrB))
	wantNoRecord(t, a1, ctrC)
	wantLinks(t, "cell1 after DEL", w.cellPath(1), cell1Links)
	wantLinks(t, "c after DEL", ctrC.ns, []string{"lo"})
	if err := w.del(p, l1, ctrC); err != nil {
		t.Errorf("second DEL c: %v", err)
	}

	ctrE := w.newContainer("ctr-e", 1, app, "inst-e")
	if err := w.add(p, l1, ctrE, ctrE.rt); err != nil {
		t.Fatalf("ADD e: %v", err)
	}

	t.Log("controller down")
	took := c.stop()
	t.Logf("controller.Run returned %v after its cancellation", took)
	if err := roundTrip(conn, "a to b, controller down"); err != nil {
		t.Errorf("open TCP connection from a to b with the controller down: %v", err)
	}
	if err := talk(t, ctrA, ctrB, echoPort); err != nil {
		t.Errorf("new TCP connection from a to b with the controller down: %v", err)
	}
	// DEL works, and the agent tells the controller when it is back.
	if err := w.del(p, l1, ctrE); err != nil {
		t.Errorf("DEL e with the controller down: %v", err)
	}
	wantLinks(t, "cell1 after DEL with the controller down", w.cellPath(1), cell1Links)
	wantLinks(t, "e after DEL", ctrE.ns, []string{"lo"})
	ctrD := w.newContainer("ctr-d", 1, app, "inst-d")
	err = w.add(p, l1, ctrD, ctrD.rt)
	wantErrorSays(t, "ADD with the controller down", err, "controller")
	var cniErr *types.Error
	if errors.As(err, &cniErr) && cniErr.Code != types.ErrTryAgainLater {
		t.Errorf("ADD with the controller down: CNI error code %d, want %d (try again later)", cniErr.Code, types.ErrTryAgainLater)
	}
	wantLinks(t, "cell1 after a failed ADD", w.cellPath(1), cell1Links)
	wantLinks(t, "d after a failed ADD", ctrD.ns, []string{"lo"})
	wantNoRecord(t, a1, ctrD)

	t.Log("controller back")
	c.start()
	if err := w.add(p, l1, ctrD, ctrD.rt); err != nil {
		t.Fatalf("ADD d with the controller back: %v", err)
	}
	want := []string{runningAs("inst-a", ctrA), runningAs("inst-b", ctrB), runningAs("inst-d", ctrD)}
	slices.Sort(want) // as instances lists them
	// The controller forgets e when the agent's retried DELETE commits;
	// the agent drops e's record when that DELETE's answer arrives, a
	// moment later. Both must happen.
	took = poll(t, 30*time.Second, "deregistration of e, deleted while the controller was down", func() (bool, error) {
		_, err := os.Stat(filepath.Join(a1.cfg.StateDir, "containers", ctrE.id+".json"))
		return errors.Is(err, os.ErrNotExist) && slices.Equal(instances(t, c, app), want), nil
	})
	t.Logf("e deregistered %v after the controller came back", took)
	wantNoRecord(t, a1, ctrE)
	if err := talk(t, ctrD, ctrB, echoPort); err != nil {
		t.Errorf("TCP from d to b: %v", err)
	}
	if err := roundTrip(conn, "a to b, controller back"); err != nil {
		t.Errorf("open TCP connection from a to b with the controller back: %v", err)
	}
}

func TestRestartAdoption(t *testing.T) {
	w := newWorld(t, "adopt", 2)
	c := startController(t, w, controller.Config{StateDir: t.TempDir()})
	a1, a2 := w.startTwo(t, c)
	p := installPlugin(t)
	l1, l2 := cniList(t, a1), cniList(t, a2)
	app := createApp(t, c, "web").GUID

	ctrA, ctrB := w.addPair(t, p, l1, l2, app)
	conn := echoConn(t, ctrA, ctrB, "TCP from a to b", "before the restart")
	h1 := handle(t, w.cellPath(1))
	before, err := h1.LinkList()
	if err != nil {
		t.Fatal(err)
	}

	cfg := a1.cfg
	if err := a1.stop(); err != nil {
		t.Fatalf("agent.Run(cell1) = %v after cancel, want nil", err)
	}
	if err := roundTrip(conn, "while the agent is down"); err != nil {
		t.Errorf("TCP from a to b while cell1's agent is down: %v", err)
	}
	cfg.JoinToken = ""
	a1 = w.startAgent(t, cfg)

	code, rec, err := getContainer(a1.cfg.Socket, ctrA.id)
	if err != nil || code != http.StatusOK || rec.IP != ctrA.ip.String() || !rec.Committed {
		t.Errorf("GET /v1/containers/%s after the restart = %d %+v %v, want 200 with %s committed", ctrA.id, code, rec, err, ctrA.ip)
	}
	if err := roundTrip(conn, "after the restart"); err != nil {
		t.Errorf("TCP connection from a to b opened before the restart: %v", err)
	}
	after, err := h1.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	linkIDs := func(ls []netlink.Link) []string {
		var out []string
		for _, l := range ls {
			out = append(out, fmt.Sprintf("%d %s", l.Attrs().Index, l.Attrs().Name))
		}
		return out
	}
	if diff := cmp.Diff(linkIDs(before), linkIDs(after)); diff != "" {
		t.Errorf("links of cell1 across the restart (-before +after):\n%s", diff)
	}
	wantInstances(t, c, app, runningAs("inst-a", ctrA), runningAs("inst-b", ctrB))

	// The adopted container is the agent's to release.
	if err := w.del(p, l1, ctrA); err != nil {
		t.Fatalf("DEL a after the restart: %v", err)
	}
	wantNoRecord(t, a1, ctrA)
	wantInstances(t, c, app, runningAs("inst-b", ctrB))
}

func TestCellSubnetFull(t *testing.T) {
	w := newWorld(t, "full", 1)
	// One cell of /30: room for one container (.0 is the VTEP, .1 kept
	// back, .3 broadcast).
	c, a, p, l, app := w.smallCell(t, "10.10.0.0/29", 30)
	cellLinks := linkNames(t, w.cellPath(1))

	one := w.newContainer("ctr-1", 1, app, "inst-1")
	if err := w.add(p, l, one, one.rt); err != nil {
		t.Fatalf("ADD 1: %v", err)
	}
	if one.ip != netip.MustParseAddr("10.10.0.6") {
		t.Errorf("ADD 1 got %s, want 10.10.0.6", one.ip)
	}
	two := w.newContainer("ctr-2", 1, app, "inst-2")
	err := w.add(p, l, two, two.rt)
	wantErrorSays(t, "ADD into a full cell subnet", err, "10.10.0.4/30", "in use")
	wantLinks(t, "two after a failed ADD", two.ns, []string{"lo"})
	wantNoRecord(t, a, two)
	wantInstances(t, c, app, runningAs("inst-1", one))

	// DEL frees the address for the next container.
	if err := w.del(p, l, one); err != nil {
		t.Fatalf("DEL 1: %v", err)
	}
	wantLinks(t, "the cell after DEL", w.cellPath(1), cellLinks)
	if err := w.add(p, l, two, two.rt); err != nil {
		t.Fatalf("ADD 2 after DEL 1: %v", err)
	}
	if two.ip != one.ip {
		t.Errorf("ADD 2 after DEL 1 got %s, want the freed %s", two.ip, one.ip)
	}
	wantInstances(t, c, app, runningAs("inst-2", two))
}

// allocate asks the agent at sock for an address, as the plugin's ADD does
// first, without wiring anything.
func allocate(t *testing.T, sock string, req api.AllocateRequest) api.Allocation {
	t.Helper()
	a, err := api.NewAgentClient(sock).Allocate(context.Background(), req)
	if err != nil {
		t.Fatalf("POST /v1/containers %s: %v, want 200", req.ContainerID, err)
	}
	return a
}

// smallCell starts a controller whose overlay is the given prefix cut into
// cell subnets of cellBits, the agent of cell 1 and the plugin, and
// creates app "web": for tests that fill a cell's subnet.
func (w *world) smallCell(t *testing.T, overlay string, cellBits int) (c *ctrl, a *running, p *plugin, l *libcni.NetworkConfigList, app string) {
	t.Helper()
	pool, err := ipam.NewPool(netip.MustParsePrefix(overlay), cellBits)
	if err != nil {
		t.Fatal(err)
	}
	c = startController(t, w, controller.Config{StateDir: t.TempDir(), Overlay: pool})
	a = w.startAgent(t, w.agentCfg(t, c, 1))
	p = installPlugin(t)
	return c, a, p, cniList(t, a), createApp(t, c, "web").GUID
}

// TestCNIGC: a runtime that lost a container (its result cache gone, its
// namespace still there) garbage-collects the network. The agent removes
// the stale container's wiring before it frees the address, so the next
// ADD given that address is wired; the containers the runtime still lists
// are left alone.
func TestCNIGC(t *testing.T) {
	w := newWorld(t, "gc", 1)
	// Cell subnets of /29: the VTEP, one address kept back, five for
	// containers.
	c, a, p, l, app := w.smallCell(t, "10.10.0.0/28", 29)
	subnet := netip.MustParsePrefix(agentStatus(t, a.cfg.Socket).Subnet)

	stale := w.newContainer("ctr-stale", 1, app, "inst-stale")
	if err := w.add(p, l, stale, stale.rt); err != nil {
		t.Fatalf("ADD stale: %v", err)
	}
	if stale.ip != ipam.FirstHost(subnet) {
		t.Fatalf("ADD stale got %s, want %s, the first container address of %s", stale.ip, ipam.FirstHost(subnet), subnet)
	}
	keep := w.newContainer("ctr-keep", 1, app, "inst-keep")
	if err := w.add(p, l, keep, keep.rt); err != nil {
		t.Fatalf("ADD keep: %v", err)
	}
	echoServer(t, keep.ns, echoPort)
	// The runtime also lists containers whose ADD has allocated but not yet
	// wired: they take the rest of the subnet, so the next address handed
	// out can only be the one GC frees.
	valid := []types.GCAttachment{{ContainerID: keep.id, IfName: "eth0"}}
	var allocated []string
	// The agent registers an allocated container with the controller
	// while its plugin wires it: the pending ones are instances too.
	var pending []string
	for i := 0; ; i++ {
		if i > 8 {
			t.Fatalf("subnet %s not full after allocating %v", subnet, allocated)
		}
		id := fmt.Sprintf("%s-pending-%d", w.prefix, i)
		al := allocate(t, a.cfg.Socket, api.AllocateRequest{ContainerID: id, NetNS: "/run/netns/" + id, IfName: "eth0",
			Identity: api.Identity{AppGUID: app, InstanceGUID: instGUID(id)}})
		valid = append(valid, types.GCAttachment{ContainerID: id, IfName: "eth0"})
		allocated = append(allocated, al.IP)
		pending = append(pending, fmt.Sprintf("%s RUNNING %s", instGUID(id), al.IP))
		if al.IP == ipam.LastHost(subnet).String() {
			break
		}
	}
	staleVeth := dataplane.HostVethName(stale.ip)
	if !slices.Contains(linkNames(t, w.cellPath(1)), staleVeth) {
		t.Fatalf("no host veth %s for the stale container in the cell", staleVeth)
	}

	// A runtime whose cache is gone: libcni finds no attachment to DEL and
	// passes the GC on to the plugin.
	lost := &plugin{cni: libcni.NewCNIConfigWithCacheDir(p.cni.Path, t.TempDir(), nil)}
	if err := w.inCell(1, func(ctx context.Context) error {
		return lost.cni.GCNetworkList(ctx, l, &libcni.GCArgs{ValidAttachments: valid})
	}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if slices.Contains(linkNames(t, w.cellPath(1)), staleVeth) {
		t.Errorf("host veth %s of the collected container is still in the cell", staleVeth)
	}
	wantLinks(t, "the collected container", stale.ns, []string{"lo"})
	wantNoRecord(t, a, stale)
	waitInstances(t, c, app, append([]string{runningAs("inst-keep", keep)}, pending...)...)
	// The listed containers keep their records and their wiring.
	for _, v := range valid {
		if code, _, err := getContainer(a.cfg.Socket, v.ContainerID); err != nil || code != http.StatusOK {
			t.Errorf("GET /v1/containers/%s after GC = %d, %v; want 200", v.ContainerID, code, err)
		}
	}
	if err := w.inCell(1, func(ctx context.Context) error { return p.cni.CheckNetworkList(ctx, l, keep.rt) }); err != nil {
		t.Errorf("CHECK keep after GC: %v", err)
	}

	// The freed address is the only one left; a new container gets it and
	// is wired.
	next := w.newContainer("ctr-next", 1, app, "inst-next")
	if err := w.add(p, l, next, next.rt); err != nil {
		t.Fatalf("ADD after GC: %v", err)
	}
	if next.ip != stale.ip {
		t.Errorf("ADD after GC got %s, want the freed %s", next.ip, stale.ip)
	}
	if err := talk(t, next, keep, echoPort); err != nil {
		t.Errorf("TCP from the new container to keep: %v", err)
	}
	waitInstances(t, c, app, append([]string{runningAs("inst-keep", keep), runningAs("inst-next", next)}, pending...)...)
	for _, x := range []*container{next, keep} {
		if err := w.del(p, l, x); err != nil {
			t.Errorf("DEL %s: %v", x.id, err)
		}
	}
}

package cni

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
	"github.com/trellis-c2c/trellis/internal/netns"
)

// The tests in this file run the plugin for real: the test binary is
// installed as trellis-cni (see TestMain) and libcni runs it in a "cell"
// network namespace to wire a "container" namespace, both created per run,
// against testAgent. They need root.

// testEnv is one run's world: a cell namespace, the agent of that cell, the
// plugin installed for libcni, and containers made on demand.
type testEnv struct {
	t      *testing.T
	prefix string // dataplanetest.Prefix without its last dash: namespaces and container IDs start with it
	cell   string // path of the cell namespace
	agent  *testAgent
	binDir string
	conf   string // directory of the network configuration
	list   *libcni.NetworkConfigList
	cni    *libcni.CNIConfig
}

func newTestEnv(t *testing.T) *testEnv {
	dataplanetest.RequireRoot(t)
	e := &testEnv{t: t, prefix: strings.TrimSuffix(dataplanetest.Prefix, "-")}
	e.cell = e.newNS("cell")
	e.agent = startTestAgent(t)

	e.binDir = t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(exe, filepath.Join(e.binDir, PluginType)); err != nil {
		t.Fatal(err)
	}
	e.conf = t.TempDir()
	if err := os.WriteFile(filepath.Join(e.conf, "10-trellis.conflist"), ConfList("trellis", "cell1", e.agent.socket), 0o644); err != nil {
		t.Fatal(err)
	}
	if e.list, err = libcni.LoadNetworkConf(e.conf, "trellis"); err != nil {
		t.Fatalf("libcni.LoadNetworkConf: %v", err)
	}
	e.cni = libcni.NewCNIConfigWithCacheDir([]string{e.binDir}, t.TempDir(), nil)
	return e
}

// newNS creates the namespace PREFIX-SUFFIX and deletes it when the test
// ends, failed or not.
func (e *testEnv) newNS(suffix string) string {
	e.t.Helper()
	return dataplanetest.Namespace(e.t, suffix)
}

// inCell runs fn on a thread in the cell namespace: the plugin processes
// libcni forks from that thread start in the cell namespace, as they would
// on a real cell.
func (e *testEnv) inCell(fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return netns.Do(e.cell, func() error { return fn(ctx) })
}

func (e *testEnv) runtimeConf(id, ctrNS string, metadata map[string]any) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{ContainerID: e.prefix + "-" + id, NetNS: ctrNS, IfName: "eth0"}
	if metadata != nil {
		rt.CapabilityArgs = map[string]any{"metadata": metadata}
	}
	return rt
}

var webMetadata = map[string]any{
	"policy_group_id": "app-web", "app_id": "app-web", "space_id": "space-1", "org_id": "org-1",
	"app_name": "web", "instance_guid": "inst-web-0", "index": "0", "ports": "8080", "container_workload": "app",
}

func (e *testEnv) add(rt *libcni.RuntimeConf) (*current.Result, error) {
	var res types.Result
	err := e.inCell(func(ctx context.Context) (err error) {
		res, err = e.cni.AddNetworkList(ctx, e.list, rt)
		return err
	})
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(res)
}

func (e *testEnv) del(rt *libcni.RuntimeConf) error {
	return e.inCell(func(ctx context.Context) error { return e.cni.DelNetworkList(ctx, e.list, rt) })
}

func (e *testEnv) check(rt *libcni.RuntimeConf) error {
	return e.inCell(func(ctx context.Context) error { return e.cni.CheckNetworkList(ctx, e.list, rt) })
}

func wantLinks(t *testing.T, what, path string, want ...string) {
	t.Helper()
	if diff := cmp.Diff(want, dataplanetest.Links(t, path)); diff != "" {
		t.Errorf("links in %s (-want +got):\n%s", what, diff)
	}
}

func wantCNIError(t *testing.T, err error, code uint, want ...string) {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T), want CNI error %d", err, err, code)
	}
	t.Logf("CNI error %d: %s", e.Code, e.Error())
	if e.Code != code {
		t.Errorf("error code %d (%q), want %d", e.Code, e.Error(), code)
	}
	for _, w := range want {
		if !strings.Contains(e.Error(), w) {
			t.Errorf("error %q does not say %q", e.Error(), w)
		}
	}
}

func TestPluginAddCheckDel(t *testing.T) {
	e := newTestEnv(t)
	ctr := e.newNS("ctr")
	rt := e.runtimeConf("c1", ctr, webMetadata)

	res, err := e.add(rt)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	want := &current.Result{
		CNIVersion: "1.1.0",
		Interfaces: []*current.Interface{
			{Name: "s-010255001002", Mac: "aa:aa:0a:ff:01:02", Mtu: 1450},
			{Name: "eth0", Mac: "ee:ee:0a:ff:01:02", Mtu: 1450, Sandbox: ctr},
		},
		IPs: []*current.IPConfig{{
			Interface: current.Int(1),
			Address:   net.IPNet{IP: net.IPv4(10, 255, 1, 2).To4(), Mask: net.CIDRMask(32, 32)},
			Gateway:   net.IPv4(169, 254, 0, 1).To4(),
		}},
		Routes: []*types.Route{{
			Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			GW:  net.IPv4(169, 254, 0, 1).To4(),
		}},
		DNS: types.DNS{Nameservers: []string{"169.254.0.2"}},
	}
	if diff := cmp.Diff(want, res); diff != "" {
		t.Errorf("ADD result (-want +got):\n%s", diff)
	}

	// The agent got the identity and the commit.
	id := e.prefix + "-c1"
	rec, ok := e.agent.record(id)
	if !ok || !rec.Committed {
		t.Errorf("agent record %+v (found %v), want committed", rec, ok)
	}
	e.agent.mu.Lock()
	gotID, gotCommit := e.agent.identities[id], e.agent.commits[id]
	e.agent.mu.Unlock()
	wantID := api.Identity{AppGUID: "app-web", AppName: "web", SpaceGUID: "space-1", OrgGUID: "org-1", InstanceGUID: "inst-web-0"}
	if diff := cmp.Diff(wantID, gotID); diff != "" {
		t.Errorf("identity at the agent (-want +got):\n%s", diff)
	}
	if gotCommit.HostVeth != "s-010255001002" {
		t.Errorf("commit host_veth = %q, want s-010255001002", gotCommit.HostVeth)
	}

	// The host veth is in the cell namespace, not in the machine's.
	wantLinks(t, "cell", e.cell, "lo", "s-010255001002")
	if _, err := net.InterfaceByName("s-010255001002"); err == nil {
		t.Errorf("s-010255001002 exists in the root namespace")
	}
	wantLinks(t, "container", ctr, "eth0", "lo")
	h, err := netns.Handle(ctr)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := h.AddrList(eth0, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.255.1.2/32" {
		t.Errorf("eth0 addresses = %v, want [10.255.1.2/32]", addrs)
	}

	if err := e.check(rt); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	// CHECK notices damage.
	routes, err := h.RouteList(eth0, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			if err := h.RouteDel(&r); err != nil {
				t.Fatal(err)
			}
		}
	}
	wantCNIError(t, e.check(rt), types.ErrInternal, "no default route")

	if err := e.del(rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	wantLinks(t, "cell", e.cell, "lo")
	wantLinks(t, "container", ctr, "lo")
	if _, ok := e.agent.record(id); ok {
		t.Errorf("agent still has %s after DEL", id)
	}
	if err := e.del(rt); err != nil {
		t.Errorf("second DEL: %v", err)
	}
}

func TestPluginSecondAddKeepsFirst(t *testing.T) {
	e := newTestEnv(t)
	ctr := e.newNS("ctr")
	rt := e.runtimeConf("c1", ctr, webMetadata)
	if _, err := e.add(rt); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	_, err := e.add(rt)
	wantCNIError(t, err, types.ErrInternal, "already attached", "10.255.1.2", "run DEL")
	if err := e.check(rt); err != nil {
		t.Errorf("CHECK after a second ADD: %v", err)
	}
	if err := e.del(rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
}

func TestPluginAddAgentDown(t *testing.T) {
	e := newTestEnv(t)
	ctr := e.newNS("ctr")
	e.agent.stop()
	_, err := e.add(e.runtimeConf("c1", ctr, webMetadata))
	wantCNIError(t, err, types.ErrTryAgainLater,
		"cannot reach the trellis agent at "+e.agent.socket+": connect: no such file or directory — is `trellis agent` running on this cell?")
	wantLinks(t, "cell", e.cell, "lo")
	wantLinks(t, "container", ctr, "lo")
}

func TestPluginCommitFailureUndoes(t *testing.T) {
	e := newTestEnv(t)
	ctr := e.newNS("ctr")
	e.agent.failCommit = true
	_, err := e.add(e.runtimeConf("c1", ctr, webMetadata))
	wantCNIError(t, err, types.ErrInternal, "commit container", "controller refused the instance registration")
	wantLinks(t, "cell", e.cell, "lo")
	wantLinks(t, "container", ctr, "lo")
	if ids := e.agent.containerIDs(); len(ids) != 0 {
		t.Errorf("agent still has %v after a failed ADD", ids)
	}
}

func TestPluginDelAgentDown(t *testing.T) {
	e := newTestEnv(t)
	ctr := e.newNS("ctr")
	rt := e.runtimeConf("c1", ctr, webMetadata)
	if _, err := e.add(rt); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	e.agent.stop()
	// The wiring goes (its address is in the cached result), the address
	// stays reserved, and the error says so.
	wantCNIError(t, e.del(rt), types.ErrTryAgainLater, "cannot reach the trellis agent", "removed its wiring (10.255.1.2)", "stays reserved")
	wantLinks(t, "cell", e.cell, "lo")
	wantLinks(t, "container", ctr, "lo")

	e.agent.start()
	if err := e.del(rt); err != nil {
		t.Fatalf("DEL with the agent back: %v", err)
	}
	if ids := e.agent.containerIDs(); len(ids) != 0 {
		t.Errorf("agent still has %v after DEL", ids)
	}
}

func TestPluginInvalidInput(t *testing.T) {
	e := newTestEnv(t)
	ctr := e.newNS("ctr")

	t.Run("unknown key", func(t *testing.T) {
		var raw map[string]any
		if err := json.Unmarshal(ConfList("trellis", "cell1", e.agent.socket), &raw); err != nil {
			t.Fatal(err)
		}
		raw["plugins"].([]any)[0].(map[string]any)["agent_sockets"] = "/run/x.sock"
		b, _ := json.Marshal(raw)
		list, err := libcni.NetworkConfFromBytes(b)
		if err != nil {
			t.Fatal(err)
		}
		err = e.inCell(func(ctx context.Context) error {
			_, err := e.cni.AddNetworkList(ctx, list, e.runtimeConf("c1", ctr, webMetadata))
			return err
		})
		wantCNIError(t, err, types.ErrInvalidNetworkConfig, `unknown key "agent_sockets"`)
	})
	t.Run("no app GUID", func(t *testing.T) {
		_, err := e.add(e.runtimeConf("c2", ctr, map[string]any{"space_id": "s"}))
		wantCNIError(t, err, types.ErrInvalidEnvironmentVariables, "no app GUID", "TRELLIS_APP_GUID")
	})
	t.Run("identity in CNI_ARGS", func(t *testing.T) {
		rt := e.runtimeConf("c3", ctr, nil)
		rt.Args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAME", "x"}, {"TRELLIS_APP_GUID", "app-api"}, {"TRELLIS_INDEX", "4"}}
		if _, err := e.add(rt); err != nil {
			t.Fatalf("ADD: %v", err)
		}
		e.agent.mu.Lock()
		got := e.agent.identities[rt.ContainerID]
		e.agent.mu.Unlock()
		want := api.Identity{AppGUID: "app-api", InstanceGUID: rt.ContainerID, Index: 4}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("identity (-want +got):\n%s", diff)
		}
		if err := e.del(rt); err != nil {
			t.Fatalf("DEL: %v", err)
		}
	})
	wantLinks(t, "cell", e.cell, "lo")
	wantLinks(t, "container", ctr, "lo")
}

func TestPluginStatus(t *testing.T) {
	e := newTestEnv(t)
	status := func() error {
		return e.inCell(func(ctx context.Context) error { return e.cni.GetStatusNetworkList(ctx, e.list) })
	}
	if err := status(); err != nil {
		t.Errorf("STATUS: %v", err)
	}
	e.agent.mu.Lock()
	e.agent.ready, e.agent.reason = false, "no subnet lease yet"
	e.agent.mu.Unlock()
	wantCNIError(t, status(), types.ErrPluginNotAvailable, `the trellis agent of cell "cell1" is not ready: no subnet lease yet`)
	e.agent.stop()
	wantCNIError(t, status(), types.ErrPluginNotAvailable, "cannot reach the trellis agent")
}

func TestPluginGC(t *testing.T) {
	e := newTestEnv(t)
	ctr := e.newNS("ctr")
	rt := e.runtimeConf("c1", ctr, webMetadata)
	if _, err := e.add(rt); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	// An address the runtime forgot: allocated, never wired.
	stale := e.prefix + "-stale"
	_, err := api.NewAgentClient(e.agent.socket).Allocate(context.Background(), api.AllocateRequest{
		ContainerID: stale, Identity: api.Identity{AppGUID: "app-old", InstanceGUID: stale},
	})
	if err != nil {
		t.Fatal(err)
	}
	err = e.inCell(func(ctx context.Context) error {
		return e.cni.GCNetworkList(ctx, e.list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{
			{ContainerID: rt.ContainerID, IfName: "eth0"},
		}})
	})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if diff := cmp.Diff([]string{rt.ContainerID}, e.agent.containerIDs()); diff != "" {
		t.Errorf("agent records after GC (-want +got):\n%s", diff)
	}
	if err := e.check(rt); err != nil {
		t.Errorf("CHECK after GC: %v", err)
	}
	if err := e.del(rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
}

// TestCNITool runs one ADD and DEL through the reference runtime, cnitool,
// when it is installed (go install github.com/containernetworking/cni/cnitool@v1.3.1).
// cnitool keeps its result cache in /var/lib/cni, which cannot be changed;
// so that it writes nothing on the machine, it runs in a private mount
// namespace with a temporary directory mounted over /var/lib.
func TestCNITool(t *testing.T) {
	dataplanetest.RequireRoot(t)
	tool, err := exec.LookPath("cnitool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("cnitool is not installed: CI must run this test (scripts/test installs it)")
		}
		t.Skip("cnitool is not installed (go install github.com/containernetworking/cni/cnitool@v1.3.1)")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("unshare (util-linux) is not installed")
	}
	e := newTestEnv(t)
	ctr := e.newNS("ctr")
	varLib := t.TempDir()
	run := func(verb string) (string, error) {
		var out []byte
		err := e.inCell(func(ctx context.Context) (err error) {
			cmd := exec.CommandContext(ctx, unshare, "--mount", "--propagation", "private",
				"sh", "-c", `mount --bind "$0" /var/lib && exec "$@"`, varLib, tool, verb, "trellis", ctr)
			cmd.Env = append(os.Environ(),
				"CNI_PATH="+e.binDir, "NETCONFPATH="+e.conf, "CNI_IFNAME=eth0",
				"CNI_ARGS=TRELLIS_APP_GUID=app-tool;TRELLIS_APP_NAME=tool")
			out, err = cmd.CombinedOutput()
			return err
		})
		return string(out), err
	}
	out, err := run("add")
	if err != nil {
		t.Fatalf("cnitool add: %v\n%s", err, out)
	}
	res, err := current.NewResult([]byte(out))
	if err != nil {
		t.Fatalf("cnitool add printed %q: %v", out, err)
	}
	if r := res.(*current.Result); len(r.IPs) != 1 || r.IPs[0].Address.String() != "10.255.1.2/32" {
		t.Errorf("cnitool add result IPs = %v, want 10.255.1.2/32", r.IPs)
	}
	wantLinks(t, "cell", e.cell, "lo", "s-010255001002")
	wantLinks(t, "container", ctr, "eth0", "lo")
	if out, err := run("del"); err != nil {
		t.Fatalf("cnitool del: %v\n%s", err, out)
	}
	wantLinks(t, "cell", e.cell, "lo")
	wantLinks(t, "container", ctr, "lo")
	if ids := e.agent.containerIDs(); len(ids) != 0 {
		t.Errorf("agent still has %v after cnitool del", ids)
	}
}

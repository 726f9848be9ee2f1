package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/go-cmp/cmp"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/dataplane"
)

const baseConf = `"cniVersion":"1.1.0","name":"trellis","type":"trellis-cni","agent_socket":"/run/trellis/cell1.sock"`

func conf(extra string) []byte {
	if extra == "" {
		return []byte("{" + baseConf + "}")
	}
	return []byte("{" + baseConf + "," + extra + "}")
}

func TestParseConf(t *testing.T) {
	c, err := parseConf(conf(`"cell":"cell1","dns":{"search":["apps.internal"]},"capabilities":{"metadata":true},` +
		`"runtimeConfig":{"metadata":{"app_id":"a1","index":"2"},"portMappings":[]},"args":{"cni":{}},` +
		`"disableCheck":false,"cniVersions":["1.1.0"],"ipam":{},"cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]`))
	if err != nil {
		t.Fatalf("parseConf = %v", err)
	}
	if c.AgentSocket != "/run/trellis/cell1.sock" || c.Cell != "cell1" || c.Name != "trellis" || c.CNIVersion != "1.1.0" {
		t.Errorf("parseConf = %+v", c)
	}
	if diff := cmp.Diff([]string{"apps.internal"}, c.DNS.Search); diff != "" {
		t.Errorf("dns.search (-want +got):\n%s", diff)
	}
	if c.metadata["app_id"] != "a1" {
		t.Errorf("metadata = %v", c.metadata)
	}
	if !c.hasValidAttachments || len(c.ValidAttachments) != 1 || c.ValidAttachments[0].ContainerID != "c1" {
		t.Errorf("valid attachments = %v (present %v)", c.ValidAttachments, c.hasValidAttachments)
	}
}

func TestParseConfLegacyAttachments(t *testing.T) {
	c, err := parseConf(conf(`"cni.dev/attachments":[]`))
	if err != nil {
		t.Fatal(err)
	}
	if !c.hasValidAttachments || len(c.ValidAttachments) != 0 {
		t.Errorf("parseConf: attachments %v, present %v; want empty and present", c.ValidAttachments, c.hasValidAttachments)
	}
	c, err = parseConf(conf(""))
	if err != nil {
		t.Fatal(err)
	}
	if c.hasValidAttachments {
		t.Errorf("parseConf without attachments: present = true")
	}
}

func TestParseConfErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		data string
		code uint
		want string // in the message
	}{
		{"not JSON", `{`, types.ErrDecodingFailure, "not a JSON object"},
		{"unknown key", string(conf(`"agent_sock":"/x"`)), types.ErrInvalidNetworkConfig, `unknown key "agent_sock"`},
		{"unknown keys sorted", string(conf(`"zz":1,"mtu":1400`)), types.ErrInvalidNetworkConfig, `unknown keys "mtu", "zz"`},
		{"no socket", `{"cniVersion":"1.1.0","name":"n","type":"trellis-cni"}`, types.ErrInvalidNetworkConfig, `"agent_socket" is required`},
		{"relative socket", `{"cniVersion":"1.1.0","name":"n","type":"trellis-cni","agent_socket":"agent.sock"}`, types.ErrInvalidNetworkConfig, "not an absolute path"},
		{"socket not a string", `{"cniVersion":"1.1.0","name":"n","type":"trellis-cni","agent_socket":5}`, types.ErrInvalidNetworkConfig, "agent_socket"},
		{"ipam", string(conf(`"ipam":{"type":"host-local"}`)), types.ErrInvalidNetworkConfig, `remove the "ipam" section`},
		{"bad dns", string(conf(`"dns":"8.8.8.8"`)), types.ErrInvalidNetworkConfig, "dns"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConf([]byte(tc.data))
			assertCNIError(t, err, tc.code, tc.want)
		})
	}
}

func assertCNIError(t *testing.T, err error, code uint, want string) {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T), want a *types.Error with code %d", err, err, code)
	}
	if e.Code != code || !strings.Contains(e.Error(), want) {
		t.Errorf("error code %d %q, want code %d containing %q", e.Code, e.Error(), code, want)
	}
}

func TestIdentity(t *testing.T) {
	for _, tc := range []struct {
		name string
		meta string // runtimeConfig.metadata
		args string // CNI_ARGS
		want instanceIdentity
	}{
		{
			name: "garden metadata",
			meta: `{"policy_group_id":"app-1","app_id":"app-1","space_id":"sp","org_id":"org","app_name":"web","instance_guid":"i-1","index":"3","ports":"8080","container_workload":"app"}`,
			want: instanceIdentity{AppGUID: "app-1", SpaceGUID: "sp", OrgGUID: "org", AppName: "web", InstanceGUID: "i-1", Index: 3},
		},
		{
			name: "policy_group_id only, numeric index",
			meta: `{"policy_group_id":"app-2","index":1}`,
			want: instanceIdentity{AppGUID: "app-2", InstanceGUID: "ctr1", Index: 1},
		},
		{
			name: "CNI_ARGS",
			args: "IgnoreUnknown=1;K8S_POD_NAME=x;TRELLIS_APP_GUID=app-3;TRELLIS_SPACE_GUID=sp;TRELLIS_ORG_GUID=org;TRELLIS_APP_NAME=api;TRELLIS_INSTANCE_GUID=i-3;TRELLIS_INDEX=7",
			want: instanceIdentity{AppGUID: "app-3", SpaceGUID: "sp", OrgGUID: "org", AppName: "api", InstanceGUID: "i-3", Index: 7},
		},
		{
			name: "both, agreeing and completing each other",
			meta: `{"app_id":"app-4","space_id":"sp"}`,
			args: "TRELLIS_APP_GUID=app-4;TRELLIS_INDEX=2",
			want: instanceIdentity{AppGUID: "app-4", SpaceGUID: "sp", InstanceGUID: "ctr1", Index: 2},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			extra := ""
			if tc.meta != "" {
				extra = `"runtimeConfig":{"metadata":` + tc.meta + `}`
			}
			c, err := parseConf(conf(extra))
			if err != nil {
				t.Fatal(err)
			}
			got, err := identity(c, "ctr1", tc.args)
			if err != nil {
				t.Fatalf("identity = %v", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("identity (-want +got):\n%s", diff)
			}
		})
	}
}

func TestIdentityErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		meta string
		args string
		code uint
		want string
	}{
		{"no app GUID", "", "", types.ErrInvalidEnvironmentVariables, "TRELLIS_APP_GUID=<guid>"},
		{"no app GUID, says metadata", `{"space_id":"sp"}`, "", types.ErrInvalidEnvironmentVariables, "runtimeConfig.metadata.app_id"},
		{"unknown arg", "", "TRELLIS_APP_GUID=a;FOO=1", types.ErrInvalidEnvironmentVariables, "IgnoreUnknown=1"},
		{"bad pair", "", "TRELLIS_APP_GUID", types.ErrInvalidEnvironmentVariables, "not KEY=VALUE"},
		{"bad IgnoreUnknown", "", "IgnoreUnknown=yes", types.ErrInvalidEnvironmentVariables, "IgnoreUnknown"},
		{"conflict", `{"app_id":"a"}`, "TRELLIS_APP_GUID=b", types.ErrInvalidEnvironmentVariables, `runtimeConfig.metadata.app_id is "a" but CNI_ARGS TRELLIS_APP_GUID is "b"`},
		{"negative index", "", "TRELLIS_APP_GUID=a;TRELLIS_INDEX=-1", types.ErrInvalidEnvironmentVariables, "non-negative integer"},
		{"fractional index", `{"app_id":"a","index":1.5}`, "", types.ErrInvalidNetworkConfig, "metadata.index"},
		{"object metadata value", `{"app_id":{"x":1}}`, "", types.ErrInvalidNetworkConfig, "metadata.app_id: want a string"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			extra := ""
			if tc.meta != "" {
				extra = `"runtimeConfig":{"metadata":` + tc.meta + `}`
			}
			c, err := parseConf(conf(extra))
			if err != nil {
				t.Fatal(err)
			}
			_, err = identity(c, "ctr1", tc.args)
			assertCNIError(t, err, tc.code, tc.want)
		})
	}
}

func TestConfListLoadsInLibcni(t *testing.T) {
	data := ConfList("trellis", "cell1", "/run/trellis/cell1.sock")
	list, err := libcni.NetworkConfFromBytes(data)
	if err != nil {
		t.Fatalf("libcni.NetworkConfFromBytes(ConfList) = %v\n%s", err, data)
	}
	if list.Name != "trellis" || list.CNIVersion != "1.1.0" || len(list.Plugins) != 1 {
		t.Fatalf("ConfList loads as %+v", list)
	}
	p := list.Plugins[0]
	if p.Network.Type != PluginType || !p.Network.Capabilities["metadata"] {
		t.Errorf("plugin = %+v", p.Network)
	}
	// What the plugin gets on stdin must pass its own strict parsing.
	c, err := parseConf(p.Bytes)
	if err != nil {
		t.Fatalf("parseConf(plugin of ConfList) = %v", err)
	}
	if c.AgentSocket != "/run/trellis/cell1.sock" || c.Cell != "cell1" {
		t.Errorf("parseConf(plugin of ConfList) = %+v", c)
	}
}

func TestAgentUnreachableMessage(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "cell1.sock")
	_, err := agentClient{sock}.status(context.Background())
	if !errors.Is(err, errAgentUnreachable) {
		t.Fatalf("status with no agent = %v, want unreachable", err)
	}
	want := "cannot reach the trellis agent at " + sock + ": connect: no such file or directory — is `trellis agent` running on this cell?"
	if err.Error() != want {
		t.Errorf("error = %q\nwant    %q", err, want)
	}
	e := agentFailure(err, "allocate an address for container %s", "c1")
	if e.Code != types.ErrTryAgainLater || e.Msg != want {
		t.Errorf("agentFailure = %d %q, want %d %q", e.Code, e.Msg, types.ErrTryAgainLater, want)
	}
}

func TestAgentStatusErrors(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "a.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/containers/{id}", func(w http.ResponseWriter, r *http.Request) {
		switch r.PathValue("id") {
		case "busy":
			http.Error(w, `{"error":"subnet lease pending"}`, http.StatusServiceUnavailable)
		case "bad":
			http.Error(w, `{"error":"bad container ID"}`, http.StatusBadRequest)
		default:
			http.Error(w, `{"error":"no such container"}`, http.StatusNotFound)
		}
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	c := agentClient{sock}
	_, err = c.container(context.Background(), "gone")
	if !isNotFound(err) {
		t.Errorf("container(gone) = %v, want not found", err)
	}
	_, err = c.container(context.Background(), "busy")
	assertCNIError(t, agentFailure(err, "look up %s", "busy"), types.ErrTryAgainLater, "subnet lease pending")
	_, err = c.container(context.Background(), "bad")
	assertCNIError(t, agentFailure(err, "look up %s", "bad"), types.ErrInternal, "look up bad: trellis agent: GET /v1/containers/bad: bad container ID")
}

func TestAddResultVersions(t *testing.T) {
	c, err := parseConf(conf(`"dns":{"nameservers":["169.254.0.2","10.0.0.53"],"search":["apps.internal"],"options":["ndots:1"]}`))
	if err != nil {
		t.Fatal(err)
	}
	args := &skel.CmdArgs{ContainerID: "c1", Netns: "/run/netns/x", IfName: "eth0"}
	ctr := dataplane.Container{NetNS: args.Netns, IfName: "eth0", IP: netip.MustParseAddr("10.255.1.9"), MTU: 1450}
	w := dataplane.Result{HostVeth: "s-010255001009", HostMAC: net.HardwareAddr{0xaa, 0xaa, 10, 255, 1, 9}, ContainerMAC: net.HardwareAddr{0xee, 0xee, 10, 255, 1, 9}}
	res := addResult(c, args, ctr, allocation{IP: "10.255.1.9", DNS: []string{"169.254.0.2"}}, w)
	if diff := cmp.Diff(types.DNS{Nameservers: []string{"169.254.0.2", "10.0.0.53"}, Search: []string{"apps.internal"}, Options: []string{"ndots:1"}}, res.DNS); diff != "" {
		t.Errorf("DNS (-want +got):\n%s", diff)
	}
	for _, v := range SupportedVersions {
		got, err := res.GetAsVersion(v)
		if err != nil {
			t.Errorf("result as version %s: %v", v, err)
			continue
		}
		var buf bytes.Buffer
		if err := got.PrintTo(&buf); err != nil {
			t.Errorf("print result as %s: %v", v, err)
		}
		if !strings.Contains(buf.String(), `"10.255.1.9/32"`) || !strings.Contains(buf.String(), `"sandbox": "/run/netns/x"`) {
			t.Errorf("result as %s lacks the address or the sandbox:\n%s", v, buf.String())
		}
	}
}

// TestAgentWire keeps the plugin's copies of the agent socket's types
// encoding as package api's do: each value of api's, with every field set,
// decodes into the plugin's type (no field unknown) and encodes back the
// same, and the other way round.
func TestAgentWire(t *testing.T) {
	id := api.Identity{AppGUID: "a", AppName: "n", SpaceGUID: "s", OrgGUID: "o", InstanceGUID: "i", Index: 3}
	cases := []struct {
		name     string
		api, own any
	}{
		{"Identity", &id, &instanceIdentity{}},
		{"AllocateRequest", &api.AllocateRequest{ContainerID: "c", NetNS: "/n", IfName: "eth0", Identity: id}, &allocateRequest{}},
		{"Allocation", &api.Allocation{ContainerID: "c", IP: "10.0.0.2", Subnet: "10.0.0.0/24", Gateway: "169.254.0.1", MTU: 1450,
			DNS: []string{"169.254.0.2"}, Committed: true}, &allocation{}},
		{"CommitRequest", &api.CommitRequest{HostVeth: "s-010000000002"}, &commitRequest{}},
		{"GCRequest", &api.GCRequest{Valid: []string{"c"}}, &gcRequest{}},
	}
	for _, c := range cases {
		b, err := json.Marshal(c.api)
		if err != nil {
			t.Fatal(err)
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(c.own); err != nil {
			t.Errorf("%s: api's %s does not decode into the plugin's type: %v", c.name, b, err)
			continue
		}
		back, _ := json.Marshal(c.own)
		if !bytes.Equal(back, b) {
			t.Errorf("%s: api's %s comes back from the plugin's type as %s", c.name, b, back)
		}
		// And the other way: the plugin's encoding decodes strictly into api's.
		fresh := reflect.New(reflect.TypeOf(c.api).Elem()).Interface()
		dec = json.NewDecoder(bytes.NewReader(back))
		dec.DisallowUnknownFields()
		if err := dec.Decode(fresh); err != nil || !reflect.DeepEqual(fresh, c.api) {
			t.Errorf("%s: the plugin's %s decodes into api's as %+v, %v; want %+v", c.name, back, fresh, err, c.api)
		}
	}
	// The status fields the plugin reads.
	st := api.AgentStatus{Cell: "cell1", Subnet: "10.0.0.0/24", Ready: true, Reason: "r", Revision: 4, Controller: "https://c", Failovers: 1}
	b, _ := json.Marshal(st)
	var own agentStatus
	if err := json.Unmarshal(b, &own); err != nil || own != (agentStatus{Cell: "cell1", Subnet: "10.0.0.0/24", Ready: true, Reason: "r"}) {
		t.Errorf("api.AgentStatus %s read by the plugin as %+v, %v", b, own, err)
	}
}

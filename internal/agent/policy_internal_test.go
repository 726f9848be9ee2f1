package agent

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/dataplane"
	"github.com/trellis-c2c/trellis/internal/flowlog"
)

// TestPolicyAddressReuse: an allow reaches the kernel only while the
// controller and the agent agree on which instance holds its address, so a
// new app's instance on a reused address never inherits the old app's
// allowances — even while the controller's state still lists them.
func TestPolicyAddressReuse(t *testing.T) {
	subnet := netip.MustParsePrefix("10.255.1.0/24")
	a := &Agent{containers: &containers{subnet: subnet, records: map[string]*record{}}}
	e := &enforcer{containers: a.containers}
	x := netip.MustParseAddr("10.255.1.5")
	st := api.CellState{
		Cell:    api.Cell{GUID: "cell1"},
		Enforce: true,
		Apps:    []api.TaggedApp{{GUID: "old-app", Tag: 7}, {GUID: "client", Tag: 3}},
		// The controller still believes the old instance holds x.
		Endpoints: []api.Endpoint{{IP: x, Instance: "old-1", AppGUID: "old-app", CellGUID: "cell1"}},
		Allows:    []api.Allow{{DestIP: x, SrcTag: 3, Protocol: "tcp", StartPort: 8080, EndPort: 8080}},
	}
	a.containers.records["ctr-old"] = &record{ContainerID: "ctr-old", IP: x, Identity: api.Identity{AppGUID: "old-app", InstanceGUID: "old-1"}}
	want := []dataplane.Allow{{DestIP: x, SrcTag: 3, Protocol: "tcp", StartPort: 8080, EndPort: 8080}}
	if got := e.policy(st).Allows; !cmp.Equal(got, want, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })) {
		t.Fatalf("allows for the old instance = %v, want %v", got, want)
	}

	// The old instance is gone; a new app's instance got x before the
	// controller's state caught up.
	delete(a.containers.records, "ctr-old")
	a.containers.records["ctr-new"] = &record{ContainerID: "ctr-new", IP: x, Identity: api.Identity{AppGUID: "new-app", InstanceGUID: "new-1"}}
	p := e.policy(st)
	if len(p.Allows) != 0 {
		t.Errorf("allows for the new instance on the reused address = %v, want none", p.Allows)
	}
	if len(p.Locals) != 1 || p.Locals[0].Tag != 0 {
		t.Errorf("locals = %+v, want the new instance, untagged (its app is in no policy)", p.Locals)
	}
	// Once the controller knows x belongs to the new instance, only the new
	// app's own allows would apply (here: none).
	st.Endpoints[0] = api.Endpoint{IP: x, Instance: "new-1", AppGUID: "new-app", CellGUID: "cell1"}
	st.Allows = nil
	if got := e.policy(st).Allows; len(got) != 0 {
		t.Errorf("allows after the controller caught up = %v, want none", got)
	}
}

func TestValidContainerID(t *testing.T) {
	for id, want := range map[string]bool{
		"a": true, "A-1_b.c": true, "0": true, strings.Repeat("x", 128): true,
		"": false, "-a": false, "_a": false, ".a": false, strings.Repeat("x", 129): false,
		"a b": false, "a/b": false, "é": false, "a\n": false,
	} {
		if got := validContainerID(id); got != want {
			t.Errorf("validContainerID(%q) = %v, want %v", id, got, want)
		}
	}
}

func TestLoadContainersDropsTornRecords(t *testing.T) {
	dir := t.TempDir()
	subnet := netip.MustParsePrefix("10.255.1.0/24")
	cs, err := loadContainers(dir, subnet, 1450)
	if err != nil {
		t.Fatal(err)
	}
	good := &record{ContainerID: "good", IP: netip.MustParseAddr("10.255.1.2"), NetNS: "/var/run/netns/x", IfName: "eth0"}
	if err := cs.save(good); err != nil {
		t.Fatal(err)
	}
	// A machine crash can leave a record empty or cut short.
	os.WriteFile(filepath.Join(dir, "torn.json"), []byte(`{"container_id": "to`), 0o600)
	os.WriteFile(filepath.Join(dir, "empty.json"), nil, 0o600)
	cs, err = loadContainers(dir, subnet, 1450)
	if err != nil {
		t.Fatalf("loadContainers with torn records = %v, want them dropped", err)
	}
	if len(cs.records) != 1 || cs.records["good"] == nil || cs.records["good"].IP != good.IP {
		t.Errorf("records = %v, want only good", cs.records)
	}
	slices.Sort(cs.dropped)
	if !slices.Equal(cs.dropped, []string{"empty.json", "torn.json"}) {
		t.Errorf("dropped = %v, want empty.json and torn.json", cs.dropped)
	}
	for _, name := range []string{"torn.json", "empty.json"} {
		if _, err := os.Stat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Errorf("%s still there (%v), want removed", name, err)
		}
	}
	if info, err := os.Stat(filepath.Join(dir, "good.json")); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("good.json: %v, %v; want mode 0600", info, err)
	}
}

func TestEgressReason(t *testing.T) {
	for _, c := range []struct {
		proto string
		port  uint16
		want  string
	}{
		{"tcp", 5432, "egress: no security group allows tcp to 203.0.113.10:5432 for app backend"},
		{"icmp", 0, "egress: no security group allows icmp to 203.0.113.10 for app backend"},
	} {
		if got := egressReason(c.proto, netip.MustParseAddr("203.0.113.10"), c.port, "backend"); got != c.want {
			t.Errorf("egressReason(%s, %d) = %q, want %q", c.proto, c.port, got, c.want)
		}
	}
}

func TestEgressAllowedReason(t *testing.T) {
	ip := netip.MustParseAddr
	rules := []api.EgressRule{
		{SrcIP: ip("10.255.1.2"), Protocol: "tcp", DestStart: ip("203.0.113.10"), DestEnd: ip("203.0.113.10"), StartPort: 80, EndPort: 80, Group: "quiet"},
		{SrcIP: ip("10.255.1.2"), Protocol: "tcp", DestStart: ip("203.0.113.0"), DestEnd: ip("203.0.113.255"), StartPort: 1, EndPort: 1000, Log: true, Group: "web", Rule: 2},
	}
	pk := flowlog.Packet{Protocol: "tcp", SrcIP: ip("10.255.1.2"), DstIP: ip("203.0.113.10"), DstPort: 80}
	if got, want := egressAllowedReason(rules, pk), "egress allowed: rule 2 of security group web covers tcp to 203.0.113.10"; got != want {
		t.Errorf("egressAllowedReason = %q, want %q", got, want)
	}
	pk.DstPort = 2000
	if got := egressAllowedReason(rules, pk); !strings.HasPrefix(got, "egress allowed: a security group") {
		t.Errorf("egressAllowedReason(no logged rule matches) = %q", got)
	}
}

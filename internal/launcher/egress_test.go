package launcher

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// egressReach is reach for egress: a refusal by the cell (tcp reset, icmp
// admin prohibited) counts as not reached.
func egressReach(ns, ip string, p probe) (bool, error) {
	ok, err := reach(ns, ip, p)
	if errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ECONNRESET) {
		return false, nil
	}
	return ok, err
}

// TestEgressFoundation: on a local foundation an instance reaches nothing
// outside the overlay until a security group bound to its space allows
// it, then reaches the outside host's sample app; unbinding takes it away
// again; a global group lets every space out; status names the outside.
func TestEgressFoundation(t *testing.T) {
	fd := upFoundation(t, 1)
	if fd.f.Outside == nil || fd.f.Outside.IP != "203.0.113.10" {
		t.Fatalf("foundation outside = %+v, want the host 203.0.113.10", fd.f.Outside)
	}
	var st struct {
		Outside struct{ NetNS, IP string }
	}
	if out := fd.cli(0, "status", "--json"); json.Unmarshal([]byte(out), &st) != nil || st.Outside.NetNS != fd.f.Outside.NetNS || st.Outside.IP != "203.0.113.10" {
		t.Errorf("status --json does not name the outside host (outside.netns, outside.ip):\n%s", out)
	}
	fd.cli(0, "push", "a", "-i", "1")
	a := fd.instances("a")[0]
	const out = "203.0.113.10"
	check := func(what string, want map[probe]bool) {
		t.Helper()
		waitFor(t, what, func() bool {
			for p, w := range want {
				if got, err := egressReach(a.netns, out, p); err != nil || got != w {
					return false
				}
			}
			return true
		})
	}
	tcp80, tcp5432, udp53 := probe{"tcp", 80}, probe{"tcp", 5432}, probe{"udp", 53}
	check("default deny", map[probe]bool{tcp80: false, tcp5432: false, udp53: false})

	rules := filepath.Join(t.TempDir(), "web.json")
	os.WriteFile(rules, []byte(`[{"protocol":"tcp","destination":"203.0.113.0/24","ports":"80,443","log":true}]`), 0o600)
	fd.cli(0, "create-security-group", "web", rules)
	fd.cli(0, "bind-security-group", "web", "default", "--space", "default")
	check("web bound", map[probe]bool{tcp80: true, tcp5432: false, udp53: false})

	fd.cli(0, "create-security-group", "dns", `[{"protocol":"udp","destination":"203.0.113.10","ports":"53"}]`)
	fd.cli(0, "bind-running-security-group", "dns")
	check("dns global", map[probe]bool{tcp80: true, udp53: true})

	fd.cli(0, "unbind-security-group", "web", "default", "default")
	fd.cli(0, "unbind-running-security-group", "dns")
	check("unbound", map[probe]bool{tcp80: false, udp53: false})
}

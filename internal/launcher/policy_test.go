package launcher

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"

	"fmt"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/dataplane"
	"net"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/netns"
)

// probe is one connection attempt of the matrix.
type probe struct {
	proto string // tcp or udp
	port  int
}

var probes = []probe{{"tcp", 8080}, {"tcp", 9000}, {"udp", 8080}}

// rule is a policy of the matrix: src may reach dst on proto ports lo-hi.
type rule struct {
	src, dst, proto string
	lo, hi          int
}

func (r rule) ports() string {
	if r.lo == r.hi {
		return fmt.Sprint(r.lo)
	}
	return fmt.Sprintf("%d-%d", r.lo, r.hi)
}

// TestPolicyMatrix checks every instance pair × {tcp 8080, tcp 9000,
// udp 8080} of three apps over two cells: before policies, after adding a
// set (a port range, UDP, an app to itself), after removing one, and after
// both agents are killed and restarted. A new case is one line below.
func TestPolicyMatrix(t *testing.T) { policyMatrix(t, api.EncryptionOff) }

// TestPolicyMatrixEncrypted is the matrix on a foundation that encrypts
// between cells: the same answers, through WireGuard (and, after the
// agents are killed and restarted, through the device they attach to
// again).
func TestPolicyMatrixEncrypted(t *testing.T) { policyMatrix(t, api.EncryptionWireGuard) }

func policyMatrix(t *testing.T, encryption string) {
	fd := upFoundationWith(t, Options{Cells: 2, Encryption: encryption})
	encrypting := func() {
		t.Helper()
		if encryption == api.EncryptionWireGuard {
			waitFor(t, "both cells encrypting", func() bool { return strings.Count(fd.cli(0, "status"), "wireguard (") == 2 })
		}
	}
	encrypting()
	for _, p := range []struct{ app, cell string }{{"a", "cell1"}, {"b", ""}, {"c", "cell2"}} {
		args := []string{"push", p.app, "-i", "1"}
		if p.app == "b" {
			args[3] = "2" // one on each cell
		}
		if p.cell != "" {
			args = append(args, "--cell", p.cell)
		}
		fd.cli(0, append(args, "--", trellisBin, "sample-app", "--also-port", "9000")...)
	}
	var insts []instance
	for _, app := range []string{"a", "b", "c"} {
		for _, in := range fd.instances(app) {
			in.CellName = app + fmt.Sprint(in.Index) + "@" + in.CellName // a label for messages
			insts = append(insts, in)
		}
	}
	phases := []struct {
		name   string
		add    []rule
		remove []rule
		// restart kills both agents with SIGKILL and starts them again.
		restart bool
	}{
		{name: "no policies"},
		{name: "policies added", add: []rule{
			{"a", "b", "tcp", 8080, 8080},
			{"a", "c", "tcp", 9000, 9100},
			{"b", "c", "udp", 8080, 8080},
			{"c", "c", "tcp", 8080, 9000},
		}},
		{name: "a->b tcp/8080 removed", remove: []rule{{"a", "b", "tcp", 8080, 8080}}},
		{name: "agents restarted", restart: true},
	}
	var rules []rule
	for _, ph := range phases {
		for _, r := range ph.add {
			fd.cli(0, "add-network-policy", r.src, r.dst, "--protocol", r.proto, "--port", r.ports())
			rules = append(rules, r)
		}
		for _, r := range ph.remove {
			fd.cli(0, "remove-network-policy", r.src, r.dst, "--protocol", r.proto, "--port", r.ports())
			for i, have := range rules {
				if have == r {
					rules = append(rules[:i], rules[i+1:]...)
					break
				}
			}
		}
		if ph.restart {
			for i := range fd.f.Cells {
				syscall.Kill(fd.f.Cells[i].Agent.PID, syscall.SIGKILL)
				waitFor(t, "the agent to die", func() bool { return !fd.f.Cells[i].Agent.alive("agent") })
				if err := fd.f.StartAgent(t.Context(), fd.client(), i, trellisBin); err != nil {
					t.Fatal(err)
				}
				if err := fd.f.WaitAgent(t.Context(), i); err != nil {
					t.Fatal(err)
				}
			}
			encrypting()
		}
		want := func(src, dst instance, p probe) bool {
			for _, r := range rules {
				if r.src == appOf(src) && r.dst == appOf(dst) && r.proto == p.proto && r.lo <= p.port && p.port <= r.hi {
					return true
				}
			}
			return false
		}
		// Policies propagate in well under a second: poll until the whole
		// matrix is as wanted, then report what still differs.
		var diffs []string
		deadline := time.Now().Add(5 * time.Second)
		for {
			diffs = diffs[:0]
			for _, src := range insts {
				for _, dst := range insts {
					if src.GUID == dst.GUID {
						continue
					}
					for _, p := range probes {
						got, err := reach(src.netns, dst.IP, p)
						if err != nil {
							diffs = append(diffs, fmt.Sprintf("%s -> %s %s/%d: %v", src.CellName, dst.CellName, p.proto, p.port, err))
						} else if got != want(src, dst, p) {
							diffs = append(diffs, fmt.Sprintf("%s -> %s %s/%d: allowed=%v, want %v", src.CellName, dst.CellName, p.proto, p.port, got, !got))
						}
					}
				}
			}
			if len(diffs) == 0 || time.Now().After(deadline) {
				break
			}
		}
		sort.Strings(diffs)
		if len(diffs) > 0 {
			t.Errorf("%s: %d of %d cells of the matrix wrong:\n%s", ph.name, len(diffs), len(insts)*(len(insts)-1)*len(probes), strings.Join(diffs, "\n"))
		}
	}
	// Revoking access cuts established connections too: an open connection
	// of a to c on tcp/9000 breaks when the policy goes.
	var a0, c0 instance
	for _, in := range insts {
		switch in.CellName[:2] {
		case "a0":
			a0 = in
		case "c0":
			c0 = in
		}
	}
	conn := dial(t, a0.netns, "tcp", c0.IP+":9000")
	defer conn.Close()
	request := func() error {
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: c\r\n\r\n"); err != nil {
			return err
		}
		buf := make([]byte, 4096)
		_, err := conn.Read(buf) // the whole small answer, or an error
		return err
	}
	if err := request(); err != nil {
		t.Fatalf("request on the open a->c connection = %v", err)
	}
	fd.cli(0, "remove-network-policy", "a", "c", "--protocol", "tcp", "--port", "9000-9100")
	waitFor(t, "the open a->c connection to be cut", func() bool { return request() != nil })

	// A policy for an app with no running instance is kept, and takes
	// effect when one starts.
	fd.cli(0, "create-app", "d")
	fd.cli(0, "add-network-policy", "a", "d", "--protocol", "tcp", "--port", "8080")
	fd.cli(0, "push", "d", "--", trellisBin, "sample-app")
	d0 := fd.instances("d")[0]
	deadlineD := time.Now().Add(10 * time.Second)
	for {
		ok, err := reach(a0.netns, d0.IP, probe{"tcp", 8080})
		if err == nil && ok {
			break
		}
		if time.Now().After(deadlineD) {
			t.Logf("DEBUG reach: %v %v; d0=%+v a0=%+v", ok, err, d0.Instance, a0.Instance)
			t.Logf("DEBUG flows:\n%s", fd.cli(0, "flows", "--app", "d"))
			t.Logf("DEBUG explain:\n%s", fd.cli(0, "explain", "a", "d", "--port", "8080"))
			for _, c := range fd.f.Cells {
				t.Logf("DEBUG %s log tail:\n%s", c.Name, lastLines(c.Agent.Log, 6))
				b, _ := os.ReadFile(filepath.Join(c.StateDir, "state.json"))
				var st api.CellState
				json.Unmarshal(b, &st)
				t.Logf("DEBUG %s state rev %d allows %+v", c.Name, st.Revision, st.Allows)
				for _, ep := range st.Endpoints {
					t.Logf("DEBUG %s endpoint %+v", c.Name, ep)
				}
				cnt, err := dataplane.New(netns.Path(c.NetNS), nil).Counters()
				t.Logf("DEBUG %s kernel allows %v err %v", c.Name, cnt.Allows, err)
				recs, _ := filepath.Glob(filepath.Join(c.StateDir, "containers", "*.json"))
				for _, r := range recs {
					b, _ := os.ReadFile(r)
					t.Logf("DEBUG %s record %s", c.Name, b)
				}
			}
			t.Fatal("timed out waiting for a to reach the new instance of d")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Denied attempts were logged with their reason.
	out := fd.cli(0, "flows", "--denied")
	if !strings.Contains(out, "no policy from") {
		t.Errorf("flows --denied shows no reasons:\n%s", out)
	}
}

func appOf(in instance) string { return in.CellName[:1] }

// reach tries one connection from inside ns: allowed (connected, or the UDP
// echo came back), denied (refused at once), or an error for anything else
// — a TCP connect that hangs is a failure: denials must be quick.
func reach(ns, ip string, p probe) (bool, error) {
	addr := net.JoinHostPort(ip, fmt.Sprint(p.port))
	var c net.Conn
	err := netns.Do(ns, func() (err error) {
		c, err = net.DialTimeout(p.proto, addr, 2*time.Second)
		return err
	})
	if errors.Is(err, syscall.ECONNREFUSED) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer c.Close()
	if p.proto == "tcp" {
		return true, nil
	}
	// A denied datagram is answered by ICMP port unreachable, which the
	// kernel rate-limits per peer (net.ipv4.icmp_ratelimit): no echo in
	// time counts as denied too.
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return false, err
	}
	buf := make([]byte, 16)
	_, err = c.Read(buf)
	var ne net.Error
	if errors.Is(err, syscall.ECONNREFUSED) || errors.As(err, &ne) && ne.Timeout() {
		return false, nil
	}
	return err == nil, err
}

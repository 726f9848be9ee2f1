package agent_test

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/trellis-c2c/trellis/internal/controller"
	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
	"github.com/trellis-c2c/trellis/internal/netns"
)

// rootNS opens the network namespace the test process runs in (on a real
// host, the root namespace) and returns a path to it that stays valid
// until the test ends. It is read from an unlocked thread: every such
// thread is in the process's own namespace (netns.Do switches only locked
// threads and restores them), whereas /proc/self/ns/net is the main
// thread's, which a netns.Do may be using at that moment.
func rootNS(t *testing.T) string {
	t.Helper()
	errc := make(chan error, 1)
	var f *os.File
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var err error
		f, err = os.Open("/proc/thread-self/ns/net")
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), f.Fd())
}

// hostSysctls are the namespace-wide settings a cell's dataplane changes
// in its own namespace.
var hostSysctls = []string{
	"net/ipv4/ip_forward", "net/ipv4/conf/all/forwarding", "net/ipv4/conf/all/rp_filter",
	"net/ipv4/conf/default/rp_filter", "net/ipv4/icmp_ratelimit", "net/ipv6/conf/all/disable_ipv6",
	"net/ipv6/conf/default/disable_ipv6", "net/ipv6/conf/lo/disable_ipv6", "net/netfilter/nf_conntrack_tcp_loose",
}

// nsState describes a namespace by kind ("links", "routes", ...), one
// sorted line per object, leaving out what changes by itself (counters,
// lifetimes, neighbours).
func nsState(t *testing.T, path string) map[string][]string {
	t.Helper()
	h := handle(t, path)
	st := map[string][]string{}
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	names := map[int]string{}
	for _, l := range links {
		a := l.Attrs()
		names[a.Index] = a.Name
		st["links"] = append(st["links"], fmt.Sprintf("%d %s %s mtu %d master %d flags %v mac %s",
			a.Index, a.Name, l.Type(), a.MTU, a.MasterIndex, a.Flags, a.HardwareAddr))
	}
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		st["addresses"] = append(st["addresses"], fmt.Sprintf("%s %s scope %d", names[a.LinkIndex], a.IPNet, a.Scope))
	}
	routes, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		st["routes"] = append(st["routes"], fmt.Sprintf("table %d type %d %v via %v dev %s src %v proto %d scope %d metric %d paths %d",
			r.Table, r.Type, r.Dst, r.Gw, names[r.LinkIndex], r.Src, r.Protocol, r.Scope, r.Priority, len(r.MultiPath)))
	}
	rules, err := h.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		st["rules"] = append(st["rules"], fmt.Sprintf("family %d prio %d from %v to %v iif %q oif %q mark %d table %d",
			r.Family, r.Priority, r.Src, r.Dst, r.IifName, r.OifName, r.Mark, r.Table))
	}
	st["nftables"] = nftState(t, path)
	for _, key := range hostSysctls {
		v, err := netns.GetSysctl(path, key)
		if errors.Is(err, os.ErrNotExist) {
			// Absent (module not loaded); loading it elsewhere may make it
			// appear, which changes nothing here.
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		st["sysctls"] = append(st["sysctls"], key+" = "+v)
	}
	st["sockets"] = ownSockets(t, path)
	for _, lines := range st {
		slices.Sort(lines)
	}
	return st
}

// nftState lists the namespace's nftables tables, their chains and how
// many rules each chain has.
func nftState(t *testing.T, path string) []string {
	t.Helper()
	c := dataplanetest.NFTables(t, path)
	tables, err := c.ListTables()
	if err != nil {
		t.Fatalf("list nftables tables: %v", err)
	}
	var out []string
	for _, tb := range tables {
		out = append(out, fmt.Sprintf("table %d %s", tb.Family, tb.Name))
	}
	chains, err := c.ListChains()
	if err != nil {
		t.Fatalf("list nftables chains: %v", err)
	}
	for _, ch := range chains {
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			t.Fatalf("list rules of %s %s: %v", ch.Table.Name, ch.Name, err)
		}
		out = append(out, fmt.Sprintf("chain %d %s %s: %d rules", ch.Table.Family, ch.Table.Name, ch.Name, len(rules)))
	}
	return out
}

// ownSockets lists the TCP sockets listening and the UDP sockets bound in
// the namespace at path that belong to this process (others on the machine
// may come and go): a DNS server or proxy of a cell opened here would be
// among them.
func ownSockets(t *testing.T, path string) []string {
	t.Helper()
	mine := map[string]bool{}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && strings.HasPrefix(l, "socket:[") {
			mine[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var out []string
	err = netns.Do(path, func() error {
		for _, proto := range []string{"tcp", "tcp6", "udp", "udp6"} {
			f, err := os.Open("/proc/thread-self/net/" + proto)
			if err != nil {
				return err
			}
			sc := bufio.NewScanner(f)
			sc.Scan() // the header
			for sc.Scan() {
				// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
				fs := strings.Fields(sc.Text())
				if len(fs) < 10 || !mine[fs[9]] || (strings.HasPrefix(proto, "tcp") && fs[3] != "0A") {
					continue
				}
				out = append(out, proto+" "+procNetAddr(fs[1]))
			}
			f.Close()
			if err := sc.Err(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// procNetAddr decodes an address of /proc/net/tcp ("0100007F:1F90", each
// 32-bit word of the address in host order) to "127.0.0.1:8080".
func procNetAddr(s string) string {
	ip, port, ok := strings.Cut(s, ":")
	b, err := hex.DecodeString(ip)
	p, perr := strconv.ParseUint(port, 16, 16)
	if !ok || err != nil || perr != nil || (len(b) != 4 && len(b) != 16) {
		return s
	}
	for i := 0; i < len(b); i += 4 {
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	a, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(a, uint16(p)).String()
}

func wantNSState(t *testing.T, when string, want, got map[string][]string) {
	t.Helper()
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("the test process's own namespace %s (-before +now):\n%s", when, diff)
	}
}

// TestRootNamespaceUntouched: agents given --netns join, converge, and
// serve a container's ADD and DEL without changing anything in the
// namespace they run in (which on this machine is the root namespace):
// links, addresses, routes, rules, nftables, sysctls, and sockets other
// than the unix socket and the connections to the controller.
func TestRootNamespaceUntouched(t *testing.T) {
	root := rootNS(t)
	w := newWorld(t, "root", 2)
	c := startController(t, w, controller.Config{StateDir: t.TempDir()})
	before := nsState(t, root)
	if !slices.ContainsFunc(before["links"], func(l string) bool { return strings.Contains(l, " lo ") }) {
		t.Fatalf("no lo among the links of the test's namespace: %v", before["links"])
	}
	if len(before["sockets"]) == 0 {
		t.Fatalf("the controller's listening socket is not among this process's sockets")
	}
	t.Logf("the test's namespace before the agents start: %d links, %d addresses, %d routes, %d rules, %d nftables objects, %d sysctls, sockets %v",
		len(before["links"]), len(before["addresses"]), len(before["routes"]), len(before["rules"]), len(before["nftables"]), len(before["sysctls"]), before["sockets"])

	a1, a2 := w.startTwo(t, c)
	p := installPlugin(t)
	l1, l2 := cniList(t, a1), cniList(t, a2)
	app := createApp(t, c, "web").GUID
	ctrA, ctrB := w.addPair(t, p, l1, l2, app)
	echoServer(t, ctrB.ns, echoPort)
	if err := talk(t, ctrA, ctrB, echoPort); err != nil {
		t.Errorf("TCP from a (cell1) to b (cell2): %v", err)
	}
	wantNSState(t, "with the agents running and two containers attached", before, nsState(t, root))

	if err := w.del(p, l1, ctrA); err != nil {
		t.Errorf("DEL a: %v", err)
	}
	if err := w.del(p, l2, ctrB); err != nil {
		t.Errorf("DEL b: %v", err)
	}
	for _, a := range []*running{a1, a2} {
		if err := a.stop(); err != nil {
			t.Errorf("agent.Run(%s) = %v after cancel, want nil", a.cfg.Name, err)
		}
	}
	wantNSState(t, "after DEL and the agents' exit", before, nsState(t, root))
}

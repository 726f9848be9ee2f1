package netns_test

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
	"github.com/trellis-c2c/trellis/internal/netns"
	"github.com/vishvananda/netlink"
)

func TestMain(m *testing.M) { os.Exit(dataplanetest.Run(m)) }

// inode identifies a namespace file.
func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestCreateDelete(t *testing.T) {
	dataplanetest.RequireRoot(t)
	name := dataplanetest.Prefix + "cd"
	path, err := netns.Create(name)
	if err != nil {
		t.Fatalf("Create(%q) = %v", name, err)
	}
	t.Cleanup(func() { netns.Delete(name) })
	if want := "/run/netns/" + name; path != want {
		t.Errorf("Create(%q) path = %q, want %q", name, path, want)
	}
	if inode(t, path) == inode(t, "/proc/self/ns/net") {
		t.Errorf("Create(%q) bound the current namespace", name)
	}

	h, err := netns.Handle(path)
	if err != nil {
		t.Fatalf("Handle(%q) = %v", path, err)
	}
	lo, err := h.LinkByName("lo")
	h.Close()
	if err != nil {
		t.Fatal(err)
	}
	if lo.Attrs().Flags&(1<<0) == 0 { // net.FlagUp
		t.Errorf("lo in %s is down, want up", path)
	}

	if _, err := netns.Create(name); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second Create(%q) = %v, want an error wrapping fs.ErrExist", name, err)
	}
	for i := range 2 {
		if err := netns.Delete(name); err != nil {
			t.Errorf("Delete(%q) #%d = %v", name, i+1, err)
		}
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after Delete, stat %s = %v, want not exist", path, err)
	}
}

func TestDoSwitchesAndRestores(t *testing.T) {
	dataplanetest.RequireRoot(t)
	path := dataplanetest.Namespace(t, "do")
	want := inode(t, path)
	before := inode(t, "/proc/thread-self/ns/net")

	var inside uint64
	err := netns.Do(path, func() error {
		inside = inode(t, "/proc/thread-self/ns/net")
		return nil
	})
	if err != nil {
		t.Fatalf("Do(%q) = %v", path, err)
	}
	if inside != want {
		t.Errorf("Do(%q) ran in netns inode %d, want %d", path, inside, want)
	}
	if after := inode(t, "/proc/thread-self/ns/net"); after != before {
		t.Errorf("after Do, caller's thread is in netns inode %d, want %d", after, before)
	}

	sentinel := errors.New("boom")
	if err := netns.Do(path, func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Errorf("Do(%q, failing fn) = %v, want %v", path, err, sentinel)
	}
}

func TestDoMissingNamespace(t *testing.T) {
	path := "/run/netns/" + dataplanetest.Prefix + "missing"
	err := netns.Do(path, func() error { return nil })
	if err == nil || !strings.Contains(err.Error(), path) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Do(%q) = %v, want a not-exist error naming the path", path, err)
	}
	if _, err := netns.Handle(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("Handle(%q) = %v, want an error naming the path", path, err)
	}
}

func TestSysctlIsPerNamespace(t *testing.T) {
	dataplanetest.RequireRoot(t)
	a := dataplanetest.Namespace(t, "sa")
	b := dataplanetest.Namespace(t, "sb")
	root, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}

	if err := netns.Sysctl(a, "net.ipv4.ip_forward", "1"); err != nil {
		t.Fatalf("Sysctl(%s) = %v", a, err)
	}
	for _, c := range []struct{ path, want string }{{a, "1"}, {b, "0"}} {
		got, err := netns.GetSysctl(c.path, "net.ipv4.ip_forward")
		if err != nil || got != c.want {
			t.Errorf("GetSysctl(%s, net.ipv4.ip_forward) = %q, %v, want %q", c.path, got, err, c.want)
		}
	}
	if now, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); string(now) != string(root) {
		t.Errorf("root netns ip_forward changed from %q to %q", root, now)
	}

	// A per-device key, in slash form.
	if err := netns.Sysctl(a, "net/ipv6/conf/lo/disable_ipv6", "1"); err != nil {
		t.Fatalf("Sysctl(%s, lo disable_ipv6) = %v", a, err)
	}
	if got, _ := netns.GetSysctl(a, "net.ipv6.conf.lo.disable_ipv6"); got != "1" {
		t.Errorf("GetSysctl(%s, lo disable_ipv6) = %q, want 1", a, got)
	}
}

func TestHandleActsInNamespace(t *testing.T) {
	dataplanetest.RequireRoot(t)
	path := dataplanetest.Namespace(t, "h")
	h, err := netns.Handle(path)
	if err != nil {
		t.Fatalf("Handle(%q) = %v", path, err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil || len(links) != 1 || links[0].Attrs().Name != "lo" {
		t.Fatalf("Handle(%q).LinkList() = %v, %v, want only lo (a fresh namespace)", path, links, err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "trtest-br"}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatalf("add bridge in %s: %v", path, err)
	}
	if _, err := h.LinkByName("trtest-br"); err != nil {
		t.Errorf("bridge not found in %s: %v", path, err)
	}
	if _, err := netlink.LinkByName("trtest-br"); err == nil {
		t.Errorf("bridge made in %s is visible in the test's own namespace", path)
	}
}

package executor_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
	"github.com/trellis-c2c/trellis/internal/executor"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// probeCommand makes the test binary try, from inside an instance, what
// an app's command must not be able to do, and print one "check: result"
// line for each (see probe).
const probeCommand = "executor-test-probe"

// probe is run as an instance's command. Paths and PIDs come in its
// environment: AGENT_PID (the test process, as an agent), CELL_KEY and
// OTHER_KEY (files in a hidden directory), OWN_KEY (the instance's own
// key, mounted), HOST_TMP (a file in the host's /tmp), ETC_FILE (a file
// to make in /etc).
func probe() int {
	result := func(err error) string {
		if err == nil {
			return "ok"
		}
		var errno unix.Errno
		if errors.As(err, &errno) {
			return unix.ErrnoName(errno)
		}
		return "error " + err.Error()
	}
	say := func(check, res string) { fmt.Printf("%s: %s\n", check, res) }

	groups, _ := os.Getgroups()
	say("ids", fmt.Sprintf("%d %d %d %v", os.Getuid(), os.Geteuid(), os.Getgid(), groups))
	status, _ := os.ReadFile("/proc/self/status")
	for l := range strings.Lines(string(status)) {
		if k, v, ok := strings.Cut(l, ":"); ok && (strings.HasPrefix(k, "Cap") || k == "NoNewPrivs") {
			say(k, strings.TrimSpace(v))
		}
	}
	// nft list ruleset, through netlink.
	nft, err := nftables.New()
	if err == nil {
		_, err = nft.ListTables()
	}
	say("nft list", result(err))
	// ip link set eth0 down, through netlink.
	link, err := netlink.LinkByName("eth0")
	if err == nil {
		err = netlink.LinkSetDown(link)
	}
	say("link down", result(err))
	_, err = os.ReadDir("/root")
	say("list /root", result(err))
	for _, env := range []string{"CELL_KEY", "OTHER_KEY", "OWN_KEY", "HOST_TMP"} {
		_, err := os.ReadFile(os.Getenv(env))
		say("read "+env, result(err))
	}
	say("write OWN_KEY", result(os.WriteFile(os.Getenv("OWN_KEY"), nil, 0)))
	say("write /etc", result(os.WriteFile(os.Getenv("ETC_FILE"), nil, 0o644)))
	pid, _ := strconv.Atoi(os.Getenv("AGENT_PID"))
	say("kill agent", result(unix.Kill(pid, 0)))
	say("kill init", result(unix.Kill(1, unix.SIGTERM)))
	for _, port := range []string{"80", "8080"} {
		l, err := net.Listen("tcp", ":"+port)
		if err == nil {
			l.Close()
		}
		say("listen "+port, result(err))
	}
	var pids []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, e.Name())
		}
	}
	say("pid", strconv.Itoa(os.Getpid()))
	say("proc", strings.Join(pids, " "))
	var links []string
	entries, _ = os.ReadDir("/sys/class/net")
	for _, e := range entries {
		links = append(links, e.Name())
	}
	say("sys/class/net", strings.Join(links, " "))
	host, _ := os.Hostname()
	say("hostname", host)
	say("write HOME", result(os.WriteFile(filepath.Join(os.Getenv("HOME"), "f"), []byte("x"), 0o600)))
	say("write /tmp", result(os.WriteFile("/tmp/probe", []byte("x"), 0o600)))
	fmt.Println("ready")
	return 0
}

// addEth0 gives the namespace at ns an eth0, a veth whose peer is in
// another namespace, as CNI gives an instance, and returns a handle in ns.
func addEth0(t *testing.T, ns string) *netlink.Handle {
	t.Helper()
	cell, err := os.Open(newNetns(t, filepath.Base(ns)+"c"))
	if err != nil {
		t.Fatal(err)
	}
	defer cell.Close()
	h := dataplanetest.Handle(t, ns)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0", PeerNamespace: netlink.NsFd(cell.Fd())}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	return h
}

// TestSandbox checks, from inside an instance, that its command is not
// root: it cannot read or change the cell's firewall or links, read the
// cell's or another instance's keys, see or signal the agent, or bind a
// privileged port; it sees its own processes, interfaces and hostname.
func TestSandbox(t *testing.T) {
	dataplanetest.RequireRoot(t)
	ns := newNetns(t, "sandbox")
	h := addEth0(t, ns)
	if link, err := h.LinkByName("eth0"); err != nil || h.LinkSetUp(link) != nil {
		t.Fatalf("set eth0 up: %v", err)
	}

	// An agent's state dir, to hide: the cell's key, another instance's
	// key that its mode would let anyone read.
	agentDir := t.TempDir()
	os.Chmod(agentDir, 0o755)
	cellKey := filepath.Join(agentDir, "cell.key")
	otherKey := filepath.Join(agentDir, "credentials", "other", "instance.key")
	hostTmp := filepath.Join(os.TempDir(), "trellis-probe-"+filepath.Base(agentDir))
	etcFile := "/etc/trellis-probe-" + filepath.Base(agentDir) // must not be made
	t.Cleanup(func() { os.Remove(hostTmp); os.Remove(etcFile) })
	for path, mode := range map[string]os.FileMode{cellKey: 0o600, otherKey: 0o644, hostTmp: 0o644} {
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, []byte("secret\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	spec := newSpec(t, ns, os.Args[0], probeCommand)
	uid := executor.UserID(spec.ID)
	ownDir := filepath.Join(agentDir, "credentials", spec.ID)
	ownKey := filepath.Join(ownDir, "instance.key")
	os.MkdirAll(ownDir, 0o755)
	if err := os.WriteFile(ownKey, []byte("mine\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(ownKey, uid, uid); err != nil {
		t.Fatal(err)
	}
	const credsInside = "/tmp/creds"
	spec.Mounts = []executor.Mount{{Source: ownDir, Target: credsInside}}
	spec.Hide = []string{agentDir}
	spec.StateDir = filepath.Join(agentDir, "instances", spec.ID)
	spec.Env = append(spec.Env, "HOME="+executor.Home, "AGENT_PID="+strconv.Itoa(os.Getpid()),
		"CELL_KEY="+cellKey, "OTHER_KEY="+otherKey, "HOST_TMP="+hostTmp, "ETC_FILE="+etcFile,
		"OWN_KEY="+credsInside+"/instance.key")

	p, err := executor.Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, p)
	got := logLines(t, spec.LogPath)
	const noCaps = "0000000000000000"
	want := map[string]string{
		"ids":           fmt.Sprintf("%d %d %d []", uid, uid, uid),
		"CapInh":        noCaps,
		"CapPrm":        noCaps,
		"CapEff":        noCaps,
		"CapBnd":        noCaps,
		"CapAmb":        noCaps,
		"NoNewPrivs":    "1",
		"nft list":      "EPERM",
		"link down":     "EPERM",
		"read CELL_KEY": "ENOENT", "read OTHER_KEY": "ENOENT", // hidden
		"read OWN_KEY":  "ok",
		"read HOST_TMP": "ENOENT", // a private /tmp
		"write OWN_KEY": "EROFS",
		"write /etc":    "EACCES",
		"kill agent":    "ESRCH", // not in its PID namespace
		"kill init":     "EPERM",
		"listen 80":     "EACCES",
		"listen 8080":   "ok",
		"proc":          "1 " + got["pid"], // its init and itself
		"sys/class/net": "eth0 lo",
		"hostname":      spec.ID,
		"write HOME":    "ok",
		"write /tmp":    "ok",
	}
	if st, err := os.Stat("/root"); err == nil && st.Mode().Perm()&0o005 == 0 {
		want["list /root"] = "EACCES"
	}
	var keys []string
	for k := range want {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if got[k] != want[k] {
			t.Errorf("inside the instance, %s = %q, want %q", k, got[k], want[k])
		}
	}
	if link, err := h.LinkByName("eth0"); err != nil || link.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("eth0 after the probe: %v, %v; want up", link, err)
	}
}

// TestExecSandbox runs the tools an attacker would, through Exec: each
// fails, and works through ExecAsRoot.
func TestExecSandbox(t *testing.T) {
	dataplanetest.RequireRoot(t)
	ns := newNetns(t, "execsandbox")
	addEth0(t, ns)
	spec := newSpec(t, ns)
	script := `id -u; hostname; ls /sys/class/net | tr '\n' ' '; echo
		nft list ruleset >/dev/null 2>&1; echo "nft $?"
		ip link set eth0 up 2>/dev/null; echo "ip $?"
		kill -0 ` + strconv.Itoa(os.Getpid()) + ` 2>/dev/null; echo "kill $?"`
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft is not installed")
	}
	for _, tt := range []struct {
		name string
		run  func(context.Context, executor.Spec, io.Reader, io.Writer, io.Writer, []string) (int, error)
		want string
	}{
		{"Exec", executor.Exec, fmt.Sprintf("%d\n%s\neth0 lo \nnft 1\nip 2\nkill 1\n", executor.UserID(spec.ID), spec.ID)},
		{"ExecAsRoot", executor.ExecAsRoot, fmt.Sprintf("0\n%s\neth0 lo \nnft 0\nip 0\nkill 1\n", spec.ID)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			code, err := tt.run(t.Context(), spec, nil, &out, &out, []string{"sh", "-c", script})
			if err != nil || code != 0 {
				t.Fatalf("%s = %d, %v: %s", tt.name, code, err, out.String())
			}
			if out.String() != tt.want {
				t.Errorf("%s output = %q, want %q", tt.name, out.String(), tt.want)
			}
		})
	}
}

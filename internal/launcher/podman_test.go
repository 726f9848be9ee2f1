package launcher

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/netns"
)

// TestPodman runs a real container runtime, Debian's podman 4.3 with its
// CNI backend, on a cell of a local foundation: a busybox container started
// from a local root filesystem (no registry) on the trellis network gets an
// overlay address, resolves internal routes at the cell's DNS, and is held
// to policy exactly like an instance of `trellis push`. docs/runtimes.md
// explains each command it runs.
//
// podman runs inside the cell's network namespace (so the host side of the
// veth is made there, as on a real cell) and inside a private mount
// namespace over /var/lib and /run (so that neither libcni's cache in
// /var/lib/cni nor podman's and runc's state under /run touch the machine),
// with configuration and storage in a temporary directory.
func TestPodman(t *testing.T) {
	requireRoot(t)
	tools := requirePodman(t)
	fd := upFoundation(t, 2)
	fd.cli(0, "push", "backend", "--cell", "cell2")
	fd.cli(0, "map-route", "backend", "apps.internal", "--hostname", "backend")
	// The container's app is a trellis app like any other: policies name it.
	fd.cli(0, "create-app", "pod")
	apps, err := fd.client().Apps(t.Context(), api.AppFilter{Names: []string{"backend", "pod"}})
	if err != nil || len(apps) != 2 {
		t.Fatalf("apps backend and pod: %v %v", apps, err)
	}
	var app, backend string
	for _, a := range apps {
		if a.Name == "pod" {
			app = a.GUID
		} else {
			backend = a.GUID
		}
	}
	var be api.Instance
	waitFor(t, "backend to have an overlay address", func() bool {
		ins := fd.appInstances(backend)
		if len(ins) == 1 && ins[0].IP != "" {
			be = ins[0]
			return true
		}
		return false
	})
	cell := fd.f.Cells[0]
	st, err := AgentStatus(t.Context(), cell.Socket)
	if err != nil {
		t.Fatal(err)
	}
	subnet, err := netip.ParsePrefix(st.Subnet)
	if err != nil {
		t.Fatalf("cell1 subnet %q: %v", st.Subnet, err)
	}
	pm := newPodman(t, tools, fd.f, cell)

	// The identity rides in CNI_ARGS: podman hands its own CNI_ARGS on to the
	// plugins (with IgnoreUnknown=1 and K8S_POD_NAME of its own).
	id := pm.run("pod0", "trellis", "TRELLIS_APP_GUID="+app+";TRELLIS_APP_NAME=pod;TRELLIS_INDEX=0")
	ip := strings.TrimSpace(pm.podman(0, "", "inspect", "--format", `{{(index .NetworkSettings.Networks "trellis").IPAddress}}`, "pod0"))
	addr, err := netip.ParseAddr(ip)
	if err != nil || !subnet.Contains(addr) {
		t.Fatalf("podman inspect: pod0 has address %q, want one in cell1's overlay subnet %s", ip, subnet)
	}
	if out := pm.exec(0, "pod0", "ip", "-4", "-o", "addr", "show", "dev", "eth0"); !strings.Contains(out, "inet "+ip+" ") {
		t.Errorf("ip addr inside pod0 = %q, want inet %s", out, ip)
	}
	if out := pm.exec(0, "pod0", "cat", "/etc/resolv.conf"); strings.TrimSpace(out) != "nameserver 169.254.0.2" {
		t.Errorf("/etc/resolv.conf inside pod0 = %q, want the cell's DNS alone", out)
	}
	// The host side of the veth is in the cell, not in the machine's namespace.
	hostVeth := "s-" + paddedIP(addr)
	h, err := netns.Handle(netns.Path(cell.NetNS))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, err := h.LinkByName(hostVeth); err != nil {
		t.Errorf("host side of pod0's veth, %s, in cell1: %v", hostVeth, err)
	}
	if _, err := net.InterfaceByName(hostVeth); err == nil {
		t.Errorf("host side of pod0's veth, %s, is in the machine's own namespace", hostVeth)
	}
	// The controller knows the container as an instance of pod.
	waitFor(t, "pod0 to be registered as an instance of pod", func() bool {
		ins := fd.appInstances(app)
		return len(ins) == 1 && ins[0].GUID == id && ins[0].IP == ip && ins[0].CellName == "cell1" && ins[0].Index == 0
	})

	// The internal route resolves at the cell's DNS...
	if out := pm.exec(0, "pod0", "nslookup", "backend.apps.internal", "169.254.0.2"); !strings.Contains(out, "Address: "+be.IP) {
		t.Errorf("nslookup backend.apps.internal 169.254.0.2 in pod0 = %q, want %s", out, be.IP)
	}
	// ...but without a policy the connection is refused, and the cell says
	// who was refused: pod0, as app pod. (Debian 12's busybox wget crashes
	// with -T, so busybox timeout bounds it.)
	wget := []string{"timeout", "5", "wget", "-q", "-O-", "http://backend.apps.internal:8080/"}
	if out := pm.exec(1, "pod0", wget...); !strings.Contains(out, "refused") {
		t.Errorf("wget backend without a policy = %q, want connection refused", out)
	}
	waitFor(t, "the denied connection of pod0 in `trellis flows`", func() bool {
		return slices.ContainsFunc(fd.flows("--denied", "--app", "pod"), func(f flow) bool {
			return f.SrcInstance == id && f.DstAppName == "backend" && f.Protocol == "tcp" && f.DstPort == 8080
		})
	})
	fd.cli(0, "add-network-policy", "pod", "backend", "--protocol", "tcp", "--port", "8080")
	var body string
	waitFor(t, "pod0 to reach backend once the policy is in force", func() bool {
		out, code := pm.execCode("pod0", wget...)
		body = out
		return code == 0
	})
	if !strings.Contains(body, `"app":"backend"`) || !strings.Contains(body, `"ip":"`+be.IP+`"`) {
		t.Errorf("wget backend with the policy = %q, want the sample app's answer from %s", body, be.IP)
	}

	// A runtime that cannot pass CNI_ARGS (nerdctl) uses one network per app
	// whose configuration carries the identity: pod1, on network trellis-pod,
	// is instance 1 of pod with no CNI_ARGS at all, and the policy holds for it.
	pm.addAppNetwork("trellis-pod", map[string]any{"app_id": app, "app_name": "pod", "index": "1"})
	id1 := pm.run("pod1", "trellis-pod", "")
	waitFor(t, "pod1 to be registered as instance 1 of pod", func() bool {
		return slices.ContainsFunc(fd.appInstances(app), func(in api.Instance) bool { return in.GUID == id1 && in.Index == 1 })
	})
	waitFor(t, "pod1 to reach backend", func() bool {
		_, code := pm.execCode("pod1", wget...)
		return code == 0
	})

	// Removing the containers runs CNI DEL: their instances and wiring go.
	pm.podman(0, "", "rm", "--force", "--time", "0", "pod0", "pod1")
	waitFor(t, "pod's instances to be deregistered", func() bool { return len(fd.appInstances(app)) == 0 })
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "s-") {
			t.Errorf("link %s left in cell1 after podman rm", l.Attrs().Name)
		}
	}
}

// podmanTools are the programs TestPodman runs.
type podmanTools struct {
	podman, nsenter, unshare, busybox string
}

// requirePodman finds podman, runc (podman's runtime here: crun 1.8 refuses
// the hybrid cgroup hierarchy of machines like this one), nsenter and
// unshare, and a static busybox; without them the test skips, or fails
// under CI.
func requirePodman(t *testing.T) podmanTools {
	t.Helper()
	var tl podmanTools
	var missing []string
	for _, p := range []struct {
		name string
		dst  *string
	}{{"podman", &tl.podman}, {"runc", nil}, {"nsenter", &tl.nsenter}, {"unshare", &tl.unshare}, {"busybox", &tl.busybox}} {
		path, err := exec.LookPath(p.name)
		if err != nil {
			missing = append(missing, p.name)
			continue
		}
		if p.dst != nil {
			*p.dst = path
		}
	}
	if tl.busybox != "" {
		if f, err := elf.Open(tl.busybox); err == nil {
			for _, prog := range f.Progs {
				if prog.Type == elf.PT_INTERP {
					missing = append(missing, "a static busybox ("+tl.busybox+" is dynamically linked)")
					break
				}
			}
			f.Close()
		}
	}
	if len(missing) > 0 {
		msg := fmt.Sprintf("missing %s: apt-get install podman runc busybox-static", strings.Join(missing, ", "))
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + " (CI must run this test; .ci/run installs them)")
		}
		t.Skip(msg)
	}
	out, _ := exec.Command(tl.podman, "--version").CombinedOutput()
	t.Logf("%s", bytes.TrimSpace(out))
	return tl
}

// podman runs podman for one cell with everything in a temporary directory.
type podman struct {
	t      *testing.T
	tools  podmanTools
	dir    string
	netns  string   // the cell's network namespace (path)
	mntns  string   // the private mount namespace (path)
	env    []string // CONTAINERS_CONF and CONTAINERS_STORAGE_CONF
	cgroup string   // the cgroup parent of the containers
	// conflist is the cell's network configuration list.
	conflist map[string]any
}

// newPodman prepares podman for cell: a busybox root filesystem, the CNI
// plugin and the cell's conflist, containers.conf and storage.conf, and the
// private mount namespace. Its cleanup removes every container, cgroup and
// mount it made.
func newPodman(t *testing.T, tl podmanTools, f *Foundation, cell Cell) *podman {
	t.Helper()
	dir := t.TempDir()
	p := &podman{t: t, tools: tl, dir: dir, netns: netns.Path(cell.NetNS), cgroup: "/" + f.Prefix + "-podman"}
	for _, d := range []string{"rootfs/bin", "cni-bin", "net.d", "storage", "run", "tmp", "var-lib"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The root filesystem: busybox and a link for each of its applets.
	if err := copyFile(tl.busybox, filepath.Join(dir, "rootfs/bin/busybox"), 0o755); err != nil {
		t.Fatal(err)
	}
	applets, err := exec.Command(tl.busybox, "--list").Output()
	if err != nil {
		t.Fatalf("busybox --list: %v", err)
	}
	for _, a := range strings.Fields(string(applets)) {
		if a != "busybox" {
			if err := os.Symlink("busybox", filepath.Join(dir, "rootfs/bin", a)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The plugin under the name the conflist's "type" gives, and the conflist
	// of the cell (`trellis cni-config` prints the same).
	if err := os.Symlink(f.CNIPlugin, filepath.Join(dir, "cni-bin", "trellis-cni")); err != nil {
		t.Fatal(err)
	}
	conflist, err := os.ReadFile(cell.CNIConfList)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(conflist, &p.conflist); err != nil {
		t.Fatalf("conflist %s: %v", cell.CNIConfList, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "net.d", "10-trellis.conflist"), conflist, 0o644); err != nil {
		t.Fatal(err)
	}
	p.write("containers.conf", fmt.Sprintf(`[network]
network_backend = "cni"
cni_plugin_dirs = [%[1]q]
network_config_dir = %[2]q
default_network = "trellis"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %[3]q
tmp_dir = %[4]q
`, filepath.Join(dir, "cni-bin"), filepath.Join(dir, "net.d"), filepath.Join(dir, "events.log"), filepath.Join(dir, "tmp")))
	p.write("storage.conf", fmt.Sprintf(`[storage]
driver = "vfs"
graphroot = %q
runroot = %q
`, filepath.Join(dir, "storage"), filepath.Join(dir, "run")))
	p.env = []string{"CONTAINERS_CONF=" + filepath.Join(dir, "containers.conf"), "CONTAINERS_STORAGE_CONF=" + filepath.Join(dir, "storage.conf")}

	// The private mount namespace, held by a process that lives until its
	// stdin closes: a temporary directory over /var/lib, a tmpfs over /run.
	holder := exec.Command(tl.unshare, "--mount", "--propagation", "private", "sh", "-c",
		`mount --bind "$0" /var/lib && mount -t tmpfs -o mode=0755 trellis-podman /run && echo ready && exec cat`,
		filepath.Join(dir, "var-lib"))
	stdin, err := holder.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	holder.Stderr = &stderr
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		holder.Wait()
	})
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "ready\n" {
		t.Fatalf("private mount namespace for podman: %q %s", line, stderr.String())
	}
	go io.Copy(io.Discard, stdout)
	p.mntns = fmt.Sprintf("/proc/%d/ns/mnt", holder.Process.Pid)
	// Runs before the holder goes (cleanups run last-in first-out).
	t.Cleanup(func() {
		if out, code := p.run0("rm", "--all", "--force", "--time", "0"); code != 0 {
			t.Errorf("podman rm --all: exit %d\n%s", code, out)
		}
		p.removeCgroups()
		if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil && bytes.Contains(mi, []byte(dir)) {
			t.Errorf("mounts left under %s:\n%s", dir, mi)
		}
	})
	return p
}

func (p *podman) write(name, content string) {
	p.t.Helper()
	if err := os.WriteFile(filepath.Join(p.dir, name), []byte(content), 0o644); err != nil {
		p.t.Fatal(err)
	}
}

// runArgs runs podman with args in the cell and the private mount
// namespace, with CNI_ARGS cniArgs, and returns its output and exit code.
func (p *podman) runArgs(cniArgs string, args ...string) (string, int) {
	p.t.Helper()
	cmd := exec.Command(p.tools.nsenter, append([]string{"--mount=" + p.mntns, "--net=" + p.netns, "--", p.tools.podman}, args...)...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Env = append(cmd.Env, "CNI_ARGS="+cniArgs)
	cmd.Dir = p.dir
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		p.t.Fatalf("podman %s: %v", strings.Join(args, " "), err)
	}
	return string(out), 0
}

// run0 is runArgs without CNI_ARGS.
func (p *podman) run0(args ...string) (string, int) { return p.runArgs("", args...) }

// podman runs podman, which must exit with want, and returns its output.
func (p *podman) podman(want int, cniArgs string, args ...string) string {
	p.t.Helper()
	out, code := p.runArgs(cniArgs, args...)
	if code != want {
		p.t.Fatalf("podman %s = exit %d, want %d:\n%s", strings.Join(args, " "), code, want, out)
	}
	return out
}

// run starts a busybox container on network with CNI_ARGS cniArgs, and
// returns its ID.
func (p *podman) run(name, network, cniArgs string) string {
	p.t.Helper()
	out := p.podman(0, cniArgs, "run", "--detach", "--name", name,
		"--network", network, "--dns", "169.254.0.2",
		"--cgroup-parent", p.cgroup,
		"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000",
		"--rootfs", filepath.Join(p.dir, "rootfs"),
		"sleep", "600")
	return strings.TrimSpace(out)
}

// exec runs a command in container name, which must exit with want.
func (p *podman) exec(want int, name string, args ...string) string {
	p.t.Helper()
	return p.podman(want, "", append([]string{"exec", name}, args...)...)
}

func (p *podman) execCode(name string, args ...string) (string, int) {
	p.t.Helper()
	return p.run0(append([]string{"exec", name}, args...)...)
}

// addAppNetwork writes a network named name for one app: the cell's
// network with the app's identity as the plugin's runtimeConfig.metadata,
// and without capabilities, so that no runtime injects a runtimeConfig over
// it.
func (p *podman) addAppNetwork(name string, metadata map[string]any) {
	p.t.Helper()
	plugins, _ := p.conflist["plugins"].([]any)
	if len(plugins) != 1 {
		p.t.Fatalf("the cell's conflist has plugins %v, want one", p.conflist["plugins"])
	}
	plugin := maps.Clone(plugins[0].(map[string]any))
	delete(plugin, "capabilities")
	plugin["runtimeConfig"] = map[string]any{"metadata": metadata}
	list := maps.Clone(p.conflist)
	list["name"], list["plugins"] = name, []any{plugin}
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		p.t.Fatal(err)
	}
	p.write(filepath.Join("net.d", "20-"+name+".conflist"), string(b))
}

// removeCgroups removes the containers' cgroup parent (and conmon's cgroup
// under it) from every cgroup hierarchy: cgroupfs leaves them.
func (p *podman) removeCgroups() {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		p.t.Error(err)
		return
	}
	for line := range strings.Lines(string(mi)) {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE SUPER
		pre, post, ok := strings.Cut(line, " - ")
		fields, typ := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fields) < 5 || len(typ) < 1 || (typ[0] != "cgroup" && typ[0] != "cgroup2") {
			continue
		}
		root := filepath.Join(fields[4], p.cgroup)
		var dirs []string
		filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for _, d := range slices.Backward(dirs) {
			// conmon leaves its cgroup only once it has run podman's cleanup
			// for the container and exited, which may still be under way.
			deadline := time.Now().Add(10 * time.Second)
			err := syscall.Rmdir(d)
			for errors.Is(err, syscall.EBUSY) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
				err = syscall.Rmdir(d)
			}
			if err != nil {
				p.t.Errorf("remove cgroup %s: %v", d, err)
			}
		}
	}
}

// paddedIP is the address as host veth names spell it: 10.255.1.2 is
// 010255001002.
func paddedIP(a netip.Addr) string {
	b := a.As4()
	return fmt.Sprintf("%03d%03d%03d%03d", b[0], b[1], b[2], b[3])
}

// appInstances lists the app's instances as the controller has them.
func (fd *foundation) appInstances(guid string) []api.Instance {
	fd.t.Helper()
	ins, err := fd.client().Instances(fd.t.Context(), guid)
	if err != nil {
		fd.t.Fatal(err)
	}
	return ins
}

// flow is an entry of `trellis flows --json`.
type flow struct {
	Verdict     string `json:"verdict"`
	Protocol    string `json:"protocol"`
	DstPort     int    `json:"dst_port"`
	SrcInstance string `json:"src_instance"`
	SrcAppName  string `json:"src_app_name"`
	DstAppName  string `json:"dst_app_name"`
}

func (fd *foundation) flows(args ...string) []flow {
	fd.t.Helper()
	out := fd.cli(0, append([]string{"flows", "--json"}, args...)...)
	var fl []flow
	if err := json.Unmarshal([]byte(out), &fl); err != nil {
		fd.t.Fatalf("trellis flows --json: %v\n%s", err, out)
	}
	return fl
}

package launcher

import (
	"bufio"
	"context"
	"encoding/binary"

	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/agent"
	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/capture"
	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
	"github.com/trellis-c2c/trellis/internal/executor"
	"github.com/trellis-c2c/trellis/internal/netns"
)

// trellisBin is the trellis binary the foundation tests run, built once,
// with trellis-cni next to it (as `go build -o . ./cmd/...` builds them).
var trellisBin string

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() != 0 {
			return m.Run() // the tests skip (or fail under CI)
		}
		dir, err := os.MkdirTemp("", "trellis-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		trellisBin = filepath.Join(dir, "trellis")
		// Static, as the README builds them.
		build := exec.Command("go", "build", "-o", dir+"/",
			"github.com/trellis-c2c/trellis/cmd/trellis", "github.com/trellis-c2c/trellis/cmd/trellis-cni")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := build.CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build trellis: %v\n%s", err, out)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// requireRoot skips a test that builds namespaces unless it runs as root
// (under CI=true it fails instead).
func requireRoot(t *testing.T) {
	t.Helper()
	dataplanetest.RequireRoot(t)
}

// foundation is a running local foundation for one test.
type foundation struct {
	t *testing.T
	f *Foundation
}

func upFoundation(t *testing.T, cells int) *foundation {
	t.Helper()
	return upFoundationWith(t, Options{Cells: cells})
}

// upFoundationWith brings up a foundation with o (its state dir, binary
// and progress are the test's) and takes it down when the test ends.
func upFoundationWith(t *testing.T, o Options) *foundation {
	t.Helper()
	requireRoot(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	o.StateDir, o.Exe, o.Progress = dir, trellisBin, testWriter{t}
	f, err := Up(ctx, o)
	if err != nil {
		t.Fatalf("Up = %v", err)
	}
	t.Cleanup(func() {
		if err := Down(context.Background(), dir, true, testWriter{t}); err != nil {
			t.Errorf("Down = %v", err)
		}
		if left := ownNamespaces(f.Prefix); len(left) > 0 {
			t.Errorf("namespaces left after Down: %v", left)
		}
		if left := daemons("agent", filepath.Join(dir, "cells", "cell1")); len(left) > 0 {
			t.Errorf("agents left after Down: %v", left)
		}
	})
	return &foundation{t: t, f: f}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// cli runs the trellis CLI against the foundation; it must exit with want.
func (fd *foundation) cli(want int, args ...string) string {
	fd.t.Helper()
	cmd := exec.Command(trellisBin, args...)
	cmd.Env = append(os.Environ(), "TRELLIS_CONFIG="+fd.f.Admin, "TRELLIS_STATE_DIR="+fd.f.StateDir)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		fd.t.Fatalf("trellis %v: %v", args, err)
	}
	if code != want {
		fd.t.Fatalf("trellis %s = exit %d, want %d:\n%s", strings.Join(args, " "), code, want, out)
	}
	return string(out)
}

func (fd *foundation) client() *api.Client {
	cfg, err := api.LoadClientConfig(fd.f.Admin)
	if err != nil {
		fd.t.Fatal(err)
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		fd.t.Fatal(err)
	}
	return c
}

// instance is one running instance as the test reaches it.
type instance struct {
	api.Instance
	netns string // path
}

func (fd *foundation) instances(app string) []instance {
	fd.t.Helper()
	c := fd.client()
	apps, err := c.Apps(context.Background(), api.AppFilter{Names: []string{app}})
	if err != nil || len(apps) != 1 {
		fd.t.Fatalf("app %s: %v %v", app, apps, err)
	}
	ins, err := c.Instances(context.Background(), apps[0].GUID)
	if err != nil {
		fd.t.Fatal(err)
	}
	var out []instance
	for _, in := range ins {
		for _, cell := range fd.f.Cells {
			if cell.Name == in.CellName {
				// push returns once the instance runs; its record may lag
				// by a moment.
				var spec executor.Spec
				var err error
				waitFor(fd.t, "the record of instance "+in.GUID, func() bool {
					spec, err = agent.InstanceSpec(cell.StateDir, in.GUID)
					return err == nil
				})
				out = append(out, instance{Instance: in, netns: spec.NetNS})
			}
		}
	}
	return out
}

// dial opens a connection from inside the network namespace at ns.
func dial(t *testing.T, ns, network, addr string) net.Conn {
	t.Helper()
	c, err := dialErr(ns, network, addr)
	if err != nil {
		t.Fatalf("dial %s %s from %s: %v", network, addr, ns, err)
	}
	return c
}

func dialErr(ns, network, addr string) (c net.Conn, err error) {
	err = netns.Do(ns, func() (err error) {
		c, err = net.DialTimeout(network, addr, 3*time.Second)
		return err
	})
	return c, err
}

// get fetches http://addr/path from inside ns.
func get(t *testing.T, ns, addr, path string) (int, string) {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) { return dial(t, ns, network, a), nil }}}
	resp, err := hc.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s%s from %s: %v", addr, path, ns, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestLocalFoundation(t *testing.T) {
	fd := upFoundation(t, 2)
	// Running up twice on one state dir says it is already up.
	if _, err := Up(context.Background(), Options{StateDir: fd.f.StateDir, Cells: 2, Exe: trellisBin}); err == nil || !strings.Contains(err.Error(), "already up") {
		t.Errorf("second Up = %v, want already up", err)
	}
	fd.cli(0, "push", "backend", "-i", "2")
	fd.cli(0, "push", "frontend", "--cell", "cell1")
	fd.cli(0, "add-network-policy", "frontend", "backend", "--protocol", "tcp", "--port", "8080")
	fd.cli(0, "add-network-policy", "frontend", "backend", "--protocol", "udp", "--port", "8080")
	be, fe := fd.instances("backend"), fd.instances("frontend")
	if len(be) != 2 || be[0].CellName == be[1].CellName {
		t.Fatalf("backend instances = %+v, want one on each cell", be)
	}
	if len(fe) != 1 || fe[0].CellName != "cell1" {
		t.Fatalf("frontend instances = %+v, want one on cell1", fe)
	}
	out := fd.cli(0, "apps")
	if !strings.Contains(out, "backend") {
		t.Errorf("apps = %s", out)
	}

	// TCP and UDP, same cell and across cells, once the policies are in force.
	waitFor(t, "the policies to reach the cells", func() bool {
		for _, b := range be {
			c, err := dialErr(fe[0].netns, "tcp", b.IP+":8080")
			if err != nil {
				return false
			}
			c.Close()
		}
		return true
	})
	for _, b := range be {
		code, body := get(t, fe[0].netns, b.IP+":8080", "/")
		if code != 200 || !strings.Contains(body, `"ip":"`+b.IP+`"`) {
			t.Errorf("GET backend on %s (%s) from frontend = %d %s", b.CellName, b.IP, code, body)
		}
		c := dial(t, fe[0].netns, "udp", b.IP+":8080")
		c.SetDeadline(time.Now().Add(3 * time.Second))
		c.Write([]byte("ping " + b.CellName))
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != "ping "+b.CellName {
			t.Errorf("UDP echo from backend on %s = %q, %v", b.CellName, buf[:n], err)
		}
		c.Close()
	}

	// MTU: underlay 1500 - 50.
	h, err := netns.Handle(fe[0].netns)
	if err != nil {
		t.Fatal(err)
	}
	if l, err := h.LinkByName("eth0"); err != nil || l.Attrs().MTU != 1450 {
		t.Errorf("container eth0 MTU = %v, %v; want 1450", l.Attrs().MTU, err)
	}
	h.Close()

	// Cross-cell traffic is VXLAN (UDP 4789, VNI 1) on the underlay.
	remote := be[0]
	if remote.CellName == "cell1" {
		remote = be[1]
	}
	// The frontend's packets carry its policy tag in the VXLAN-GBP header.
	tags, err := fd.client().Tags(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var feTag uint16
	for _, tg := range tags {
		if tg.ID == fe[0].AppGUID {
			fmt.Sscanf(tg.Tag, "%x", &feTag)
		}
	}
	seen := captureVXLAN(t, netns.Path(fd.f.Underlay), "cell1", feTag, func() { get(t, fe[0].netns, remote.IP+":8080", "/") })
	if seen == 0 {
		t.Errorf("no VXLAN packet with VNI 1, flags I+G and policy ID %#04x (frontend's tag) seen on the underlay", feTag)
	}

	// exec: namespaces, resolv.conf and exit code.
	if out := fd.cli(0, "exec", "frontend", "--", "cat", "/etc/resolv.conf"); !strings.Contains(out, "nameserver 169.254.0.2") {
		t.Errorf("exec cat /etc/resolv.conf = %q", out)
	}
	fd.cli(3, "exec", "frontend", "--", "sh", "-c", "exit 3")
	if out := fd.cli(0, "logs", "backend"); !strings.Contains(out, "[backend/0]") {
		t.Errorf("logs backend = %q", out)
	}

	// kill -9 of the agent of cell1 and a restart: a long-lived TCP stream
	// across cells does not break, and the instances are adopted.
	conn := dial(t, fe[0].netns, "tcp", remote.IP+":8080")
	defer conn.Close()
	var ok, failed atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		rd := bufio.NewReader(conn)
		for {
			select {
			case <-stop:
				return
			default:
			}
			conn.SetDeadline(time.Now().Add(3 * time.Second))
			if _, err := fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
				failed.Add(1)
				return
			}
			resp, err := http.ReadResponse(rd, nil)
			if err != nil {
				failed.Add(1)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			ok.Add(1)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	waitFor(t, "requests on the stream", func() bool { return ok.Load() > 5 })
	if err := syscall.Kill(fd.f.Cells[0].Agent.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "agent of cell1 to die", func() bool { return !fd.f.Cells[0].Agent.alive("agent") })
	before := ok.Load()
	waitFor(t, "requests with the agent dead", func() bool { return ok.Load() > before+5 })
	if err := fd.f.StartAgent(context.Background(), fd.client(), 0, trellisBin); err != nil {
		t.Fatal(err)
	}
	if err := fd.f.WaitAgent(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	before = ok.Load()
	waitFor(t, "requests after the agent restarted", func() bool { return ok.Load() > before+5 })
	close(stop)
	<-done
	if failed.Load() != 0 {
		t.Errorf("the long-lived stream broke across kill -9 and restart of the agent (%d requests ok)", ok.Load())
	}
	if got := fd.instances("frontend"); got[0].netns != fe[0].netns || got[0].IP != fe[0].IP {
		t.Errorf("frontend after agent restart = %+v, want the same instance %+v", got[0], fe[0])
	}

	// Scale down and stop: instances and their namespaces go.
	fd.cli(0, "scale", "backend", "-i", "1")
	if got := fd.instances("backend"); len(got) != 1 {
		t.Errorf("backend after scale to 1 = %d instances", len(got))
	}
	fd.cli(0, "stop", "frontend")
	waitFor(t, "frontend's namespace to go", func() bool {
		_, err := os.Stat(fe[0].netns)
		return os.IsNotExist(err)
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// captureVXLAN counts VXLAN-GBP frames (UDP 4789, VNI 1, flags I and G,
// group policy ID tag) seen on dev in namespace ns while traffic runs.
func captureVXLAN(t *testing.T, ns, dev string, tag uint16, traffic func()) int {
	t.Helper()
	c, err := capture.Start(ns, dev)
	if err != nil {
		t.Fatal(err)
	}
	traffic()
	frames, err := c.Stop()
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, vx := range capture.UDPPayloads(frames, 4789) {
		if len(vx) >= 8 && vx[0] == 0x88 && binary.BigEndian.Uint16(vx[2:4]) == tag && binary.BigEndian.Uint32(vx[4:8])>>8 == 1 {
			seen++
		}
	}
	return seen
}

// TestUpForegroundCtrlC runs `trellis up` in the foreground as a user would
// and presses Ctrl-C: everything it made is gone.
func TestUpForegroundCtrlC(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	cmd := exec.Command(trellisBin, "up", "--cells", "1", "--state-dir", dir, "--config", filepath.Join(dir, "config.json"))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		Down(context.Background(), dir, true, io.Discard)
	})
	sc := bufio.NewScanner(stdout)
	up := false
	for sc.Scan() {
		if strings.Contains(sc.Text(), "Press Ctrl-C") {
			up = true
			break
		}
	}
	if !up {
		cmd.Wait()
		t.Fatalf("trellis up did not come up:\n%s", stderr.String())
	}
	go io.Copy(io.Discard, stdout)
	f, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ownNamespaces(f.Prefix)) != 3 {
		t.Errorf("namespaces while up = %v, want underlay, cell1 and outside", ownNamespaces(f.Prefix))
	}
	cmd.Process.Signal(os.Interrupt)
	errc := make(chan error, 1)
	go func() { errc <- cmd.Wait() }()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("trellis up after Ctrl-C = %v\n%s", err, stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("trellis up did not exit within 60s of Ctrl-C")
	}
	if left := ownNamespaces(f.Prefix); len(left) > 0 {
		t.Errorf("namespaces left after Ctrl-C: %v", left)
	}
	if left := daemons("controller", filepath.Join(dir, "controller")); len(left) > 0 {
		t.Errorf("controller left after Ctrl-C: %v", left)
	}
}

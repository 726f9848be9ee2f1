package capture

import (
	"bytes"
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
	"github.com/trellis-c2c/trellis/internal/netns"
)

func TestCaptureSeesWhatCrossesTheLink(t *testing.T) {
	dataplanetest.RequireRoot(t)
	a, z := filepath.Base(dataplanetest.Namespace(t, "a")), filepath.Base(dataplanetest.Namespace(t, "z"))
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	run("-n", a, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", z)
	run("-n", a, "addr", "add", "198.51.100.1/24", "dev", "v0")
	run("-n", z, "addr", "add", "198.51.100.2/24", "dev", "v1")
	run("-n", a, "link", "set", "v0", "up")
	run("-n", z, "link", "set", "v1", "up")

	c, err := Start(netns.Path(z), "v1")
	if err != nil {
		t.Fatal(err)
	}
	marker := []byte("trellis-marker-" + dataplanetest.Prefix)
	err = netns.Do(netns.Path(a), func() error {
		conn, err := net.Dial("udp", "198.51.100.2:4789")
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = conn.Write(marker)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var frames [][]byte
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		_, at := Find(c.frames, marker)
		c.mu.Unlock()
		if at >= 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	frames, err = c.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if _, at := Find(frames, marker); at < 0 {
		t.Fatalf("Find(%d frames, marker) = -1, want the marker seen", len(frames))
	}
	payloads := UDPPayloads(frames, 4789)
	if len(payloads) != 1 || !bytes.Equal(payloads[0], marker) {
		t.Errorf("UDPPayloads(frames, 4789) = %q, want [%q]", payloads, marker)
	}
	if again, _ := c.Stop(); len(again) != len(frames) {
		t.Errorf("a second Stop returned %d frames, want %d", len(again), len(frames))
	}
}

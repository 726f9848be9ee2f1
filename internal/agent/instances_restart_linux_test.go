package agent

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
	"github.com/trellis-c2c/trellis/internal/netns"
)

// TestExitedInstanceRestartsAtItsBackoff: the executor restarts an
// instance that exits, woken by the exit and by its backoff's timer (it
// no longer looks every second): an app that exits at once is started
// three times well within the loop's safety net (instancesRecheck), the
// third start a backoff (1 s) after the second.
func TestExitedInstanceRestartsAtItsBackoff(t *testing.T) {
	dataplanetest.RequireRoot(t)
	name := fmt.Sprintf("trl-restart-%d", os.Getpid())
	if _, err := netns.Create(name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Delete(name) })
	var logs syncBuffer
	creds := dirCredentials(t.TempDir())
	for _, dir := range []string{creds.credentialsDir("g1"), creds.systemCertsDir()} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	in := &instances{log: slog.New(slog.NewTextHandler(&logs, nil)), underlayIP: "198.51.100.2", creds: creds,
		hide: hiddenPaths("/nonexistent-state", ""), dir: t.TempDir(), wake: make(chan struct{}, 1), running: map[string]*instance{}}
	d := api.DesiredInstance{GUID: "g1", AppName: "web", Command: []string{"/bin/sh", "-c", "exit 3"}}
	if err := os.MkdirAll(filepath.Join(in.dir, d.GUID), 0o700); err != nil {
		t.Fatal(err)
	}
	in.running[d.GUID] = &instance{Desired: d, NetNS: name, IP: netip.MustParseAddr("10.255.1.2")} // attached
	in.state = func() (api.CellState, bool) { return api.CellState{Instances: []api.DesiredInstance{d}}, true }
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); in.loop(ctx) }()
	defer func() { cancel(); <-done }()
	var at []time.Time // of each start seen
	limit := time.Now().Add(instancesRecheck / 2)
	for len(at) < 3 {
		if time.Now().After(limit) {
			t.Fatalf("%d starts in %v, want 3; log:\n%s", len(at), instancesRecheck/2, logs.String())
		}
		if n := strings.Count(logs.String(), "instance started"); n > len(at) {
			at = append(at, time.Now())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if gap := at[2].Sub(at[1]); gap < 900*time.Millisecond {
		t.Errorf("third start %v after the second: the restart did not wait for its backoff (1 s); log:\n%s", gap, logs.String())
	}
}

// dirCredentials keeps the credentials under a directory of the test.
type dirCredentials string

func (d dirCredentials) credentialsDir(instance string) string {
	return filepath.Join(string(d), "credentials", instance)
}
func (d dirCredentials) systemCertsDir() string { return filepath.Join(string(d), "system-certs") }

// syncBuffer is a bytes.Buffer that a logger and a test may share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/controller"
	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/store/storetest"
)

// TestControllerFailover runs two controllers on one PostgreSQL database
// and an agent that knows both: when the one it uses stops, the agent
// moves to the other, keeps converging through it (a cell that joins
// through the second shows up as a peer), and its status and metrics name
// the controller in use and count one failover.
func TestControllerFailover(t *testing.T) {
	storetest.RequirePostgres(t)
	w := newWorld(t, "fo", 2)
	db := storetest.URL(t, "postgres")
	c1 := startController(t, w, controller.Config{StateDir: t.TempDir(), DatabaseURL: db})
	// The second shares the first's CA (the cells' certificates are signed
	// by it) and its admin token (the database keeps one).
	dir2 := t.TempDir()
	for _, f := range []string{identity.CACertFile, identity.CAKeyFile} {
		b, err := os.ReadFile(filepath.Join(c1.cfg.StateDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir2, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c2 := startController(t, w, controller.Config{StateDir: dir2, DatabaseURL: db,
		AdminConfig: filepath.Join(c1.cfg.StateDir, controller.AdminConfigFile)})

	cfg1 := w.agentCfg(t, c1, 1)
	cfg1.ControllerURLs = []string{c1.url, c2.url}
	w.startAgent(t, cfg1)
	if st := agentStatus(t, cfg1.Socket); st.Controller != c1.url || st.Failovers != 0 {
		t.Errorf("status before the failover: controller %q, %d failovers; want %s, 0", st.Controller, st.Failovers, c1.url)
	}

	c1.stop()
	took := poll(t, 10*time.Second, "the agent moving to the second controller", func() (bool, error) {
		st, err := api.NewAgentClient(cfg1.Socket).Status(context.Background())
		return err == nil && st.Controller == c2.url, err
	})
	t.Logf("the agent moved to the second controller %v after the first stopped", took)

	// A change made through the second controller reaches cell1.
	w.startAgent(t, w.agentCfg(t, c2, 2))
	waitProgrammed(t, w.cellPath(1), peerOf(t, cellsByName(t, c2)["cell2"]))

	if st := agentStatus(t, cfg1.Socket); st.Controller != c2.url || st.Failovers != 1 || !st.Ready {
		t.Errorf("status after the failover: controller %q, %d failovers, ready %v; want %s, 1, ready",
			st.Controller, st.Failovers, st.Ready, c2.url)
	}
	m, err := api.NewAgentClient(cfg1.Socket).Metrics(context.Background())
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	for _, want := range []string{
		fmt.Sprintf("trellis_agent_controller{url=%q} 1\n", c2.url),
		"trellis_agent_controller_failovers_total 1\n",
	} {
		if !strings.Contains(string(m), want) {
			t.Errorf("the agent's metrics lack %q", want)
		}
	}
}

// TestNeverAppliesAnOlderState restarts an agent from a state file whose
// revision is above the controller's (as after a failover to a controller
// that numbers the cell's states lower): the controller's state, older by
// its revision, is not applied — the peer it names stays unrouted — until
// the controller's revision passes the one in force.
func TestNeverAppliesAnOlderState(t *testing.T) {
	w := newWorld(t, "older", 2)
	c := startController(t, w, controller.Config{StateDir: t.TempDir()})
	cfg1 := w.agentCfg(t, c, 1)
	a1 := w.startAgent(t, cfg1)
	w.startAgent(t, w.agentCfg(t, c, 2))
	p2 := peerOf(t, cellsByName(t, c)["cell2"])
	waitProgrammed(t, w.cellPath(1), p2)
	if err := a1.stop(); err != nil {
		t.Fatal(err)
	}

	file := filepath.Join(cfg1.StateDir, "state.json")
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var st api.CellState
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	st.Revision += 1000
	st.Peers = nil
	if b, err = json.Marshal(st); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	again := cfg1
	again.JoinToken, again.CACertFile, again.ControllerURLs = "", "", nil
	w.startAgent(t, again)
	poll(t, 10*time.Second, "the agent skipping the controller's older state", func() (bool, error) {
		return len(w.logs.logged("skip a desired state older", "cell=cell1")) > 0, nil
	})
	if got := agentStatus(t, cfg1.Socket); got.Revision != st.Revision {
		t.Errorf("status revision = %d, want %d, the state file's (the one in force)", got.Revision, st.Revision)
	}
	if ok, err := routeTo(handle(t, w.cellPath(1)), p2.subnet); ok || err != nil {
		t.Errorf("cell1 routes %s (err %v): the controller's older state was applied", p2.subnet, err)
	}
}

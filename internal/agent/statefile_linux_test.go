package agent_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/agent"
	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/controller"
)

// TestRestartRestoresTheJournal: an agent restarted while no controller
// answers applies the state it held when it stopped — its saved snapshot
// with the changes journaled after it (here the peer that a second cell's
// joining brought, which only the journal holds) — and the status says so.
func TestRestartRestoresTheJournal(t *testing.T) {
	w := newWorld(t, "journal", 2)
	c := startController(t, w, controller.Config{StateDir: t.TempDir()})
	cfg1 := w.agentCfg(t, c, 1)
	a1 := w.startAgent(t, cfg1)
	w.startAgent(t, w.agentCfg(t, c, 2))
	p2 := peerOf(t, cellsByName(t, c)["cell2"])
	waitProgrammed(t, w.cellPath(1), p2)
	// The state in force when it stopped is what it saved last: read after
	// the stop (states keep coming until then: the second cell's key).
	if err := a1.stop(); err != nil {
		t.Fatal(err)
	}
	want, ok := agent.SavedState(cfg1.StateDir)
	if !ok || len(want.Peers) == 0 {
		t.Fatalf("saved state: found %v, revision %d with %d peers; want the state with cell2 as a peer", ok, want.Revision, len(want.Peers))
	}
	held := want.Revision
	var snap api.CellState
	if err := json.Unmarshal([]byte(mustRead(t, filepath.Join(cfg1.StateDir, "state.json"))), &snap); err != nil {
		t.Fatal(err)
	}
	if snap.Revision >= held || len(snap.Peers) != 0 {
		t.Fatalf("the snapshot holds revision %d with %d peers: the change to restore is not only in the journal", snap.Revision, len(snap.Peers))
	}
	c.stop()

	again := cfg1
	again.JoinToken, again.CACertFile, again.ControllerURLs = "", "", nil
	w.goAgent(t, again)
	poll(t, 30*time.Second, "the restarted agent applying its saved state", func() (bool, error) {
		if _, err := os.Stat(again.Socket); err != nil {
			return false, nil
		}
		st, err := api.NewAgentClient(again.Socket).Status(context.Background())
		return err == nil && st.Ready, nil
	})
	if got := agentStatus(t, again.Socket).Revision; got != held {
		t.Errorf("restarted agent's revision %d, want %d (the one in force before)", got, held)
	}
	if len(w.logs.logged("applying the saved desired state", "cell=cell1")) == 0 {
		t.Error("the restarted agent did not say it applied its saved state")
	}
	waitProgrammed(t, w.cellPath(1), p2)
}

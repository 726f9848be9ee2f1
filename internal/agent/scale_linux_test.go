package agent_test

import (
	"context"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/controller"
)

// TestOnlyAffectedCellsHear runs ten cells with real agents and checks
// that a change reaches only the cells it concerns: 500 apps with no
// instance move no agent's applied revision, and a policy between two
// running apps on cells 1 and 2 moves exactly those two.
func TestOnlyAffectedCellsHear(t *testing.T) {
	const n = 10
	w := newWorld(t, "scale", n)
	c := startController(t, w, controller.Config{StateDir: t.TempDir(), Listen: freePort(t)})
	agents := make([]*running, n)
	for i := range n {
		agents[i] = w.startAgent(t, w.agentCfg(t, c, i+1))
	}
	p := installPlugin(t)
	src, dst := createApp(t, c, "client").GUID, createApp(t, c, "server").GUID
	a := w.newContainer("ctr-a", 1, src, "inst-a")
	if err := w.add(p, cniList(t, agents[0]), a, a.rt); err != nil {
		t.Fatalf("ADD on cell1: %v", err)
	}
	b := w.newContainer("ctr-b", 2, dst, "inst-b")
	if err := w.add(p, cniList(t, agents[1]), b, b.rt); err != nil {
		t.Fatalf("ADD on cell2: %v", err)
	}

	before := settled(t, agents)
	ctx := context.Background()
	org, err := c.admin.CreateOrg(ctx, "org-idle")
	if err != nil {
		t.Fatal(err)
	}
	space, err := c.admin.CreateSpace(ctx, org.GUID, "space-idle")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 500 {
		if _, err := c.admin.CreateApp(ctx, space.GUID, fmt.Sprintf("idle-%03d", i)); err != nil {
			t.Fatalf("CreateApp %d: %v", i, err)
		}
	}
	// The feed takes changes in order: once the policy below reached cells
	// 1 and 2, it had taken the apps too.
	err = c.admin.CreatePolicies(ctx, []api.Policy{{Source: api.Source{ID: src},
		Destination: api.Destination{ID: dst, Protocol: "tcp", Ports: api.Ports{Start: 8080, End: 8080}}}})
	if err != nil {
		t.Fatalf("CreatePolicies: %v", err)
	}
	poll(t, 60*time.Second, "the policy reaching cells 1 and 2", func() (bool, error) {
		r := revisions(t, agents)
		return r["cell1"] > before["cell1"] && r["cell2"] > before["cell2"], nil
	})
	after := settled(t, agents)
	for name, rev := range before {
		moved := after[name] != rev
		if want := name == "cell1" || name == "cell2"; moved != want {
			t.Errorf("%s: applied revision %d → %d (moved %v), want moved %v", name, rev, after[name], moved, want)
		}
	}
	t.Logf("applied revisions before %v, after %v", before, after)
}

// revisions returns every agent's applied revision, by cell name.
func revisions(t *testing.T, agents []*running) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, r := range agents {
		st := agentStatus(t, r.cfg.Socket)
		if !st.Ready {
			out[r.cfg.Name] = -1
			continue
		}
		out[r.cfg.Name] = st.Revision
	}
	return out
}

// settled waits until every agent is ready and no applied revision has
// moved for two seconds, and returns them.
func settled(t *testing.T, agents []*running) map[string]int64 {
	t.Helper()
	last, since := revisions(t, agents), time.Now()
	poll(t, 120*time.Second, "the agents' applied revisions settling", func() (bool, error) {
		r := revisions(t, agents)
		if !maps.Equal(r, last) || slicesContain(r, -1) {
			last, since = r, time.Now()
			return false, nil
		}
		return time.Since(since) >= 2*time.Second, nil
	})
	return last
}

func slicesContain(m map[string]int64, v int64) bool {
	for _, x := range m {
		if x == v {
			return true
		}
	}
	return false
}

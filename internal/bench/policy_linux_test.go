package bench

import (
	"testing"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
)

// TestPolicyQuick runs the quick policy bench end to end on a real local
// foundation (the trellis binary is built for it) and checks its figures.
func TestPolicyQuick(t *testing.T) {
	dataplanetest.RequireRoot(t)
	exe := buildTrellis(t)
	rep, err := Policy(t.Context(), PolicyOptions{Quick: true, Exe: exe, Progress: &logWriter{t: t}})
	if err != nil {
		t.Fatalf("Policy = %v", err)
	}
	if len(rep.Figures) != 24 {
		t.Errorf("figures = %d, want 24", len(rep.Figures))
	}
	for _, f := range rep.Figures {
		if f.Value <= 0 {
			t.Errorf("figure %s = %v, want > 0", f.ID, f.Value)
		}
	}
	wantFigures(t, rep, "policy/xcell-conn-rate-deny-10k", "dns/instance-registered-p99", "policy/xcell-conn-cpu-deny-1-vs-none", "policy/xcell-conn-cpu-deny-1-vs-conntrack")
	checkJSONRoundTrip(t, rep)
}

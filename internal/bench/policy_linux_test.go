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
	if len(rep.Figures) != 36 {
		t.Errorf("figures = %d, want 36", len(rep.Figures))
	}
	for _, f := range rep.Figures {
		if f.Value <= 0 {
			t.Errorf("figure %s = %v, want > 0", f.ID, f.Value)
		}
	}
	wantFigures(t, rep, "policy/xcell-conn-rate-deny-10k", "dns/instance-registered-p99", "policy/xcell-conn-cpu-deny-1-vs-none", "policy/xcell-conn-cpu-deny-1-vs-conntrack", "policy/xcell-conn-rate-deny-10k-vs-conntrack", "policy/xcell-tcp-1-deny-10k-vs-conntrack", "policy/xcell-conn-time-p10-deny-1-vs-conntrack", "policy/xcell-conn-time-p10-deny-10k-vs-conntrack",
		"policy/egress-tcp-1-asg-1", "policy/egress-tcp-1-asg-1k", "policy/egress-conn-rate-asg-1", "policy/egress-conn-rate-asg-1k",
		"policy/egress-conn-cpu-asg-1", "policy/egress-conn-cpu-asg-1k",
		"policy/egress-bind-p50", "policy/egress-bind-p99")
	for _, id := range []string{"policy/egress-tcp-1-asg-1k", "policy/egress-conn-rate-asg-1k"} {
		for _, f := range rep.Figures {
			if f.ID == id && (f.Baseline <= 0 || f.Goal == "") {
				t.Errorf("figure %s: baseline %v, goal %q: want both", id, f.Baseline, f.Goal)
			}
		}
	}
	checkJSONRoundTrip(t, rep)
}

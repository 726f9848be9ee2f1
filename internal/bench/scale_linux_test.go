package bench

import (
	"strings"
	"testing"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
)

// TestScaleQuick runs the quick scale bench end to end on a real local
// foundation (the trellis binary is built for it) and checks that every
// figure is there.
func TestScaleQuick(t *testing.T) {
	dataplanetest.RequireRoot(t)
	exe := buildTrellis(t)
	rep, err := Scale(t.Context(), ScaleOptions{Quick: true, Exe: exe, Progress: &logWriter{t: t}})
	if err != nil {
		t.Fatalf("Scale = %v", err)
	}
	wantFigures(t, rep, "scale/api-app-create", "scale/api-policy-create", "scale/policy-add-enforced-p50",
		"scale/policy-add-enforced-p99", "scale/policy-add-cells-woken", "scale/policy-add-bytes-per-cell",
		"scale/policy-add-bytes-vs-size", "scale/policy-add-controller-cpu", "scale/policy-add-agent-cpu",
		"scale/route-change-bytes-per-cell", "scale/route-change-controller-cpu", "scale/route-change-agent-cpu",
		"scale/route-change-dns-p99", "scale/agent-cold-start", "scale/controller-rss", "scale/agent-rss")
	for _, f := range rep.Figures {
		// CPU per change is counted in 10 ms ticks less an idle rate: at
		// the quick sizes it may round to nothing, or below.
		if f.Value <= 0 && !strings.HasSuffix(f.ID, "-cpu") {
			t.Errorf("figure %s = %v, want > 0", f.ID, f.Value)
		}
		// Deltas: a change costs a cell less than its whole state.
		if strings.HasSuffix(f.ID, "-bytes-per-cell") && f.Value >= f.Baseline {
			t.Errorf("figure %s = %v bytes, want less than the whole states' %v", f.ID, f.Value, f.Baseline)
		}
	}
	for _, n := range rep.Notes {
		t.Log(n)
	}
	checkJSONRoundTrip(t, rep)
}

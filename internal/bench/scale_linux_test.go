package bench

import (
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
		"scale/route-change-dns-p99", "scale/agent-cold-start", "scale/controller-rss", "scale/agent-rss")
	for _, f := range rep.Figures {
		if f.Value <= 0 {
			t.Errorf("figure %s = %v, want > 0", f.ID, f.Value)
		}
	}
	checkJSONRoundTrip(t, rep)
}

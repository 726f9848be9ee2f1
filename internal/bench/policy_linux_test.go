package bench

import (
	"bytes"
	"encoding/json"
	"os"
	"testing"
)

// TestPolicyQuick runs the quick policy bench end to end on a real local
// foundation (the trellis binary is built for it) and checks its figures.
func TestPolicyQuick(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("the policy bench needs root (CI=true)")
		}
		t.Skip("needs root")
	}
	exe := buildTrellis(t)
	rep, err := Policy(t.Context(), PolicyOptions{Quick: true, Exe: exe, Progress: testLog{t}})
	if err != nil {
		t.Fatalf("Policy = %v", err)
	}
	if len(rep.Figures) != 24 {
		t.Errorf("figures = %d, want 24", len(rep.Figures))
	}
	ids := map[string]bool{}
	for _, f := range rep.Figures {
		ids[f.ID] = true
		if f.Value <= 0 {
			t.Errorf("figure %s = %v, want > 0", f.ID, f.Value)
		}
	}
	for _, id := range []string{"policy/xcell-conn-rate-deny-10k", "dns/instance-registered-p99", "policy/xcell-conn-cpu-deny-1-vs-none", "policy/xcell-conn-cpu-deny-1-vs-conntrack"} {
		if !ids[id] {
			t.Errorf("no figure %s", id)
		}
	}
	var b bytes.Buffer
	if err := rep.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || len(back.Figures) != len(rep.Figures) {
		t.Errorf("JSON round trip = %v, %d figures", err, len(back.Figures))
	}
}

type testLog struct{ t *testing.T }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Log(string(bytes.TrimRight(b, "\n")))
	return len(b), nil
}

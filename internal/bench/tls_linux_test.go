package bench

import (
	"bytes"
	"math"
	"strings"
	"testing"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
)

// TestTLSQuick runs the quick TLS bench end to end on a real local
// foundation (the trellis binary is built for it), with haproxy as the
// baseline, and checks that it produces every figure with sane values.
func TestTLSQuick(t *testing.T) {
	dataplanetest.RequireRoot(t)
	requireTool(t, "haproxy", ErrNoHAProxy)
	exe := buildTrellis(t)
	rep, err := TLS(t.Context(), TLSOptions{Quick: true, Exe: exe, Progress: &logWriter{t: t}})
	if err != nil {
		t.Fatalf("TLS = %v", err)
	}
	logTable(t, rep)
	for _, f := range rep.Figures {
		// An added latency is a difference of two measurements: noise can
		// make it negative. Everything else is a positive amount.
		positive := !strings.HasPrefix(f.ID, "tls/added-latency")
		if math.IsNaN(f.Value) || math.IsInf(f.Value, 0) || positive && !(f.Value > 0 && f.Baseline > 0) {
			t.Errorf("figure %s = %v (baseline %v)", f.ID, f.Value, f.Baseline)
		}
	}
	wantFigures(t, rep, "tls/added-latency-p50", "tls/added-latency-p99", "tls/added-latency-hop-p50", "tls/added-latency-hop-p99",
		"tls/latency-p50", "tls/latency-p99",
		"tls/handshake-request-p50", "tls/handshake-request-p99", "tls/rps-vs-haproxy", "tls/rps-vs-plaintext",
		"tls/bulk-vs-haproxy", "tls/bulk-vs-plaintext", "tls/cpu-per-request", "tls/cpu-per-gb", "tls/memory-per-instance")
	for _, k := range []string{pathOurs, pathPlain, pathHAProxy, pathRelay} {
		if n := len(rep.Samples["tls-latency/"+k]); n < 1000 {
			t.Errorf("%d latency samples for %s, want at least 1,000", n, k)
		}
	}
	if left := Leftovers(rep.Prefix); len(left) > 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
	checkJSONRoundTrip(t, rep)
	var page bytes.Buffer
	if err := WriteHTML(&page, []*Report{rep}); err != nil {
		t.Errorf("WriteHTML = %v", err)
	}
}

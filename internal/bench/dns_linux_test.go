package bench

import (
	"strings"
	"testing"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
)

// TestDNSQuick runs the quick DNS bench end to end: trellis's server and
// dnsmasq in a namespace of the run, loaded by dnsperf.
func TestDNSQuick(t *testing.T) {
	dataplanetest.RequireRoot(t)
	requireTool(t, "dnsmasq", ErrNoDnsmasq)
	requireTool(t, "dnsperf", ErrNoDnsperf)
	rep, err := DNS(t.Context(), DNSOptions{Quick: true, Progress: &logWriter{t: t}})
	if err != nil {
		t.Fatalf("DNS = %v", err)
	}
	logTable(t, rep)
	for _, f := range rep.Figures {
		if !(f.Value > 0) || !(f.Baseline > 0) {
			t.Errorf("figure %s = %v (baseline %v), want both > 0", f.ID, f.Value, f.Baseline)
		}
	}
	wantFigures(t, rep, "dns/qps-vs-dnsmasq", "dns/latency-p99", "dns/latency-p50", "dns/cpu-per-query", "dns/table-build")
	if left := Leftovers(rep.Prefix); len(left) > 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
	checkJSONRoundTrip(t, rep)
}

func TestParseDnsperf(t *testing.T) {
	out := `DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 169.254.0.3 -d queries -l 1 -Q 2000 -v
> NOERROR app0525.apps.internal A 0.000799
> NOERROR 4.app0929.apps.internal A 0.000221
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         2000
  Queries completed:    2000 (100.00%)
  Queries lost:         0 (0.00%)

  Response codes:       NOERROR 2000 (100.00%)
  Average packet size:  request 40, response 88
  Run time (s):         1.000287
  Queries per second:   1999.426165

  Average Latency (s):  0.000192 (min 0.000051, max 0.001622)
  Latency StdDev (s):   0.000070
`
	res, err := parseDnsperf(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if res.qps != 1999.426165 || res.completed != 2000 || res.lost != 0 || len(res.latencies) != 2 || res.latencies[0] != 0.799 {
		t.Errorf("parseDnsperf = %+v", res)
	}
	for _, bad := range []string{
		strings.Replace(out, "NOERROR 2000 (100.00%)", "NOERROR 1990 (99.50%), NXDOMAIN 10 (0.50%)", 1),
		strings.Replace(out, "> NOERROR app0525", "> NXDOMAIN app0525", 1),
		strings.Replace(out, "Queries lost:         0 (0.00%)", "Queries lost:         500 (20.00%)", 1),
		"nothing",
	} {
		if _, err := parseDnsperf(strings.NewReader(bad)); err == nil {
			t.Errorf("parseDnsperf accepted:\n%s", bad)
		}
	}
}

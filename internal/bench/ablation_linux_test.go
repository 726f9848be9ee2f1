package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/dataplane"
)

// BenchmarkAblation is an experiment harness: it runs only with -bench
// Ablation -benchtime 1x and TRELLIS_ABLATION set to a directory, under the bench lock, as root with
// nft, nsenter and (for profiles) perf installed. It builds the policy
// bench's two cells once and measures new connections (the bench's
// sequential client pinned to CPU 0) under variants of the rules, in
// interleaved rounds, each round starting with the next variant:
//
//   - "none": no table on either cell;
//   - "conntrack": the bench's conntrack alone;
//   - "trellis": trellis's table, applied by the dataplane as the bench does;
//   - every NAME.cell1.nft / NAME.cell2.nft pair in the directory, loaded
//     with nft -f into cell1 (client) and cell2 (server) after trellis's
//     table is removed (testdata/ablation/variants.sh writes such pairs:
//     "same" is trellis's rules written by nft, the others leave parts out
//     or change them). A NAME starting with "nf" does not police (the
//     denied port is then expected to be reachable).
//
// Per variant it reports the 2nd and 10th percentiles of the connections'
// times against conntrack alone's in the same round (median of the rounds'
// ratios, with their range). On a loaded machine these move by tens of
// percent from round to round: with ABLATION_PERF set it also records a
// perf profile of CPU 0 during 1.8 s of connections per variant and round
// (DIR/perf.NAME.ROUND; ABLATION_PERF_CPUS, as perf's -C, profiles other
// CPUs too), and testdata/ablation/share.sh sums the shares of the client
// thread's samples (softirq work in its context included: this kernel has
// no IRQ time accounting) spent in nftables, in copying interface names
// for it and in conntrack, which the load moves much less. ABLATION_ROUNDS
// (default 6) sets the rounds, ABLATION_ONLY (comma-separated names) the
// file variants run, and ABLATION_DUMP writes each cell's `nft list
// ruleset` under trellis's table to DIR/dump.cellN and stops. DIR/setup.sh,
// if there is one, runs once the cells are built, with their namespaces'
// paths as arguments. With ABLATION_TCP set it measures iperf3's
// throughput instead, with ABLATION_TCP streams if it is a number and 1
// otherwise (3 s, the first left out, client and server pinned as the
// benches pin them; "none", no table on either cell, is then the
// baseline), profiling all CPUs.
func BenchmarkAblation(b *testing.B) {
	t := b
	dir := os.Getenv("TRELLIS_ABLATION")
	if dir == "" {
		t.Skip("an experiment harness: set TRELLIS_ABLATION to a directory of variants")
	}
	rounds, _ := strconv.Atoi(os.Getenv("ABLATION_ROUNDS"))
	if rounds <= 0 {
		rounds = 6
	}
	r := &run{bench: "ablation", ctx: t.Context(), prefix: NewPrefix(), out: &logWriter{t: t}}
	t.Cleanup(func() {
		if err := r.cleanup(); err != nil {
			t.Errorf("clean up: %v", err)
		}
		if left := Leftovers(r.prefix); len(left) > 0 {
			t.Errorf("namespaces left behind: %s", strings.Join(left, " "))
		}
	})
	topo, _, err := r.buildCells()
	if err != nil {
		t.Fatal(err)
	}
	client, server := topo.trellisA, topo.trellisB
	cell1, cell2 := topo.cell1.NetNS, topo.cell2.NetNS
	dp1, dp2 := topo.cell1.dp, topo.cell2.dp
	for _, port := range []uint16{connPort, deniedPort} {
		if err := r.acceptClose(server, port); err != nil {
			t.Fatal(err)
		}
	}
	needed := []dataplane.Allow{
		{DestIP: server.ip, SrcTag: clientTag, Protocol: "tcp", StartPort: connPort, EndPort: connPort},
		{DestIP: server.ip, SrcTag: clientTag, Protocol: "tcp", StartPort: iperf3Port, EndPort: iperf3Port},
	}
	clientPolicy := dataplane.Policy{Enforce: true, Locals: []dataplane.Local{{IP: client.ip, Tag: clientTag}}}
	serverPolicy := dataplane.Policy{Enforce: true, Locals: []dataplane.Local{{IP: server.ip, Tag: serverTag}}, Allows: needed}
	clear := func() error {
		return errors.Join(delLinear(cell1), delLinear(cell2), dp1.TeardownPolicy(), dp2.TeardownPolicy())
	}
	nft := func(ns string, args ...string) ([]byte, error) {
		out, err := exec.Command("nsenter", append([]string{"--net=" + ns, "nft"}, args...)...).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("nft %s in %s: %v: %s", strings.Join(args, " "), ns, err, out)
		}
		return out, nil
	}
	trellis := func() error {
		if err := clear(); err != nil {
			return err
		}
		if _, err := dp1.Set(r.ctx, dataplane.Desired{Policy: &clientPolicy}); err != nil {
			return err
		}
		_, err := dp2.Set(r.ctx, dataplane.Desired{Policy: &serverPolicy})
		return err
	}
	if setup := filepath.Join(dir, "setup.sh"); fileExists(setup) {
		if out, err := exec.Command("bash", setup, cell1, cell2).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", setup, err, out)
		}
	}
	if os.Getenv("ABLATION_DUMP") != "" {
		if err := trellis(); err != nil {
			t.Fatal(err)
		}
		for i, ns := range []string{cell1, cell2} {
			out, err := nft(ns, "list", "ruleset")
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("dump.cell%d", i+1)), out, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return
	}

	type variant struct {
		name     string
		apply    func() error
		filtered bool
	}
	variants := []variant{
		{"none", clear, false},
		{"conntrack", func() error {
			if err := clear(); err != nil {
				return err
			}
			return errors.Join(addConntrackOnly(cell1), addConntrackOnly(cell2))
		}, false},
		{"trellis", trellis, true},
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.cell2.nft"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	only := os.Getenv("ABLATION_ONLY")
	for _, f2 := range files {
		name := strings.TrimSuffix(filepath.Base(f2), ".cell2.nft")
		if only != "" && !slices.Contains(strings.Split(only, ","), name) {
			continue
		}
		f1 := filepath.Join(dir, name+".cell1.nft")
		variants = append(variants, variant{name, func() error {
			if err := clear(); err != nil {
				return err
			}
			if _, err := nft(cell1, "-f", f1); err != nil {
				return err
			}
			_, err := nft(cell2, "-f", f2)
			return err
		}, !strings.HasPrefix(name, "nf")})
	}

	tcp := os.Getenv("ABLATION_TCP") != ""
	streams, _ := strconv.Atoi(os.Getenv("ABLATION_TCP"))
	streams = max(streams, 1)
	if tcp {
		r.iperf3, err = exec.LookPath("iperf3")
		if err != nil {
			t.Fatal(err)
		}
		if err := r.iperf3Server(server); err != nil {
			t.Fatal(err)
		}
	}
	to := netip.AddrPortFrom(server.ip, connPort)
	p2s, p10s := map[string][]float64{}, map[string][]float64{}
	gbits := map[string][]float64{}
	for n := range rounds {
		for i := range variants {
			v := variants[(n+i)%len(variants)]
			if err := v.apply(); err != nil {
				t.Fatalf("%s: %v", v.name, err)
			}
			if err := r.checkReach(client, server, v.filtered); err != nil {
				t.Fatalf("%s: %v", v.name, err)
			}
			if _, err := r.connRate(client, to, 50*time.Millisecond); err != nil { // warm up
				t.Fatalf("%s: %v", v.name, err)
			}
			if tcp {
				var cmd *exec.Cmd
				if os.Getenv("ABLATION_PERF") != "" {
					cmd = exec.Command("perf", "record", "-q", "-a", "-F", "1999",
						"-o", filepath.Join(dir, fmt.Sprintf("perf.%s.%d", v.name, n)), "--", "sleep", "2")
					if err := cmd.Start(); err != nil {
						t.Fatal(err)
					}
				}
				g, err := r.iperf3Client(client, server, streams, overlayParams{seconds: 3, omit: 1})
				if cmd != nil {
					if werr := cmd.Wait(); err == nil && werr != nil {
						err = fmt.Errorf("perf record: %w", werr)
					}
				}
				if err != nil {
					t.Fatalf("%s: %v", v.name, err)
				}
				gbits[v.name] = append(gbits[v.name], g)
				continue
			}
			if os.Getenv("ABLATION_PERF") != "" {
				cpus := cmp.Or(os.Getenv("ABLATION_PERF_CPUS"), "0")
				cmd := exec.Command("perf", "record", "-q", "-C", cpus, "-F", "3997",
					"-o", filepath.Join(dir, fmt.Sprintf("perf.%s.%d", v.name, n)), "--", "sleep", "2")
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				time.Sleep(100 * time.Millisecond)
				_, _, err := connPercentiles(b.Context(), client, to, 1800*time.Millisecond)
				if werr := cmd.Wait(); err == nil && werr != nil {
					err = fmt.Errorf("perf record: %w", werr)
				}
				if err != nil {
					t.Fatalf("%s: %v", v.name, err)
				}
			}
			p2, p10, err := connPercentiles(b.Context(), client, to, 200*time.Millisecond)
			if err != nil {
				t.Fatalf("%s: %v", v.name, err)
			}
			p2s[v.name] = append(p2s[v.name], p2)
			p10s[v.name] = append(p10s[v.name], p10)
		}
	}
	if tcp {
		for _, v := range variants {
			var rn, rc []float64
			for i := range gbits[v.name] {
				rn = append(rn, gbits[v.name][i]/gbits["none"][i])
				rc = append(rc, gbits[v.name][i]/gbits["conntrack"][i])
			}
			t.Logf("%-16s TCP %d stream(s) %6.2f Gbit/s, %.3f× no tables' (%.3f to %.3f), %.3f× conntrack alone's (%.3f to %.3f)", v.name, streams,
				median(gbits[v.name]), median(rn), slices.Min(rn), slices.Max(rn), median(rc), slices.Min(rc), slices.Max(rc))
		}
		return
	}
	for _, v := range variants {
		var r2, r10 []float64
		for i := range p2s[v.name] {
			r2 = append(r2, p2s[v.name][i]/p2s["conntrack"][i])
			r10 = append(r10, p10s[v.name][i]/p10s["conntrack"][i])
		}
		t.Logf("%-16s p2 %6.1f µs, %.3f× conntrack alone's (%.3f to %.3f); p10 %6.1f µs, %.3f× (%.3f to %.3f)", v.name,
			median(p2s[v.name]), median(r2), slices.Min(r2), slices.Max(r2),
			median(p10s[v.name]), median(r10), slices.Min(r10), slices.Max(r10))
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// connPercentiles returns the 2nd and 10th percentiles of the times of
// the connections connTimes opens for d, in µs.
func connPercentiles(ctx context.Context, from endpoint, to netip.AddrPort, d time.Duration) (p2, p10 float64, err error) {
	times, _, err := connTimes(ctx, from, to, d)
	if err != nil {
		return 0, 0, err
	}
	return percentile(times, 2), percentile(times, 10), nil
}

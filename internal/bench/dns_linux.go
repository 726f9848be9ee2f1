package bench

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/trellis-c2c/trellis/internal/dns"
	"github.com/trellis-c2c/trellis/internal/netns"
)

// DNSOptions configure the DNS bench.
type DNSOptions struct {
	// Quick takes one short sample of each figure instead of the median
	// of three: for CI smoke runs (about 10 s instead of 1 min).
	Quick bool
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
}

// ErrNoDnsmasq and ErrNoDnsperf are returned when the baseline server or
// the load generator is not installed. The bench installs nothing itself.
var (
	ErrNoDnsmasq = errors.New("dnsmasq is missing: apt-get install dnsmasq (dnsmasq-base is enough: the binary without the system service)")
	ErrNoDnsperf = errors.New("dnsperf is missing: apt-get install dnsperf")
)

const (
	dnsRoutes       = 1000
	dnsPerRoute     = 5 // instances per route: 5,000 in all
	dnsDomain       = "apps.internal"
	dnsOutstanding  = 100   // dnsperf -q in the throughput runs
	dnsLatencyRate  = 20000 // the latency runs' rate, at most
	dnsLatencyShare = 0.5   // ... and at most this share of the slower server's throughput
)

var dnsmasqAddr = netip.MustParseAddr("169.254.0.3") // beside trellis's 169.254.0.2

// dnsRun is one DNS bench run.
type dnsRun struct {
	ctx      context.Context
	out      io.Writer
	ns       string // the namespace both servers and dnsperf run in
	dir      string // hosts and query files
	dnsperf  string
	gen, srv int  // CPUs of the load generator and of the server measured
	pinned   bool // false with a single CPU: everything shares it
	dnsmasq  *exec.Cmd
	// dnsmasqDone is closed when dnsmasq has exited.
	dnsmasqDone chan struct{}
}

func (r *dnsRun) logf(format string, args ...any) {
	fmt.Fprintf(r.out, "bench dns: "+format+"\n", args...)
}

// DNS measures the internal-domain DNS server against dnsmasq serving the
// same 1,000 routes and 5,000 instances from a hosts file, both in one
// network namespace of the run's own, one at a time on the same CPU, with
// dnsperf as the load generator on another CPU:
//
//   - throughput: queries per second for internal names (every route's
//     name and INDEX names, shuffled) with 100 queries outstanding; goal at
//     least dnsmasq's;
//   - latency: p50 and p99 at a fixed rate well below both servers'
//     throughput (20,000/s or half the slower one's, whichever is less);
//     goal p99 ≤ 1 ms;
//   - server CPU per query, and how long building the table takes
//     (informative).
//
// It needs root, dnsmasq and dnsperf. The namespace is named with a
// "trbench-" prefix and deleted before DNS returns, also when it fails.
func DNS(ctx context.Context, o DNSOptions) (rep *Report, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the dns bench needs root: it builds a network namespace")
	}
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		return nil, ErrNoDnsmasq
	}
	dnsperf, err := exec.LookPath("dnsperf")
	if err != nil {
		return nil, ErrNoDnsperf
	}
	prefix := NewPrefix()
	r := &dnsRun{ctx: ctx, out: cmp.Or[io.Writer](o.Progress, io.Discard), dnsperf: dnsperf}
	rep = &Report{Bench: "dns", Quick: o.Quick, Prefix: prefix, Started: time.Now(), CPUs: runtime.NumCPU(),
		LoadStart: loadavg(), Samples: map[string][]float64{}}
	var undo []func()
	defer func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		if left := Leftovers(prefix); len(left) > 0 {
			err = errors.Join(err, fmt.Errorf("namespaces left behind: %s", strings.Join(left, " ")))
		}
		if err != nil {
			rep = nil
			return
		}
		rep.Seconds = time.Since(rep.Started).Seconds()
		rep.LoadEnd = loadavg()
	}()

	// The CPUs: the first two this process may use.
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("cpu affinity: %w", err)
	}
	var cpus []int
	for c := 0; c < len(set)*64 && len(cpus) < 2; c++ {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	if len(cpus) == 2 {
		r.gen, r.srv, r.pinned = cpus[0], cpus[1], true
	}

	name := prefix + "dns"
	r.logf("namespace %s", name)
	if r.ns, err = netns.Create(name); err != nil {
		return nil, err
	}
	undo = append(undo, func() { netns.Delete(name) })
	for _, ip := range []netip.Addr{dns.DefaultAddr, dnsmasqAddr} {
		if err := dns.AddAddress(r.ns, ip); err != nil {
			return nil, err
		}
	}
	if r.dir, err = os.MkdirTemp("", "trellis-bench-dns-"); err != nil {
		return nil, err
	}
	undo = append(undo, func() { os.RemoveAll(r.dir) })

	routes, instances, names := dnsNames()
	var builds []float64
	var table *dns.Table
	for range 5 {
		start := time.Now()
		table = dns.NewTable([]string{dnsDomain}, routes, instances)
		builds = append(builds, ms(time.Since(start)))
	}
	rep.Samples["table-build/trellis"] = builds

	// trellis.
	srv := dns.NewServer(dns.Options{})
	srv.SetTable(table)
	trellisAt := netip.AddrPortFrom(dns.DefaultAddr, 53)
	if err := srv.Listen(r.ns, trellisAt.String()); err != nil {
		return nil, err
	}
	sctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx) }()
	undo = append(undo, func() { stop(); <-served })

	// dnsmasq, from a hosts file with the same names.
	dnsmasqAt := netip.AddrPortFrom(dnsmasqAddr, 53)
	err = r.startDnsmasq(instances, dnsmasqAt)
	if r.dnsmasq != nil {
		undo = append(undo, func() { r.dnsmasq.Process.Kill(); <-r.dnsmasqDone })
	}
	if err != nil {
		return nil, err
	}
	queries := filepath.Join(r.dir, "queries")
	var qf bytes.Buffer
	for _, n := range names {
		fmt.Fprintf(&qf, "%s A\n", n)
	}
	if err := os.WriteFile(queries, qf.Bytes(), 0o644); err != nil {
		return nil, err
	}
	if err := r.sameAnswers(names, trellisAt, dnsmasqAt); err != nil {
		return nil, err
	}

	rounds, tputSecs, latSecs := 3, 5, 4
	if o.Quick {
		rounds, tputSecs, latSecs = 1, 3, 2
	}
	servers := []struct {
		key string
		at  netip.AddrPort
		cpu func() time.Duration // CPU time the server has used
		pin func() (func(), error)
	}{
		{"trellis", trellisAt, processCPU(os.Getpid()), r.pinSelf},
		{"dnsmasq", dnsmasqAt, processCPU(r.dnsmasq.Process.Pid), func() (func(), error) { return func() {}, nil }},
	}
	qps := map[string][]float64{}
	cpuPerQuery := map[string][]float64{}
	r.logf("throughput: %d round(s) of %d s per server, %d queries outstanding", rounds, tputSecs, dnsOutstanding)
	for round := range rounds {
		for i := range servers {
			s := servers[(i+round)%len(servers)] // alternate who goes first
			unpin, err := s.pin()
			if err != nil {
				return nil, err
			}
			cpu0 := s.cpu()
			res, err := r.perf(s.at, queries, tputSecs, "-q", strconv.Itoa(dnsOutstanding))
			used := s.cpu() - cpu0
			unpin()
			if err != nil {
				return nil, fmt.Errorf("dnsperf against %s: %w", s.key, err)
			}
			qps[s.key] = append(qps[s.key], res.qps)
			cpuPerQuery[s.key] = append(cpuPerQuery[s.key], float64(used.Microseconds())/float64(res.completed))
			r.logf("  %s: %.0f queries/s, %d lost, %.1f µs CPU per query", s.key, res.qps, res.lost, cpuPerQuery[s.key][len(cpuPerQuery[s.key])-1])
		}
	}
	rate := int(min(dnsLatencyRate, dnsLatencyShare*min(median(qps["trellis"]), median(qps["dnsmasq"]))))
	r.logf("latency: %d round(s) of %d s per server at %d queries/s", rounds, latSecs, rate)
	lat := map[string][]float64{}
	for round := range rounds {
		for i := range servers {
			s := servers[(i+round)%len(servers)]
			unpin, err := s.pin()
			if err != nil {
				return nil, err
			}
			res, err := r.perf(s.at, queries, latSecs, "-Q", strconv.Itoa(rate), "-v")
			unpin()
			if err != nil {
				return nil, fmt.Errorf("dnsperf against %s: %w", s.key, err)
			}
			lat[s.key] = append(lat[s.key], res.latencies...)
			r.logf("  %s: p50 %.3f ms, p99 %.3f ms (%d queries)", s.key, percentile(res.latencies, 50), percentile(res.latencies, 99), len(res.latencies))
		}
	}
	for _, k := range []string{"trellis", "dnsmasq"} {
		rep.Samples["qps/"+k] = qps[k]
		rep.Samples["cpu-per-query/"+k] = cpuPerQuery[k]
	}
	rep.Figures = append(rep.Figures,
		newFigure("dns/qps-vs-dnsmasq", "internal names, queries per second", "queries/s",
			median(qps["trellis"]), median(qps["dnsmasq"]), "dnsmasq, hosts file", &goal{ratio: true, limit: 1}),
		newFigure("dns/latency-p99", fmt.Sprintf("internal names, latency p99 at %d queries/s", rate), "ms",
			percentile(lat["trellis"], 99), percentile(lat["dnsmasq"], 99), "dnsmasq, hosts file", &goal{atMost: true, limit: 1}),
		newFigure("dns/latency-p50", fmt.Sprintf("internal names, latency p50 at %d queries/s", rate), "ms",
			percentile(lat["trellis"], 50), percentile(lat["dnsmasq"], 50), "dnsmasq, hosts file", nil),
		newFigure("dns/cpu-per-query", "server CPU per query (user+system)", "µs",
			median(cpuPerQuery["trellis"]), median(cpuPerQuery["dnsmasq"]), "dnsmasq, hosts file", nil),
		newFigure("dns/table-build", "building the table of 1,000 routes and 5,000 instances", "ms",
			median(builds), 200, "the 200 ms propagation goal", nil),
	)
	pin := fmt.Sprintf("the server measured (trellis: this whole process, GOMAXPROCS=1; dnsmasq) pinned to CPU %d, dnsperf to CPU %d, one server at a time, rounds alternating which goes first", r.srv, r.gen)
	if !r.pinned {
		pin = "one CPU only: server and dnsperf share it, one server at a time"
	}
	rep.Notes = append(rep.Notes,
		fmt.Sprintf("dns: %d routes × %d instances in %s; trellis (internal/dns) on 169.254.0.2:53 and dnsmasq %s (--no-hosts --addn-hosts with the same names, TTL 0) on 169.254.0.3:53, both on lo of one namespace of the run; answers checked equal first",
			dnsRoutes, dnsPerRoute, dnsDomain, dnsmasqVersion()),
		fmt.Sprintf("dns: load from dnsperf over UDP, the %d route names and %d INDEX names shuffled; %s", dnsRoutes, dnsRoutes, pin),
		fmt.Sprintf("dns: throughput with %d queries outstanding, median of %d run(s) of %d s; on two CPUs dnsperf itself is near saturation, so the ratio understates the gap either way; CPU per query = the server's user+system time over the queries answered (softirq time is not counted for either)",
			dnsOutstanding, rounds, tputSecs),
		fmt.Sprintf("dns: latency as dnsperf -v reports each query, at a fixed %d queries/s (at most %d, and at most %.0f%% of the slower server's throughput), %d run(s) of %d s per server pooled",
			rate, dnsLatencyRate, dnsLatencyShare*100, rounds, latSecs),
	)
	return rep, nil
}

// dnsNames returns the bench's routes (app0000..app0999.apps.internal, one
// app each), their 5,000 running instances, and the names queried: every
// route's name and one INDEX name per route, shuffled with a fixed seed.
func dnsNames() ([]dns.Route, []dns.Instance, []string) {
	var routes []dns.Route
	var instances []dns.Instance
	var names []string
	for i := range dnsRoutes {
		app := fmt.Sprintf("app-%04d", i)
		host := fmt.Sprintf("app%04d", i)
		routes = append(routes, dns.Route{Host: host, Domain: dnsDomain, Apps: []string{app}})
		for j := range dnsPerRoute {
			k := i*dnsPerRoute + j
			instances = append(instances, dns.Instance{App: app, Index: j,
				IP: netip.AddrFrom4([4]byte{10, 255, byte(1 + k/250), byte(2 + k%250)})})
		}
		names = append(names, host+"."+dnsDomain, fmt.Sprintf("%d.%s.%s", i%dnsPerRoute, host, dnsDomain))
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	rnd.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	return routes, instances, names
}

// startDnsmasq writes the hosts file for instances and starts dnsmasq on
// at, in the run's namespace, on the server CPU.
func (r *dnsRun) startDnsmasq(instances []dns.Instance, at netip.AddrPort) error {
	var hosts bytes.Buffer
	for i, in := range instances {
		host := fmt.Sprintf("app%04d.%s", i/dnsPerRoute, dnsDomain)
		fmt.Fprintf(&hosts, "%s %s %d.%s\n", in.IP, host, in.Index, host)
	}
	file := filepath.Join(r.dir, "hosts")
	if err := os.WriteFile(file, hosts.Bytes(), 0o644); err != nil {
		return err
	}
	cmd := exec.Command("dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file=",
		"--log-facility=-", "--user=root", "--no-hosts", "--addn-hosts="+file, "--no-resolv",
		"--listen-address="+at.Addr().String(), "--port="+strconv.Itoa(int(at.Port())), "--bind-interfaces")
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := r.startPinned(cmd, r.srv); err != nil {
		return err
	}
	r.dnsmasq = cmd
	r.dnsmasqDone = make(chan struct{})
	go func() { cmd.Wait(); close(r.dnsmasqDone) }()
	// Wait until it answers.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := r.lookup(at, "app0000."+dnsDomain+".")
		if err == nil {
			return nil
		}
		select {
		case <-r.dnsmasqDone:
			return fmt.Errorf("dnsmasq exited: %s", strings.TrimSpace(stderr.String()))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dnsmasq does not answer on %s after 5 s: %v: %s", at, err, strings.TrimSpace(stderr.String()))
		}
		if err := r.ctx.Err(); err != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lookup asks the server at for name's A records, from inside the run's
// namespace.
func (r *dnsRun) lookup(at netip.AddrPort, name string) ([]netip.Addr, error) {
	var resp *mdns.Msg
	err := netns.Do(r.ns, func() (err error) {
		c := &mdns.Client{Timeout: 500 * time.Millisecond}
		resp, _, err = c.Exchange(new(mdns.Msg).SetQuestion(name, mdns.TypeA), at.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	if resp.Rcode != mdns.RcodeSuccess {
		return nil, fmt.Errorf("%s: %s", name, mdns.RcodeToString[resp.Rcode])
	}
	var out []netip.Addr
	for _, rr := range resp.Answer {
		if a, ok := rr.(*mdns.A); ok {
			ip, _ := netip.AddrFromSlice(a.A)
			out = append(out, ip.Unmap())
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// sameAnswers checks that both servers give the same addresses for a
// sample of the names.
func (r *dnsRun) sameAnswers(names []string, a, b netip.AddrPort) error {
	for i := 0; i < len(names); i += 97 {
		x, err := r.lookup(a, names[i]+".")
		if err != nil {
			return fmt.Errorf("trellis: %w", err)
		}
		y, err := r.lookup(b, names[i]+".")
		if err != nil {
			return fmt.Errorf("dnsmasq: %w", err)
		}
		if !slices.Equal(x, y) || len(x) == 0 {
			return fmt.Errorf("%s: trellis answers %v, dnsmasq %v", names[i], x, y)
		}
	}
	return nil
}

// startPinned starts cmd in the run's namespace on cpu: it forks from a
// thread switched into the namespace and, for the moment of the fork,
// pinned to cpu; the child inherits both. It is killed if the bench dies.
func (r *dnsRun) startPinned(cmd *exec.Cmd, cpu int) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err := netns.Do(r.ns, func() error {
		if !r.pinned {
			return cmd.Start()
		}
		var old, set unix.CPUSet
		if err := unix.SchedGetaffinity(0, &old); err != nil {
			return err
		}
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			return err
		}
		serr := cmd.Start()
		return errors.Join(serr, unix.SchedSetaffinity(0, &old))
	})
	if err != nil {
		return fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	return nil
}

// pinSelf pins every thread of this process to the server CPU and sets
// GOMAXPROCS to 1, so that trellis's server runs on the same budget as
// dnsmasq; the returned function undoes both.
func (r *dnsRun) pinSelf() (func(), error) {
	if !r.pinned {
		return func() {}, nil
	}
	var old, set unix.CPUSet
	if err := unix.SchedGetaffinity(os.Getpid(), &old); err != nil {
		return nil, err
	}
	set.Set(r.srv)
	procs := runtime.GOMAXPROCS(1)
	// Twice: a thread started meanwhile inherits its creator's mask.
	for range 2 {
		if err := setThreadsAffinity(&set); err != nil {
			setThreadsAffinity(&old)
			runtime.GOMAXPROCS(procs)
			return nil, err
		}
	}
	return func() {
		setThreadsAffinity(&old)
		runtime.GOMAXPROCS(procs)
	}, nil
}

// setThreadsAffinity sets the CPU affinity of every thread of the process.
func setThreadsAffinity(set *unix.CPUSet) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, set); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("set affinity of thread %d: %w", tid, err)
		}
	}
	return nil
}

// processCPU returns a function reading the user+system CPU time process
// pid has used so far.
func processCPU(pid int) func() time.Duration {
	return func() time.Duration {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0
		}
		// Fields after the command name, which is in parentheses: state is
		// field 3, utime 14, stime 15 (proc(5)).
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 13 {
			return 0
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		return time.Duration(u+st) * time.Second / 100 // USER_HZ
	}
}

// perfResult is what the bench reads from dnsperf's output.
type perfResult struct {
	qps             float64
	completed, lost int
	latencies       []float64 // ms, one per query with -v
}

// perf runs dnsperf against at with the queries file for secs seconds and
// the extra arguments, in the run's namespace on the generator CPU.
func (r *dnsRun) perf(at netip.AddrPort, queries string, secs int, args ...string) (*perfResult, error) {
	out, err := os.CreateTemp(r.dir, "dnsperf-")
	if err != nil {
		return nil, err
	}
	defer os.Remove(out.Name())
	defer out.Close()
	cmd := exec.CommandContext(r.ctx, r.dnsperf, append([]string{"-s", at.Addr().String(), "-p", strconv.Itoa(int(at.Port())),
		"-d", queries, "-l", strconv.Itoa(secs), "-c", "4", "-t", "1"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = out, &stderr
	if err := r.startPinned(cmd, r.gen); err != nil {
		return nil, err
	}
	if err := cmd.Wait(); err != nil {
		if cerr := r.ctx.Err(); cerr != nil {
			return nil, cerr
		}
		return nil, fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	if _, err := out.Seek(0, 0); err != nil {
		return nil, err
	}
	return parseDnsperf(out)
}

// parseDnsperf reads dnsperf's report and, with -v, the latency of each
// query ("> NOERROR name A 0.000123"). Every answer must be NOERROR.
func parseDnsperf(rd io.Reader) (*perfResult, error) {
	var res perfResult
	sc := bufio.NewScanner(rd)
	field := func(line, key string) (string, bool) {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), key)
		if !ok {
			return "", false
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return "", false
		}
		return f[0], true
	}
	var rcodes string
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "> "); ok {
			f := strings.Fields(rest)
			if len(f) < 2 {
				continue
			}
			if f[0] != "NOERROR" {
				return nil, fmt.Errorf("dnsperf: answer %q", rest)
			}
			s, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				return nil, fmt.Errorf("dnsperf: latency in %q: %w", rest, err)
			}
			res.latencies = append(res.latencies, s*1000)
			continue
		}
		if v, ok := field(line, "Queries per second:"); ok {
			res.qps, _ = strconv.ParseFloat(v, 64)
		}
		if v, ok := field(line, "Queries completed:"); ok {
			res.completed, _ = strconv.Atoi(v)
		}
		if v, ok := field(line, "Queries lost:"); ok {
			res.lost, _ = strconv.Atoi(v)
		}
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Response codes:"); ok {
			rcodes = strings.TrimSpace(v)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if res.completed == 0 || res.qps == 0 {
		return nil, errors.New("dnsperf completed no queries")
	}
	if !strings.HasPrefix(rcodes, "NOERROR") || strings.Contains(rcodes, ",") {
		return nil, fmt.Errorf("dnsperf: response codes %q, want NOERROR only", rcodes)
	}
	if res.lost > res.completed/100 {
		return nil, fmt.Errorf("dnsperf: %d of %d queries lost", res.lost, res.completed+res.lost)
	}
	return &res, nil
}

// dnsmasqVersion returns "2.90" from `dnsmasq --version`, or "".
func dnsmasqVersion() string {
	out, err := exec.Command("dnsmasq", "--version").Output()
	if err != nil {
		return ""
	}
	f := strings.Fields(string(out))
	if len(f) >= 3 {
		return f[2]
	}
	return ""
}

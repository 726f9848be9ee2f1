package bench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// TLSOptions configure the TLS bench.
type TLSOptions struct {
	// Quick takes one short sample of each figure instead of three
	// rounds of longer ones: for CI smoke runs (about 40 s).
	Quick bool
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
	// Exe is the trellis binary the local foundation runs; "" means the
	// running one (a test must build one and name it).
	Exe string
	// LatencyOnly takes only the latency figures (for comparing builds of
	// the terminator, run after run): no memory, new connection,
	// requests/s or bulk figures, and no notes.
	LatencyOnly bool
	// LatencyRounds, if positive, is the number of latency rounds in each
	// placement (default 12; 3 with Quick).
	LatencyRounds int
}

// ErrNoHAProxy is returned when haproxy, the baseline TLS terminator, is
// not installed. The bench installs nothing itself.
var ErrNoHAProxy = errors.New("haproxy is missing: apt-get install haproxy")

// Ports of the TLS bench, inside the instances' network namespaces.
const (
	tlsAppPort      = 8080  // the app's plaintext port
	tlsProxyPort    = 61443 // where the cell's agent terminates TLS
	tlsHAProxyPort  = 8443  // haproxy in front of the sample app
	tlsHAProxyBulk  = 8444  // haproxy in front of the bulk source
	tlsRelayPort    = 8081  // haproxy relaying plaintext to the sample app: the hop without TLS
	tlsLatencyRate  = 1000  // requests per second of the latency runs
	tlsLatencyConns = 4     // keep-alive connections sharing that rate
	tlsRPSConns     = 16    // keep-alive connections of the requests/s runs, each closed-loop
	// envoyReservation is what Cloud Foundry reserves per container for
	// its Envoy (documented, not measured), in KiB.
	envoyReservation = 32 << 10
)

// tlsParams are the sizes of a TLS bench run.
type tlsParams struct {
	rounds     int           // rounds of each throughput and latency run, alternating the order of the paths
	latRounds  int           // rounds of the latency runs: many short ones, so that the paths see the same drift of the machine
	latency    time.Duration // one fixed-rate run
	handshakes int           // new connections per path and round
	rps        time.Duration // one requests/s run, after warm
	bulk       time.Duration // one bulk run, after warm
	warm       time.Duration // left out at the start of a throughput run
	idle       int           // idle instances of the memory figure
	settle     int           // RSS reads, 300 ms apart, of which the least is kept
}

func tlsParamsFor(quick bool) tlsParams {
	if quick {
		return tlsParams{rounds: 1, latRounds: 3, latency: 500 * time.Millisecond, handshakes: 100, rps: time.Second,
			bulk: time.Second, warm: 250 * time.Millisecond, idle: 100, settle: 5}
	}
	// 24 latency rounds: a round's p99 rests on its slowest few requests,
	// and the median of 12 rounds' p99 ratios still moved from 0.4 to 1.9
	// between two quiet runs of the same code (2026-12-07).
	return tlsParams{rounds: 3, latRounds: 24, latency: time.Second, handshakes: 400, rps: 3 * time.Second,
		bulk: 3 * time.Second, warm: 500 * time.Millisecond, idle: 100, settle: 20}
}

// haproxyTLS is one TLS frontend of the haproxy baseline: it listens on
// Port (in the network namespace named NetNS, "" for haproxy's own) with
// the PEM file Cert (certificate chain and key) and forwards the plaintext
// stream to App (in the same namespace). Without Cert it relays plaintext.
type haproxyTLS struct {
	Name  string
	Port  int
	NetNS string
	Cert  string
	App   string
}

// haproxyConfig is the configuration of the baseline: one thread; TLS 1.2
// and 1.3 with the proxy's ciphers (ECDHE and AEAD only, AES-128-GCM
// first) and, like it, no session tickets; TCP mode, so that it forwards
// the plaintext stream as the proxy does rather than parsing HTTP.
func haproxyConfig(fronts []haproxyTLS) string {
	var b strings.Builder
	b.WriteString(`global
    nbthread 1
    maxconn 4000
    ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
    ssl-default-bind-ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305
    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets

defaults
    mode tcp
    timeout connect 2s
    timeout client 1m
    timeout server 1m
`)
	for _, f := range fronts {
		ns := ""
		if f.NetNS != "" {
			ns = " namespace " + f.NetNS
		}
		ssl := ""
		if f.Cert != "" {
			ssl = " ssl crt " + f.Cert
		}
		fmt.Fprintf(&b, "\nfrontend %s\n    bind :%d%s%s\n    default_backend %s\n", f.Name, f.Port, ns, ssl, f.Name)
		fmt.Fprintf(&b, "\nbackend %s\n    server app %s%s\n", f.Name, f.App, ns)
	}
	return b.String()
}

// gauge returns the value of the unlabelled metric name in a Prometheus
// text exposition.
func gauge(exposition, name string) (float64, bool) {
	sc := bufio.NewScanner(strings.NewReader(exposition))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), name+" ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		return v, err == nil
	}
	return 0, false
}

// vmRSS reads the resident set size, in KiB, from a /proc/PID/status.
func vmRSS(status string) (int, error) {
	for line := range strings.Lines(status) {
		rest, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("VmRSS line %q", strings.TrimSpace(line))
		}
		return strconv.Atoi(f[0])
	}
	return 0, errors.New("no VmRSS line (a kernel thread, or a process that exited)")
}

// requestStart is when a request of a fixed-rate run counts as started:
// when it was sent, unless the answer to the connection's previous request
// came after the request was due — then it waited behind that answer, and
// the wait counts (no coordinated omission). A generator late on its own
// (its timer, its CPU) is not the server's latency and does not count.
func requestStart(due, prevDone, sent time.Time) time.Time {
	if prevDone.After(due) {
		return due
	}
	return sent
}

// roundMS rounds milliseconds to the microsecond, for samples kept in the
// report.
func roundMS(xs []float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = math.Round(x*1000) / 1000
	}
	return out
}

package proxy_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-c2c/trellis/internal/dataplane/dataplanetest"
	"github.com/trellis-c2c/trellis/internal/netns"
	"github.com/trellis-c2c/trellis/internal/proxy"
)

func TestMain(m *testing.M) { os.Exit(dataplanetest.Run(m)) }

// ca is a throwaway certificate authority.
type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t testing.TB, name string) *ca {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &ca{cert: cert, key: key, pool: pool}
}

func randSerial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// leaf describes an instance certificate as Cloud Foundry makes them.
type leaf struct {
	instance, app string
	dns           []string
	ip            netip.Addr
	notBefore     time.Time // default an hour ago
	notAfter      time.Time // default in a day
}

// issue makes an instance certificate (leaf, then the CA) with its key.
func (c *ca) issue(t testing.TB, l leaf) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if l.notBefore.IsZero() {
		l.notBefore = time.Now().Add(-time.Hour)
	}
	if l.notAfter.IsZero() {
		l.notAfter = time.Now().Add(24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(t),
		Subject: pkix.Name{CommonName: l.instance,
			OrganizationalUnit: []string{"organization:org-1", "space:space-1", "app:" + l.app}},
		DNSNames:    append([]string{l.instance}, l.dns...),
		NotBefore:   l.notBefore,
		NotAfter:    l.notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if l.ip.IsValid() {
		tmpl.IPAddresses = []net.IP{l.ip.AsSlice()}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der, c.cert.Raw}, PrivateKey: key, Leaf: parsed}
}

// topology is a client namespace and two instance namespaces on one
// private layer-2 network (a bridge in a fourth namespace), each instance
// running a test app.
type topology struct {
	client string    // path of the client's namespace
	insts  [2]target // the instances
}

// target is an instance of the topology.
type target struct {
	name  string     // "a" or "b", what its app answers
	netns string     // path of its namespace
	ip    netip.Addr // its address
}

// tlsAddr is where clients reach the instance's TLS port.
func (tg target) tlsAddr() string { return netip.AddrPortFrom(tg.ip, proxy.Port).String() }

func newTopology(t testing.TB) *topology {
	t.Helper()
	u := dataplanetest.NewUnderlay(t, 3)
	top := &topology{client: u.Cells[0].NetNS}
	for i, name := range []string{"a", "b"} {
		c := u.Cells[i+1]
		top.insts[i] = target{name: name, netns: c.NetNS, ip: c.IP}
		serveApp(t, c.NetNS, name)
	}
	return top
}

// Test apps' ports in every instance's namespace.
const (
	httpPort = 8080 // HTTP: "/" answers the instance's name, "/echo" the body
	bulkPort = 9000 // a byte protocol for throughput, see serveBulk
	echoPort = 9001 // echoes until EOF, then half-closes
)

// serveApp runs the test apps inside the namespace at path until the test
// ends.
func serveApp(t testing.TB, path, name string) {
	t.Helper()
	var hl, bl, el net.Listener
	err := netns.Do(path, func() (err error) {
		if hl, err = net.Listen("tcp4", ":"+strconv.Itoa(httpPort)); err != nil {
			return err
		}
		if bl, err = net.Listen("tcp4", ":"+strconv.Itoa(bulkPort)); err != nil {
			return err
		}
		el, err = net.Listen("tcp4", ":"+strconv.Itoa(echoPort))
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", path, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) })
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) { io.Copy(w, r.Body) })
	hs := &http.Server{Handler: mux}
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); hs.Serve(hl) }()
	go func() { defer wg.Done(); acceptLoop(bl, serveBulk) }()
	go func() { defer wg.Done(); acceptLoop(el, serveEcho) }()
	t.Cleanup(func() {
		hs.Close()
		bl.Close()
		el.Close()
		wg.Wait()
	})
}

func acceptLoop(ln net.Listener, serve func(net.Conn)) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			serve(c)
		}()
	}
}

// serveBulk speaks a byte protocol for throughput: 'u' then data until EOF
// is answered with the 8-byte count received; 'd' and an 8-byte count n is
// answered with n bytes.
func serveBulk(c net.Conn) {
	var op [1]byte
	if _, err := io.ReadFull(c, op[:]); err != nil {
		return
	}
	switch op[0] {
	case 'u':
		n, _ := io.Copy(io.Discard, c)
		binary.Write(c, binary.BigEndian, n)
	case 'd':
		var n int64
		if binary.Read(c, binary.BigEndian, &n) != nil {
			return
		}
		io.CopyN(c, zeros{}, n)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func serveEcho(c net.Conn) {
	io.Copy(c, c)
	c.(*net.TCPConn).CloseWrite()
}

// dial opens a TCP connection from inside the namespace at path.
func dial(t testing.TB, path, addr string) *net.TCPConn {
	t.Helper()
	var c net.Conn
	err := netns.Do(path, func() (err error) {
		c, err = net.DialTimeout("tcp4", addr, 10*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, path, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// clientConfig trusts the CA and names the server.
func clientConfig(c *ca, serverName string) *tls.Config {
	return &tls.Config{RootCAs: c.pool, ServerName: serverName}
}

// dialTLS opens a TLS connection to tg's port 61443 from the client's
// namespace and finishes the handshake.
func (top *topology) dialTLS(t testing.TB, tg target, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	tc := tls.Client(dial(t, top.client, tg.tlsAddr()), cfg)
	tc.SetDeadline(time.Now().Add(30 * time.Second))
	return tc, tc.Handshake()
}

// get sends GET path on c and returns the body.
func get(c net.Conn, path string) (string, error) {
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// newServer makes a Server whose metrics go to the returned registry and
// whose refusals to the returned channel; it is closed when the test ends.
func newServer(t testing.TB, cfg proxy.Config) (*proxy.Server, *prometheus.Registry, chan proxy.Refusal) {
	t.Helper()
	reg := prometheus.NewRegistry()
	refused := make(chan proxy.Refusal, 1000)
	cfg.Registerer = reg
	cfg.OnRefused = func(r proxy.Refusal) {
		select {
		case refused <- r:
		default:
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	s := proxy.New(cfg)
	t.Cleanup(func() { s.Close() })
	return s, reg, refused
}

// set serves tg with cert.
func set(t testing.TB, s *proxy.Server, tg target, cert *tls.Certificate, mod ...func(*proxy.Instance)) proxy.Instance {
	t.Helper()
	inst := proxy.Instance{ID: "inst-" + tg.name, NetNS: tg.netns, IP: tg.ip}
	for _, f := range mod {
		f(&inst)
	}
	if err := s.Set(inst, cert); err != nil {
		t.Fatalf("Set(%+v) = %v", inst, err)
	}
	return inst
}

// metric returns the value of the series name{labels} ("k=v" pairs), 0 if
// it does not exist.
func metric(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	v, _ := lookup(t, reg, name, labels...)
	return v
}

// lookup returns the value of name{labels} and whether the series exists.
func lookup(t testing.TB, reg *prometheus.Registry, name string, labels ...string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for _, kv := range labels {
				k, v, _ := strings.Cut(kv, "=")
				found := false
				for _, l := range m.GetLabel() {
					found = found || l.GetName() == k && l.GetValue() == v
				}
				if !found {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue(), true
			case m.Gauge != nil:
				return m.Gauge.GetValue(), true
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount()), true
			}
		}
	}
	return 0, false
}

// waitFor polls cond until it holds; the test fails if it does not within
// a generous bound (a guard against hanging, not a timing assertion).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: gave up", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// nextRefusal returns the next refusal the Server reported.
func nextRefusal(t testing.TB, refused chan proxy.Refusal) proxy.Refusal {
	t.Helper()
	select {
	case r := <-refused:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("no refusal reported")
		return proxy.Refusal{}
	}
}

// isRemoteAlert reports whether err is the TLS alert desc sent by the peer
// ("remote error: tls: bad certificate").
func isRemoteAlert(err error, desc string) bool {
	var ope *net.OpError
	return errors.As(err, &ope) && ope.Op == "remote error" && strings.Contains(err.Error(), desc)
}

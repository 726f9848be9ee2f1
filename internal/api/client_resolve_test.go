package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/identity"
)

// A controller URL whose host is a name with several addresses: each
// address is a controller of its own, reached with the name as TLS server
// name and Host; the next address answers when one is down, and the name
// is looked up again when none answers. The name is resolved by a test
// resolver, to addresses of loopback (127.0.0.1 to .3, one port).
func TestCellClientResolvesNames(t *testing.T) {
	ctx := context.Background()
	ca, err := identity.LoadOrCreateCA(t.TempDir(), "test CA")
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := ca.ServerCertificate([]string{"controller.test"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, csrPEM, err := identity.NewKeyAndCSR("cell1")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.SignCellCSR(csrPEM, "g1", "cell1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cell, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cells := x509.NewCertPool()
	cells.AddCert(ca.Cert)

	type seen struct{ host, sni string }
	var mu sync.Mutex
	var heard []seen
	port := 0
	var srvs []*httptest.Server
	for i := 1; i <= 3; i++ {
		ln, err := net.Listen("tcp", net.JoinHostPort(fmt.Sprintf("127.0.0.%d", i), strconv.Itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		port = ln.Addr().(*net.TCPAddr).Port
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			heard = append(heard, seen{r.Host, r.TLS.ServerName})
			mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"revision":%d}`, i)
		}))
		srv.Listener.Close()
		srv.Listener = ln
		srv.EnableHTTP2 = true
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientCAs: cells, ClientAuth: tls.RequireAndVerifyClientCert}
		srv.Config.ErrorLog = log.New(io.Discard, "", 0)
		srv.StartTLS()
		t.Cleanup(srv.Close)
		srvs = append(srvs, srv)
	}
	addrs := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")}
	lookups := 0
	resolve := func(ctx context.Context, host string) ([]netip.Addr, error) {
		mu.Lock()
		defer mu.Unlock()
		if host != "controller.test" {
			return nil, fmt.Errorf("lookup %s: no such host", host)
		}
		lookups++
		return slices.Clone(addrs), nil
	}
	name := "controller.test:" + strconv.Itoa(port)
	c, err := NewCellClientResolving([]string{"https://" + name}, string(ca.CertPEM), cell, resolve)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	url := func(i int) string { return fmt.Sprintf("https://127.0.0.%d:%d", i, port) }
	if got, want := c.Controllers(), []string{url(1), url(2)}; !slices.Equal(got, want) {
		t.Fatalf("controllers = %v, want %v", got, want)
	}
	revision := func() int64 {
		t.Helper()
		st, err := c.CellState(ctx, -1, 0)
		if err != nil {
			t.Fatalf("CellState: %v", err)
		}
		return st.Revision
	}
	if r := revision(); r != 1 {
		t.Errorf("answered by controller %d, want 1", r)
	}
	mu.Lock()
	if want := (seen{name, "controller.test"}); len(heard) != 1 || heard[0] != want {
		t.Errorf("the controller heard %+v, want %+v", heard, want)
	}
	mu.Unlock()

	// The first address down: the second answers.
	srvs[0].CloseClientConnections()
	srvs[0].Close()
	if r := revision(); r != 2 {
		t.Errorf("with the first down, answered by controller %d, want 2", r)
	}
	if c.Failovers() != 1 || c.Controller() != url(2) {
		t.Errorf("failovers %d, controller %s; want 1, %s", c.Failovers(), c.Controller(), url(2))
	}

	// Both down, and the name moved to a third: the failure looks the name
	// up again, and the next request goes there.
	mu.Lock()
	addrs = []netip.Addr{netip.MustParseAddr("127.0.0.3")}
	before := lookups
	mu.Unlock()
	srvs[1].CloseClientConnections()
	srvs[1].Close()
	if _, err := c.CellState(ctx, -1, 0); err == nil {
		t.Fatal("CellState with both addresses down: no error")
	}
	mu.Lock()
	if lookups == before {
		t.Errorf("no look-up after a request no controller answered")
	}
	mu.Unlock()
	if got, want := c.Controllers(), []string{url(3)}; !slices.Equal(got, want) {
		t.Fatalf("controllers after the name moved = %v, want %v", got, want)
	}
	if r := revision(); r != 3 {
		t.Errorf("after the name moved, answered by controller %d, want 3", r)
	}
}

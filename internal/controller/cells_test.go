package controller

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/store"
)

// joinCell joins a cell through the API and returns an HTTP client that
// authenticates as it with mutual TLS.
func (e *env) joinCell(name, ip string) (api.JoinResponse, *http.Client) {
	e.t.Helper()
	var tok api.JoinToken
	e.must(e.admin, "POST", "/trellis/v1/join-tokens", `{"ttl_seconds":60}`, 201, &tok)
	keyPEM, csrPEM, err := identity.NewKeyAndCSR(name)
	if err != nil {
		e.t.Fatal(err)
	}
	body, _ := json.Marshal(api.JoinRequest{Name: name, UnderlayIP: ip, CSR: string(csrPEM)})
	var resp api.JoinResponse
	e.must(tok.Token, "POST", "/trellis/v1/cells/join", string(body), 201, &resp)
	cert, err := tls.X509KeyPair([]byte(resp.Certificate), keyPEM)
	if err != nil {
		e.t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(resp.CA))
	tr := e.srv.Client().Transport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: e.srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs, Certificates: []tls.Certificate{cert}}
	return resp, &http.Client{Transport: tr}
}

func cellGet(t testing.TB, c *http.Client, url string, out any) int {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode == 200 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("decode %s: %v", b, err)
		}
	}
	return resp.StatusCode
}

func TestCellsJoinAndWatch(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		j1, c1 := e.joinCell("cell1", "198.51.100.11")
		j2, _ := e.joinCell("cell2", "198.51.100.12")
		if j1.Cell.Subnet.String() != "10.255.1.0/24" || j2.Cell.Subnet.String() != "10.255.2.0/24" {
			t.Errorf("leases = %s, %s; want 10.255.1.0/24, 10.255.2.0/24", j1.Cell.Subnet, j2.Cell.Subnet)
		}
		var st api.CellState
		if code := cellGet(t, c1, e.srv.URL+"/trellis/v1/cell/state", &st); code != 200 {
			t.Fatalf("GET state = %d", code)
		}
		if st.Cell.Name != "cell1" || len(st.Peers) != 1 || st.Peers[0].Subnet.String() != "10.255.2.0/24" || st.Overlay.VNI != 1 || st.Overlay.Port != 4789 {
			t.Errorf("state = %+v", st)
		}
		// Admin tokens are not cells, and cells are not admins.
		e.must(e.admin, "GET", "/trellis/v1/cell/state", "", 401, nil)
		if code := cellGet(t, c1, e.srv.URL+"/trellis/v1/cells", nil); code != 401 {
			t.Errorf("cell GET /trellis/v1/cells = %d, want 401", code)
		}

		// Long poll: wakes when an app is started and placed.
		got := make(chan api.CellState, 1)
		go func() {
			var s api.CellState
			cellGet(t, c1, fmt.Sprintf("%s/trellis/v1/cell/state?after=%d", e.srv.URL, st.Revision), &s)
			got <- s
		}()
		app := e.createApp(e.defaultSpace(), "web")
		e.must(e.admin, "POST", "/v3/apps/"+app+"/processes/web/actions/scale", `{"instances":2}`, 200, nil)
		e.must(e.admin, "POST", "/v3/apps/"+app+"/actions/start", "", 200, nil)
		select {
		case s := <-got:
			if s.Revision <= st.Revision {
				t.Errorf("long poll answered revision %d, want > %d", s.Revision, st.Revision)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("long poll did not wake on a change")
		}
		cellGet(t, c1, e.srv.URL+"/trellis/v1/cell/state", &st)
		if len(st.Instances) != 1 || st.Instances[0].AppName != "web" {
			t.Errorf("cell1 instances = %+v, want one of web (the other on cell2)", st.Instances)
		}

		// Register the instance's attachment; it shows as RUNNING.
		put := func(guid, body string) int {
			req, _ := http.NewRequest("PUT", e.srv.URL+"/trellis/v1/cell/instances/"+guid, strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			resp, err := c1.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		in := st.Instances[0]
		before := time.Now()
		if code := put(in.GUID, fmt.Sprintf(`{"app_guid":%q,"index":%d,"ip":"10.255.1.2","container_id":"c1"}`, app, in.Index)); code != 204 {
			t.Errorf("register = %d", code)
		}
		after := time.Now()
		if code := put(in.GUID, fmt.Sprintf(`{"app_guid":%q,"index":0,"ip":"10.255.2.2"}`, app)); code != 422 {
			t.Errorf("register with another cell's address = %d, want 422", code)
		}
		if code := put(strings.Repeat("c0", 32), `{"app_guid":"nope","index":0,"ip":"10.255.1.3"}`); code != 422 {
			t.Errorf("register for an unknown app = %d, want 422", code)
		}
		var ins api.List[api.Instance]
		e.must(e.admin, "GET", "/trellis/v1/instances?app_guids="+app, "", 200, &ins)
		running := 0
		for _, i := range ins.Resources {
			if i.State == "RUNNING" && i.IP == "10.255.1.2" && i.CellName == "cell1" {
				running++
				// updated_at is when the cell registered it (microseconds).
				if i.UpdatedAt.Before(before.Truncate(time.Microsecond)) || i.UpdatedAt.After(after) {
					t.Errorf("running instance updated_at %v, want between %v and %v (its registration)", i.UpdatedAt, before, after)
				}
			}
		}
		if len(ins.Resources) != 2 || running != 1 {
			t.Errorf("instances = %+v, want 2 with one RUNNING on cell1", ins.Resources)
		}

		// A cell that leaves is gone from its peers' state; its cert no longer works.
		req, _ := http.NewRequest("DELETE", e.srv.URL+"/trellis/v1/cell", nil)
		resp, err := c1.Do(req)
		if err != nil || resp.StatusCode != 204 {
			t.Fatalf("leave = %v %v", resp, err)
		}
		resp.Body.Close()
		if code := cellGet(t, c1, e.srv.URL+"/trellis/v1/cell/state", nil); code != 401 {
			t.Errorf("state after leaving = %d, want 401", code)
		}
		var cells api.List[api.Cell]
		e.must(e.admin, "GET", "/trellis/v1/cells", "", 200, &cells)
		if len(cells.Resources) != 1 || cells.Resources[0].Name != "cell2" {
			t.Errorf("cells after cell1 left = %+v", cells.Resources)
		}
	})
}

func TestJoinBadInput(t *testing.T) {
	e := newEnv(t, "sqlite")
	var tok api.JoinToken
	e.must(e.admin, "POST", "/trellis/v1/join-tokens", "", 201, &tok)
	_, csr, _ := identity.NewKeyAndCSR("x")
	join := func(token, name, ip, csr string) (int, string) {
		body, _ := json.Marshal(api.JoinRequest{Name: name, UnderlayIP: ip, CSR: csr})
		return e.do(token, "POST", "/trellis/v1/cells/join", string(body))
	}
	for _, tt := range []struct {
		token, name, ip, csr string
		code                 int
		want                 string
	}{
		{"trlsj_wrong", "cell1", "198.51.100.11", string(csr), 401, "join token is unknown, used or expired"},
		{e.admin, "cell1", "198.51.100.11", string(csr), 401, "a join token is required"},
		{tok.Token, "Cell_1", "198.51.100.11", string(csr), 400, "invalid cell name"},
		{tok.Token, "cell1", "fd00::1", string(csr), 400, "invalid underlay_ip"},
		{tok.Token, "cell1", "198.51.100.11", "garbage", 400, "csr: not a PEM CERTIFICATE REQUEST"},
	} {
		code, got := join(tt.token, tt.name, tt.ip, tt.csr)
		if code != tt.code || !strings.Contains(got, tt.want) {
			t.Errorf("join(%s, %s, %s) = %d %s, want %d %q", tt.token[:6], tt.name, tt.ip, code, got, tt.code, tt.want)
		}
	}
	// The token survived the bad requests and works once.
	if code, got := join(tok.Token, "cell1", "198.51.100.11", string(csr)); code != 201 {
		t.Fatalf("join = %d %s", code, got)
	}
	if code, _ := join(tok.Token, "cell2", "198.51.100.12", string(csr)); code != 401 {
		t.Errorf("second join with the same token = %d, want 401", code)
	}
}

// TestRegisterInstanceChecks checks what a cell may register: an instance
// GUID of the shapes runtimes give (never a name such as a route's, which
// would become a DNS name of its certificate), a container address of its
// own subnet (not the VTEP's, the one kept back, the broadcast address or
// another cell's), not held by another instance.
func TestRegisterInstanceChecks(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		_, c1 := e.joinCell("cell1", "198.51.100.11") // 10.255.1.0/24
		e.joinCell("cell2", "198.51.100.12")
		app := e.createApp(e.defaultSpace(), "web")
		const (
			uuid1 = "0b2b6c5e-8f6a-4c1e-9a51-3f2d8c1e0a01"
			uuid2 = "0b2b6c5e-8f6a-4c1e-9a51-3f2d8c1e0a02"
		)
		body := func(ip string) string { return fmt.Sprintf(`{"app_guid":%q,"index":0,"ip":%q}`, app, ip) }
		for _, tt := range []struct {
			name, guid, ip string
			code           int
			want           string
		}{
			{"a route's name", "bsvc.apps.internal", "10.255.1.7", 422, "invalid instance guid"},
			{"a word", "web-0", "10.255.1.7", 422, "invalid instance guid"},
			{"a UUID with braces", "{" + uuid1 + "}", "10.255.1.7", 422, "invalid instance guid"},
			{"a short container ID", "0123456789ab", "10.255.1.7", 422, "invalid instance guid"},
			{"the VTEP's address", uuid1, "10.255.1.0", 422, "not a container address of subnet 10.255.1.0/24"},
			{"the address kept back", uuid1, "10.255.1.1", 422, "use 10.255.1.2 to 10.255.1.254"},
			{"the broadcast address", uuid1, "10.255.1.255", 422, "not a container address"},
			{"another cell's address", uuid1, "10.255.2.2", 422, "outside this cell's subnet 10.255.1.0/24"},
			{"outside the overlay", uuid1, "192.0.2.1", 422, "outside this cell's subnet"},
			{"IPv6", uuid1, "fd00::1", 422, "must be an IPv4 address"},
			{"not an address", uuid1, "10.255.1", 422, "invalid ip"},
			{"a UUID", uuid1, "10.255.1.2", 204, ""},
			{"a Cloud Foundry instance GUID", "41653aa4-3a3a-486a-4431-ef25", "10.255.1.3", 204, ""},
			{"a container ID", strings.Repeat("ab", 32), "10.255.1.254", 204, ""},
			{"a nerdctl container ID", "default-" + strings.Repeat("cd", 32), "10.255.1.100", 204, ""},
			{"a namespace with a slash", "a/b-" + strings.Repeat("cd", 32), "10.255.1.101", 422, "invalid instance guid"},
			{"a namespace alone", "default-", "10.255.1.101", 422, "invalid instance guid"},
			{"an address in use", uuid2, "10.255.1.2", 409, "ip 10.255.1.2 is already used by instance " + uuid1},
			{"moving onto an address in use", uuid1, "10.255.1.3", 409, "already used by instance 41653aa4-3a3a-486a-4431-ef25"},
			{"the same again", uuid1, "10.255.1.2", 204, ""},
		} {
			code, got := e.cellCall(c1, "PUT", "/trellis/v1/cell/instances/"+url.PathEscape(tt.guid), body(tt.ip))
			if code != tt.code || !strings.Contains(got, tt.want) {
				t.Errorf("%s: PUT instance %s ip %s = %d %s, want %d %q", tt.name, tt.guid, tt.ip, code, got, tt.code, tt.want)
			}
		}
		var ins api.List[api.Instance]
		e.must(e.admin, "GET", "/trellis/v1/instances?app_guids="+app, "", 200, &ins)
		got := map[string]string{}
		for _, in := range ins.Resources {
			got[in.GUID] = in.IP
		}
		want := map[string]string{uuid1: "10.255.1.2", "41653aa4-3a3a-486a-4431-ef25": "10.255.1.3", strings.Repeat("ab", 32): "10.255.1.254",
			"default-" + strings.Repeat("cd", 32): "10.255.1.100"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("instances after the refused registrations (-want +got):\n%s", diff)
		}
	})
}

// TestCertificateNamesOnlyValidGUIDs checks that an instance registered
// under a name (before GUIDs were checked at registration) gets no
// certificate: its GUID would be a DNS name of it, and could be another
// app's route.
func TestCertificateNamesOnlyValidGUIDs(t *testing.T) {
	e := newEnv(t, "sqlite")
	j, c1 := e.joinCell("cell1", "198.51.100.11")
	app := e.createApp(e.defaultSpace(), "a")
	victim := e.createApp(e.defaultSpace(), "bsvc")
	e.mapRoute(victim, "bsvc", "apps.internal")
	// As an older controller let it be registered.
	ip := netip.MustParseAddr("10.255.1.9")
	if err := e.store.RegisterInstance(t.Context(), j.Cell.GUID, store.Instance{GUID: "bsvc.apps.internal", AppGUID: app, IP: ip}); err != nil {
		t.Fatal(err)
	}
	code, got := e.cellCall(c1, "POST", "/trellis/v1/cell/instances/bsvc.apps.internal/certificate", certRequest(newCSR(t, "", "x")))
	if code != 422 || !strings.Contains(got, "invalid instance guid") {
		t.Errorf("certificate for instance bsvc.apps.internal = %d %s, want 422 invalid instance guid", code, got)
	}
}

// A held long poll is answered 200 when the hold starts and hears a
// heartbeat (a newline before the JSON) every stateHeartbeat, so that the
// cell drops a connection that falls silent; what it ends with is still
// one JSON state. Errors found before the hold keep their status; the
// cell's deletion during the hold cuts the answer short, and the next poll
// hears it as 401.
func TestCellStateHeartbeat(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		_, c1 := e.joinCell("cell1", "198.51.100.11")
		var st api.CellState
		if code := cellGet(t, c1, e.srv.URL+"/trellis/v1/cell/state", &st); code != 200 {
			t.Fatalf("GET state = %d", code)
		}
		if code := cellGet(t, c1, e.srv.URL+"/trellis/v1/cell/state?after=x", nil); code != 400 {
			t.Errorf("GET state?after=x = %d, want 400", code)
		}
		start := time.Now()
		resp, err := c1.Get(fmt.Sprintf("%s/trellis/v1/cell/state?after=%d&wait=2.5", e.srv.URL, st.Revision))
		if err != nil {
			t.Fatal(err)
		}
		head := time.Since(start)
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("held poll: %d %q %v", resp.StatusCode, resp.Header.Get("Content-Type"), err)
		}
		beats := len(b) - len(bytes.TrimLeft(b, "\n"))
		var got api.CellState
		if err := json.Unmarshal(b, &got); err != nil || got.Revision != st.Revision {
			t.Fatalf("held poll's body %q: %v", b, err)
		}
		t.Logf("held poll of 2.5 s: head after %v, %d heartbeats", head.Round(time.Millisecond), beats)
		if beats < 2 {
			t.Errorf("held poll of 2.5 s heard %d heartbeats, want 3 (at 0, 1 and 2 s)", beats)
		}
		if head > 2*time.Second {
			t.Errorf("held poll's head after %v, want it when the hold starts", head)
		}

		// Deleted during the hold: the answer is cut short.
		errc := make(chan error, 1)
		go func() {
			resp, err := c1.Get(fmt.Sprintf("%s/trellis/v1/cell/state?after=%d&wait=20", e.srv.URL, st.Revision))
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil {
					err = fmt.Errorf("status %d, whole answer", resp.StatusCode)
				} else {
					err = nil
				}
			} else {
				err = fmt.Errorf("no answer's head: %w", err)
			}
			errc <- err
		}()
		time.Sleep(500 * time.Millisecond)
		req, _ := http.NewRequest("DELETE", e.srv.URL+"/trellis/v1/cell", nil)
		resp, err = c1.Do(req)
		if err != nil || resp.StatusCode != 204 {
			t.Fatalf("leave: %v %v", resp, err)
		}
		resp.Body.Close()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("poll held while the cell left: %v, want its answer cut short", err)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("poll held while the cell left: not cut short")
		}
	})
}

package controller

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/identity"
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
		if code := put(in.GUID, fmt.Sprintf(`{"app_guid":%q,"index":0,"ip":"10.255.2.2"}`, app)); code != 400 {
			t.Errorf("register with another cell's address = %d, want 400", code)
		}
		if code := put("podman-1", `{"app_guid":"nope","index":0,"ip":"10.255.1.3"}`); code != 422 {
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

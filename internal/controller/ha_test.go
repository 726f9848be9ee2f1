package controller

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/store/storetest"
)

// TestDatabaseStopPostgres stops the controller's PostgreSQL server (a
// private one) and starts it again: meanwhile every API answers 503
// "database unavailable" in its family's error shape, a cell's held long
// poll is not broken (it answers its unchanged state when its wait ends),
// and writes are refused rather than half done; after the database returns
// the controller serves again without a restart, the watch of the cells'
// state resumes (a held poll wakes on a change), and nothing acknowledged
// before the stop is lost.
func TestDatabaseStopPostgres(t *testing.T) {
	pg := storetest.StartPostgres(t)
	e := newEnvAt(t, pg.NewDatabase("trellis"), InstanceIdentity{})
	space := e.defaultSpace()
	web, db := e.createApp(space, "web"), e.createApp(space, "db")
	e.must(e.admin, "POST", "/networking/v1/external/policies", policyBody([5]any{web, db, "tcp", 5432, 5432}), 200, nil)
	_, cell := e.joinCell("cell1", "198.51.100.11")
	var st api.CellState
	if code := cellGet(t, cell, e.srv.URL+"/trellis/v1/cell/state", &st); code != 200 {
		t.Fatalf("GET state = %d", code)
	}

	// A poll held across the outage: it must answer its state as it was.
	held := make(chan heldPoll, 1)
	go func() { held <- pollState(cell, e.srv.URL, st.Revision, 4) }()
	time.Sleep(500 * time.Millisecond) // let it reach its wait (not a condition: a poll arriving late is a 503, also reported)

	pg.Stop()
	stopped := time.Now()
	for _, tt := range []struct{ method, path, body, want string }{
		{"GET", "/v3/apps", "", `"title":"CF-ServiceUnavailable"`},
		{"POST", "/v3/apps", fmt.Sprintf(`{"name":"new","relationships":{"space":{"data":{"guid":%q}}}}`, space), `"detail":"database unavailable"`},
		{"GET", "/networking/v1/external/policies", "", `{"error":"database unavailable"}`},
		{"POST", "/networking/v1/external/policies", policyBody([5]any{db, web, "tcp", 8080, 8080}), `{"error":"database unavailable"}`},
		{"GET", "/health", "", `"status":"database unavailable"`},
	} {
		code, body := e.do(e.admin, tt.method, tt.path, tt.body)
		if code != http.StatusServiceUnavailable || !strings.Contains(body, tt.want) {
			t.Errorf("database stopped: %s %s = %d %s, want 503 with %s", tt.method, tt.path, code, body, tt.want)
		}
	}
	if code := cellGet(t, cell, e.srv.URL+"/trellis/v1/cell/state", nil); code != http.StatusServiceUnavailable {
		t.Errorf("database stopped: a new state poll = %d, want 503", code)
	}
	h := <-held
	if h.code != 200 || h.state.Revision != st.Revision {
		t.Errorf("held poll across the outage = %d, revision %d (err %v); want 200 with the state it had, revision %d", h.code, h.state.Revision, h.err, st.Revision)
	}

	time.Sleep(time.Until(stopped.Add(2 * time.Second)))
	pg.Start()
	back := time.Now()
	for {
		code, _ := e.do(e.admin, "GET", "/v3/apps", "")
		if code == 200 {
			break
		}
		if time.Since(back) > time.Minute {
			t.Fatalf("GET /v3/apps = %d a minute after the database returned", code)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("serving again %v after the database accepted connections (stopped %v)", time.Since(back).Round(time.Millisecond), back.Sub(stopped).Round(time.Millisecond))

	// Acknowledged writes were kept; the cells' watch resumed.
	var ps api.PoliciesResponse
	e.must(e.admin, "GET", "/networking/v1/external/policies", "", 200, &ps)
	if len(ps.Policies) != 1 {
		t.Errorf("policies after the outage = %+v, want the one acknowledged before", ps.Policies)
	}
	go func() { held <- pollState(cell, e.srv.URL, st.Revision, 20) }()
	e.must(e.admin, "POST", "/v3/apps/"+web+"/actions/start", "", 200, nil)
	if h := <-held; h.code != 200 || h.state.Revision <= st.Revision {
		t.Errorf("poll after the outage = %d, revision %d (err %v); want 200 and a revision above %d", h.code, h.state.Revision, h.err, st.Revision)
	}
}

type heldPoll struct {
	code  int
	state api.CellState
	err   error
}

// pollState long-polls a cell's state after rev for at most wait seconds.
func pollState(c *http.Client, base string, rev int64, wait int) heldPoll {
	resp, err := c.Get(fmt.Sprintf("%s/trellis/v1/cell/state?after=%d&wait=%d", base, rev, wait))
	if err != nil {
		return heldPoll{err: err}
	}
	defer resp.Body.Close()
	h := heldPoll{code: resp.StatusCode}
	if resp.StatusCode == 200 {
		h.err = json.NewDecoder(resp.Body).Decode(&h.state)
	}
	return h
}

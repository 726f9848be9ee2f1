package controller

import (
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/policy"
	"github.com/trellis-c2c/trellis/internal/store"
)

// TestCellStateWakesOnlyTouchedCells: a change wakes the long poll of a
// cell only when that cell's desired state changed. Apps with no instances
// wake no cell; a policy to an app wakes the cell running it, not a cell
// running neither app.
func TestCellStateWakesOnlyTouchedCells(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		_, c1 := e.joinCell("cell1", "198.51.100.11")
		_, c2 := e.joinCell("cell2", "198.51.100.12")
		_, c3 := e.joinCell("cell3", "198.51.100.13")
		space := e.defaultSpace()
		frontend, backend := e.createApp(space, "frontend"), e.createApp(space, "backend")
		register := func(c *http.Client, guid, app, ip string) {
			t.Helper()
			req, _ := http.NewRequest("PUT", e.srv.URL+"/trellis/v1/cell/instances/"+guid,
				strings.NewReader(fmt.Sprintf(`{"app_guid":%q,"index":0,"ip":%q,"container_id":%q}`, app, ip, guid)))
			req.Header.Set("Content-Type", "application/json")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 204 {
				t.Fatalf("register %s on %s = %d, want 204", guid, ip, resp.StatusCode)
			}
		}
		register(c1, "5a3c8e1e-0000-4000-8000-000000000001", frontend, "10.255.1.2")
		register(c2, "5a3c8e1e-0000-4000-8000-000000000002", backend, "10.255.2.2")
		policy := func(port int) string {
			return fmt.Sprintf(`{"policies":[{"source":{"id":%q},"destination":{"id":%q,"protocol":"tcp","ports":{"start":%d,"end":%d}}}]}`,
				frontend, backend, port, port)
		}
		// Both apps get their tags with a first policy.
		e.must(e.admin, "POST", policiesPath, policy(8080), 200, nil)

		revs := map[string]int64{}
		clients := map[string]*http.Client{"cell1": c1, "cell2": c2, "cell3": c3}
		for name, c := range clients {
			var st api.CellState
			if code := cellGet(t, c, e.srv.URL+"/trellis/v1/cell/state", &st); code != 200 {
				t.Fatalf("GET %s state = %d", name, code)
			}
			revs[name] = st.Revision
		}
		// woken reports, for each cell, whether a poll after its revision
		// answers with a newer one (waiting at most 300 ms).
		woken := func() map[string]bool {
			out := map[string]bool{}
			for name, c := range clients {
				var st api.CellState
				cellGet(t, c, fmt.Sprintf("%s/trellis/v1/cell/state?after=%d&wait=0.3", e.srv.URL, revs[name]), &st)
				out[name] = st.Revision > revs[name]
				revs[name] = st.Revision
			}
			return out
		}

		for i := range 20 {
			e.createApp(space, fmt.Sprintf("idle-%d", i))
		}
		if got := woken(); got["cell1"] || got["cell2"] || got["cell3"] {
			t.Errorf("after creating 20 apps with no instances, woken = %v; want no cell", got)
		}
		e.must(e.admin, "POST", policiesPath, policy(9000), 200, nil)
		if got := woken(); got["cell1"] || !got["cell2"] || got["cell3"] {
			t.Errorf("after a policy from frontend (cell1) to backend (cell2), woken = %v; want cell2 alone", got)
		}
	})
}

// BenchmarkWriteWithCellsWatching measures an API write (creating an app,
// which no cell's desired state depends on) while N cells long-poll their
// state, as agents do, against the same write with no cell watching:
//
//	go test -run '^$' -bench WriteWithCellsWatching ./internal/controller/
func BenchmarkWriteWithCellsWatching(b *testing.B) {
	for _, cells := range []int{0, 10, 40} {
		b.Run(fmt.Sprintf("cells=%d", cells), func(b *testing.B) {
			e := newEnv(b, "sqlite")
			space := e.defaultSpace()
			stop := make(chan struct{})
			var polls sync.WaitGroup
			for i := range cells {
				_, c := e.joinCell(fmt.Sprintf("cell%d", i), fmt.Sprintf("198.51.100.%d", 10+i))
				polls.Go(func() {
					after := int64(-1)
					for {
						select {
						case <-stop:
							return
						default:
						}
						var st api.CellState
						url := e.srv.URL + "/trellis/v1/cell/state"
						if after >= 0 {
							url += fmt.Sprintf("?after=%d&wait=1", after)
						}
						if cellGet(b, c, url, &st) == 200 {
							after = st.Revision
						}
					}
				})
			}
			b.Cleanup(func() { close(stop); polls.Wait() })
			for i := 0; b.Loop(); i++ {
				e.must(e.admin, "POST", "/v3/apps", fmt.Sprintf(`{"name":"app-%d","relationships":{"space":{"data":{"guid":%q}}}}`, i, space), 201, nil)
			}
		})
	}
}

// TestCellFeedCoalescesBursts: a change to a cell after a quiet spell is
// answered to its long poll at once; a burst of a thousand writes to it
// costs it at most one push per minPush, and the last push holds the
// burst's last write.
func TestCellFeedCoalescesBursts(t *testing.T) {
	e := newEnv(t, "sqlite")
	s := e.srv.Config.Handler.(*Server)
	const minPush = 10 * time.Second
	s.feed.minPush = minPush
	_, c1 := e.joinCell("cell1", "198.51.100.11")
	space := e.defaultSpace()
	frontend, backend := e.createApp(space, "frontend"), e.createApp(space, "backend")
	req, _ := http.NewRequest("PUT", e.srv.URL+"/trellis/v1/cell/instances/5a3c8e1e-0000-4000-8000-000000000002",
		strings.NewReader(fmt.Sprintf(`{"app_guid":%q,"index":0,"ip":"10.255.1.2","container_id":"c2"}`, backend)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c1.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	policy := func(port int) string {
		return fmt.Sprintf(`{"policies":[{"source":{"id":%q},"destination":{"id":%q,"protocol":"tcp","ports":{"start":%d,"end":%d}}}]}`,
			frontend, backend, port, port)
	}
	var st api.CellState
	if code := cellGet(t, c1, e.srv.URL+"/trellis/v1/cell/state", &st); code != 200 {
		t.Fatalf("GET state = %d", code)
	}
	// poll long-polls after rev and returns the answer and how long it took.
	poll := func(rev int64) (api.CellState, time.Duration) {
		var st api.CellState
		start := time.Now()
		if code := cellGet(t, c1, fmt.Sprintf("%s/trellis/v1/cell/state?after=%d", e.srv.URL, rev), &st); code != 200 {
			t.Fatalf("poll = %d", code)
		}
		return st, time.Since(start)
	}

	// Isolated: answered long before a hold of minPush would end.
	e.must(e.admin, "POST", policiesPath, policy(1), 200, nil)
	got, took := poll(st.Revision)
	if len(got.Allows) != 1 || took >= minPush {
		t.Fatalf("isolated change: %d allows after %v; want 1, before %v", len(got.Allows), took, minPush)
	}

	// A burst of 1,000 writes while the cell polls as an agent does.
	const writes = 1000
	done := make(chan struct{})
	var pushes int
	var last api.CellState
	go func() {
		defer close(done)
		rev := got.Revision
		for {
			st, _ := poll(rev)
			if st.Revision > rev {
				pushes++
				rev, last = st.Revision, st
			}
			if len(st.Allows) == 1+writes {
				return
			}
		}
	}()
	start := time.Now()
	for i := range writes {
		e.must(e.admin, "POST", policiesPath, policy(2+i), 200, nil)
	}
	burst := time.Since(start)
	<-done
	// The first push of the burst waits for the isolated one's minPush,
	// each next for the one before: the pushes from the burst's start to
	// the last write's push fit in burst + minPush.
	if bound := 1 + int((burst+minPush)/minPush); pushes > bound {
		t.Errorf("a burst of %d writes in %v pushed the cell %d states; want at most %d (one per %v)", writes, burst, pushes, bound, minPush)
	}
	if len(last.Allows) != 1+writes {
		t.Errorf("last push has %d allows, want %d", len(last.Allows), 1+writes)
	}
	t.Logf("%d writes in %v: %d pushes to the cell", writes, burst, pushes)
}

// TestCellStateDeltas: an agent (api.Client over mutual TLS) that polls
// with the state it holds gets deltas, and after each change holds exactly
// the whole state the controller has; an old agent (no delta=1) still gets
// whole states, and a base the controller no longer keeps gets the whole
// state too.
func TestCellStateDeltas(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		_, c1 := e.joinCell("cell1", "198.51.100.11")
		_, c2 := e.joinCell("cell2", "198.51.100.12")
		serverCA := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.srv.Certificate().Raw}))
		agent, err := api.NewCellClient([]string{e.srv.URL}, serverCA, c1.Transport.(*http.Transport).TLSClientConfig.Certificates[0])
		if err != nil {
			t.Fatal(err)
		}
		space := e.defaultSpace()
		frontend, backend := e.createApp(space, "frontend"), e.createApp(space, "backend")
		e.register(c1, "de000000-0000-4000-8000-000000000001", frontend, 0, "10.255.1.2")
		have, err := agent.CellStateFrom(ctx, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		first := have.Revision
		policy := func(port int) string {
			return fmt.Sprintf(`{"policies":[{"source":{"id":%q},"destination":{"id":%q,"protocol":"tcp","ports":{"start":%d,"end":%d}}}]}`,
				backend, frontend, port, port)
		}
		changes := []struct {
			what   string
			change func()
		}{
			{"policy to cell1's app", func() { e.must(e.admin, "POST", policiesPath, policy(8080), 200, nil) }},
			{"a second policy", func() { e.must(e.admin, "POST", policiesPath, policy(9090), 200, nil) }},
			{"an instance on cell2", func() { e.register(c2, "de000000-0000-4000-8000-000000000002", backend, 0, "10.255.2.2") }},
			{"a route", func() { e.mapRoute(backend, "be", "apps.internal") }},
			{"a policy removed", func() { e.must(e.admin, "POST", policiesPath+"/delete", policy(8080), 200, nil) }},
			{"a second instance here", func() { e.register(c1, "de000000-0000-4000-8000-000000000003", frontend, 1, "10.255.1.3") }},
			{"an instance gone", func() {
				if code, got := e.cellCall(c2, "DELETE", "/trellis/v1/cell/instances/de000000-0000-4000-8000-000000000002", ""); code != 204 {
					t.Fatalf("deregister = %d %s", code, got)
				}
			}},
		}
		for _, ch := range changes {
			ch.change()
			next, err := agent.CellStateFrom(ctx, &have, 10*time.Second)
			if err != nil {
				t.Fatalf("after %s: %v", ch.what, err)
			}
			if next.Revision <= have.Revision {
				t.Fatalf("after %s: revision %d, had %d", ch.what, next.Revision, have.Revision)
			}
			var full api.CellState
			if code := cellGet(t, c1, e.srv.URL+"/trellis/v1/cell/state", &full); code != 200 {
				t.Fatalf("GET state = %d", code)
			}
			if g, w := mustMarshal(t, next), mustMarshal(t, full); string(g) != string(w) {
				t.Fatalf("after %s the agent holds\n%s\nwant the whole state\n%s", ch.what, g, w)
			}
			have = next
		}
		if s := agent.StateStats(); s.Fulls != 1 || s.Deltas != int64(len(changes)) || s.Refused != 0 {
			t.Errorf("StateStats = %+v; want 1 whole state and %d deltas", s, len(changes))
		}

		// Nothing changed: the held poll ends with an empty delta.
		same, err := agent.CellStateFrom(ctx, &have, 200*time.Millisecond)
		if err != nil || same.Revision != have.Revision || string(mustMarshal(t, same)) != string(mustMarshal(t, have)) {
			t.Errorf("a poll with no change = revision %d, %v; want the state held (%d)", same.Revision, err, have.Revision)
		}
		// An agent before deltas, and a base not kept: whole states.
		var old api.CellState
		if code := cellGet(t, c1, fmt.Sprintf("%s/trellis/v1/cell/state?after=%d&wait=0", e.srv.URL, first), &old); code != 200 || old.Revision != have.Revision || old.Cell.Name != "cell1" {
			t.Errorf("a poll without delta=1 = %d, revision %d, cell %q; want the whole state at %d", code, old.Revision, old.Cell.Name, have.Revision)
		}
		var ans api.CellStateAnswer
		if code := cellGet(t, c1, fmt.Sprintf("%s/trellis/v1/cell/state?after=1&wait=0&delta=1", e.srv.URL), &ans); code != 200 || ans.Delta != nil || ans.State == nil || ans.State.Revision != have.Revision {
			t.Errorf("a poll from a revision not kept = %d, %+v; want the whole state", code, ans)
		}
		ans = api.CellStateAnswer{}
		other := strings.Repeat("ab", 32)
		if code := cellGet(t, c1, fmt.Sprintf("%s/trellis/v1/cell/state?after=%d&wait=0&delta=1&base=%s", e.srv.URL, have.Revision, other), &ans); code != 200 || ans.Delta != nil || ans.State == nil {
			t.Errorf("a poll from the revision held but another digest = %d, %+v; want the whole state", code, ans)
		}
		for _, q := range []string{"after=1&delta=yes", "after=1&delta=1&base=xyz", "after=1&delta=1&base=abcd"} {
			if code := cellGet(t, c1, e.srv.URL+"/trellis/v1/cell/state?"+q, nil); code != 400 {
				t.Errorf("%s = %d, want 400", q, code)
			}
		}
	})
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSharedChangeCompilesOnlyItsCells: a change to the lists every cell
// shares — a route mapped to an app running on cell2, an instance attached
// on cell1 — compiles only the cells whose own part it changes (cell2's
// local apps list the route's host; cell1 runs the instance), and every
// other cell gets the new lists in a state that is exactly the one a full
// compile gives.
func TestSharedChangeCompilesOnlyItsCells(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		_, c1 := e.joinCell("cell1", "198.51.100.11")
		_, c2 := e.joinCell("cell2", "198.51.100.12")
		_, c3 := e.joinCell("cell3", "198.51.100.13")
		clients := map[string]*http.Client{"cell1": c1, "cell2": c2, "cell3": c3}
		space := e.defaultSpace()
		frontend, backend := e.createApp(space, "frontend"), e.createApp(space, "backend")
		e.register(c2, "5a3c8e1e-0000-4000-8000-000000000002", backend, 0, "10.255.2.2")
		feed := e.srv.Config.Handler.(*Server).feed
		states := func() map[string]api.CellState {
			out := map[string]api.CellState{}
			for name, c := range clients {
				var st api.CellState
				if code := cellGet(t, c, e.srv.URL+"/trellis/v1/cell/state", &st); code != 200 {
					t.Fatalf("GET %s state = %d", name, code)
				}
				out[name] = st
			}
			return out
		}
		before := states()
		for _, step := range []struct {
			what     string
			change   func()
			compiled float64
		}{
			{"a route mapped to backend (cell2)", func() { e.mapRoute(backend, "be", "apps.internal") }, 1},
			{"frontend attached on cell1", func() { e.register(c1, "5a3c8e1e-0000-4000-8000-000000000001", frontend, 0, "10.255.1.2") }, 1},
		} {
			n := testutil.ToFloat64(feed.cellsCompiled)
			step.change()
			after := states()
			if got := testutil.ToFloat64(feed.cellsCompiled) - n; got != step.compiled {
				t.Errorf("after %s the feed compiled %v cells; want %v", step.what, got, step.compiled)
			}
			rev, err := e.store.Revision(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			snap, err := e.store.Snapshot(t.Context(), store.SnapshotFilter{})
			if err != nil {
				t.Fatal(err)
			}
			in, err := e.srv.Config.Handler.(*Server).compileInput(t.Context(), snap)
			if err != nil {
				t.Fatal(err)
			}
			full := policy.Compile(in)
			for name, st := range after {
				if st.Revision <= before[name].Revision || st.Revision > rev {
					t.Errorf("after %s %s has revision %d; want one above %d", step.what, name, st.Revision, before[name].Revision)
				}
				want := full[st.Cell.GUID]
				want.Revision = st.Revision
				if g, w := mustMarshal(t, st), mustMarshal(t, want); string(g) != string(w) {
					t.Errorf("after %s %s holds\n%s\nwant (a full compile)\n%s", step.what, name, g, w)
				}
			}
			before = after
		}
	})
}

// TestTouchLimiter: a cell's last-seen time is written on its first poll
// and then at most once per touchEvery, each cell on its own.
func TestTouchLimiter(t *testing.T) {
	var l touchLimiter
	t0 := time.Unix(1000, 0)
	for _, c := range []struct {
		cell string
		at   time.Duration
		want bool
	}{
		{"c1", 0, true}, {"c1", time.Second, false}, {"c2", time.Second, true},
		{"c1", touchEvery - 1, false}, {"c1", touchEvery, true}, {"c2", touchEvery, false}, {"c1", touchEvery + time.Second, false},
	} {
		if got := l.due(c.cell, t0.Add(c.at)); got != c.want {
			t.Errorf("due(%s, +%v) = %v, want %v", c.cell, c.at, got, c.want)
		}
	}
}

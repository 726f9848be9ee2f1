package controller

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/console"
)

// sseEvent is one server-sent event.
type sseEvent struct{ id, event, data string }

// readEvents reads events from an event stream until it ends or stop says so.
func readEvents(t *testing.T, body io.Reader, stop func([]sseEvent) bool) []sseEvent {
	t.Helper()
	var out []sseEvent
	var ev sseEvent
	sc := bufio.NewScanner(body)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if ev.event != "" || ev.data != "" {
				out = append(out, ev)
				if stop(out) {
					return out
				}
			}
			ev = sseEvent{}
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "id: "):
			ev.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			ev.event = line[7:]
		case strings.HasPrefix(line, "data: "):
			ev.data += line[6:]
		default:
			t.Errorf("unexpected event stream line %q", line)
		}
	}
	return out
}

// flowsOf are the flows among events, as src->dst:port.
func flowsOf(t *testing.T, evs []sseEvent) []string {
	t.Helper()
	var out []string
	for _, ev := range evs {
		if ev.event != "flow" {
			continue
		}
		var f api.FlowEvent
		if err := json.Unmarshal([]byte(ev.data), &f); err != nil {
			t.Fatalf("decode flow %s: %v", ev.data, err)
		}
		if fmt.Sprint(f.ID) != ev.id {
			t.Errorf("event id %s for flow %d", ev.id, f.ID)
		}
		out = append(out, fmt.Sprintf("%s->%s:%d", f.SrcAppName, f.DstAppName, f.DstPort))
	}
	return out
}

// TestFlowStream: the stream sends the flows cells report, as they report
// them; a write token sees only the flows both of whose apps are in its
// space; ?seconds=0 sends what there is and ends; bad parameters are
// refused with the field named.
func TestFlowStream(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		spA, spB := e.createSpace("stream-a"), e.createSpace("stream-b")
		a1, a2, b1 := e.createApp(spA, "a1"), e.createApp(spA, "a2"), e.createApp(spB, "b1")
		_, cell := e.joinCell("cell-s", "198.51.100.31")
		report := func(src, dst string, port int) {
			t.Helper()
			b, _ := json.Marshal(api.FlowEvents{Events: []api.FlowEvent{{Time: time.Now(), Verdict: "denied", Protocol: "tcp",
				SrcIP: "10.255.0.9", DstIP: "10.255.0.10", DstPort: port, SrcApp: src, DstApp: dst, Reason: "no policy"}}})
			if code, got := e.cellCall(cell, "POST", "/trellis/v1/cell/flows", string(b)); code != 204 {
				t.Fatalf("report flows = %d %s", code, got)
			}
		}
		report(a1, a2, 8080)
		report(a1, b1, 8081) // across the spaces
		report(b1, b1, 8082)
		writeA := e.token(ScopeWrite, []string{spA})

		get := func(token, query string) *http.Response {
			t.Helper()
			req, _ := http.NewRequest("GET", e.srv.URL+"/trellis/v1/flows/stream"+query, nil)
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := e.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { resp.Body.Close() })
			return resp
		}
		all := func(token, query string) []string {
			t.Helper()
			resp := get(token, query)
			if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
				t.Fatalf("GET stream%s = %d %s", query, resp.StatusCode, ct)
			}
			evs := readEvents(t, resp.Body, func([]sseEvent) bool { return false })
			if len(evs) == 0 || evs[len(evs)-1].event != "end" {
				t.Errorf("stream%s did not close with an end event: %v", query, evs)
			}
			return flowsOf(t, evs)
		}
		if got, want := strings.Join(all(e.admin, "?seconds=0"), " "), "a1->a2:8080 a1->b1:8081 b1->b1:8082"; got != want {
			t.Errorf("admin's stream = %s, want %s", got, want)
		}
		if got, want := strings.Join(all(writeA, "?seconds=0&after=0"), " "), "a1->a2:8080"; got != want {
			t.Errorf("space a's stream = %s, want %s (no flow with an app of another space)", got, want)
		}

		// Live: a flow reported while the stream is open arrives.
		resp := get(writeA, "?seconds=30")
		got := make(chan []string, 1)
		go func() {
			evs := readEvents(t, resp.Body, func(evs []sseEvent) bool { return len(flowsOf(t, evs)) >= 2 })
			got <- flowsOf(t, evs)
		}()
		time.Sleep(100 * time.Millisecond) // not needed for correctness: the stream starts from the last minute
		report(b1, a1, 9000)               // not space a's alone: never shown
		report(a2, a1, 9001)
		select {
		case fs := <-got:
			if want := "a1->a2:8080 a2->a1:9001"; strings.Join(fs, " ") != want {
				t.Errorf("live stream = %v, want %s", fs, want)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the reported flow did not arrive on the open stream")
		}

		// A revoked token ends its stream (at the next check of it).
		doomed := e.token(ScopeWrite, []string{spA})
		resp = get(doomed, "?seconds=60&after=0")
		e.must(doomed, "DELETE", "/trellis/v1/tokens/"+e.tokenGUIDOf(doomed), "", 204, nil)
		ended := make(chan []sseEvent, 1)
		go func() {
			ended <- readEvents(t, resp.Body, func(evs []sseEvent) bool { return evs[len(evs)-1].event == "end" })
		}()
		select {
		case evs := <-ended:
			if last := evs[len(evs)-1]; last.event != "end" || !strings.Contains(last.data, "no longer valid") {
				t.Errorf("the revoked token's stream ended with %+v", last)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the stream of a revoked token did not end")
		}

		for _, q := range []string{"?after=-1", "?after=x", "?seconds=3601", "?seconds=-1"} {
			code, body := e.do(e.admin, "GET", "/trellis/v1/flows/stream"+q, "")
			field := strings.TrimPrefix(strings.SplitN(q, "=", 2)[0], "?")
			if code != 400 || !strings.Contains(body, field) {
				t.Errorf("GET stream%s = %d %s, want 400 naming %s", q, code, body, field)
			}
		}
	})
}

// TestConsoleFiles: the console's files are served with a strict CSP,
// the right types, and no inline script or style anywhere in them.
func TestConsoleFiles(t *testing.T) {
	e := newEnv(t, "sqlite")
	for _, f := range []struct{ path, ctype string }{
		{"/ui/", "text/html"}, {"/ui/app.js", "text/javascript"}, {"/ui/api.js", "text/javascript"},
		{"/ui/map.js", "text/javascript"}, {"/ui/style.css", "text/css"}, {"/ui/logo.svg", "image/svg+xml"},
	} {
		resp := e.send("", "GET", f.path, "", nil)
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), f.ctype) {
			t.Errorf("GET %s = %d %s, want 200 %s", f.path, resp.StatusCode, resp.Header.Get("Content-Type"), f.ctype)
		}
		if got := resp.Header.Get("Content-Security-Policy"); got != console.CSP {
			t.Errorf("GET %s: Content-Security-Policy %q, want %q", f.path, got, console.CSP)
		}
		body := string(b)
		for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "style=", " onclick=", " onload=", "<script>", "localStorage"} {
			if strings.Contains(body, bad) {
				t.Errorf("%s contains %q", f.path, bad)
			}
		}
	}
	if code, body := e.do("", "GET", "/ui/no-such-file.js", ""); code != 404 {
		t.Errorf("GET a missing file = %d %s, want 404", code, body)
	}
}

// TestFlowStreamOutlivesReadTimeout: a stream longer than the server's
// ReadTimeout (60 s in Run) ends with its "end" event, not cut by it.
func TestFlowStreamOutlivesReadTimeout(t *testing.T) {
	e := newEnv(t, "sqlite")
	srv := httptest.NewUnstartedServer(e.srv.Config.Handler)
	srv.Config.ReadTimeout = time.Second
	srv.StartTLS()
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/trellis/v1/flows/stream?seconds=3", nil)
	req.Header.Set("Authorization", "Bearer "+e.admin)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	evs := readEvents(t, resp.Body, func([]sseEvent) bool { return false })
	if len(evs) == 0 || evs[len(evs)-1].event != "end" || !strings.Contains(evs[len(evs)-1].data, "time is up") {
		t.Errorf("a 3 s stream under a 1 s ReadTimeout ended with %+v, want its end event", evs)
	}
}

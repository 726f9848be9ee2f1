package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/identity"
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

// TestControllersShareWorkPostgres starts three controllers at once on one
// new PostgreSQL database, then has them do the same work at once: the
// controller has no timer of its own, and every piece of work that would be
// one (migrating, making the instance CA and the bootstrap admin token,
// allocating and recycling tags, rotating the CA) runs inside a store
// transaction serialized by the revision row or the migration lock — so it
// is done once whatever the number of controllers.
func TestControllersShareWorkPostgres(t *testing.T) {
	db := storetest.URL(t, "postgres")
	// One CA for the API, as an operator gives every controller.
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	if _, err := identity.LoadOrCreateCA(dirs[0], "trellis CA"); err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs[1:] {
		for _, f := range []string{identity.CACertFile, identity.CAKeyFile} {
			b, err := os.ReadFile(filepath.Join(dirs[0], f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(d, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	urls := make([]string, len(dirs))
	ready := make(chan struct {
		i   int
		url string
	}, len(dirs))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for i, d := range dirs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := Run(ctx, Config{StateDir: d, Listen: "127.0.0.1:0", DatabaseURL: db,
				Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
				Ready: func(url string) {
					ready <- struct {
						i   int
						url string
					}{i, url}
				}})
			if err != nil {
				t.Errorf("controller %d: Run = %v", i, err)
			}
		}()
	}
	for range dirs {
		select {
		case r := <-ready:
			urls[r.i] = r.url
		case <-time.After(time.Minute):
			t.Fatal("three controllers starting at once on a new database: not all serving after a minute")
		}
	}

	// One bootstrap admin token: exactly one controller wrote admin.json.
	var admin api.ClientConfig
	written := 0
	for _, d := range dirs {
		if cfg, err := api.LoadClientConfig(filepath.Join(d, AdminConfigFile)); err == nil {
			admin, written = cfg, written+1
		}
	}
	if written != 1 {
		t.Fatalf("%d controllers wrote admin.json, want 1 (one bootstrap admin token per database)", written)
	}
	st := storetest.OpenURL(t, db)
	if ca, ok, err := st.InstanceCA(context.Background()); err != nil || !ok || ca.Generation != 1 {
		t.Errorf("instance CA after three starts: generation %d, present %v, err %v; want one CA, generation 1", ca.Generation, ok, err)
	}
	clients := make([]*api.Client, len(urls))
	for i, u := range urls {
		c, err := api.NewClient(api.ClientConfig{APIURL: u, CACert: admin.CACert, Token: admin.Token})
		if err != nil {
			t.Fatal(err)
		}
		clients[i] = c
	}
	raw := func(i int, method, path, body string) (int, string) {
		code, out, err := clients[i].Raw(context.Background(), method, path, strings.NewReader(body))
		if err != nil {
			t.Fatalf("controller %d: %s %s: %v", i, method, path, err)
		}
		return code, string(out)
	}
	_, out := raw(0, "GET", "/v3/spaces?names=default", "")
	var spaces api.List[api.Space]
	if err := json.Unmarshal([]byte(out), &spaces); err != nil || len(spaces.Resources) != 1 {
		t.Fatalf("default space: %s (%v)", out, err)
	}
	space := spaces.Resources[0].GUID

	// Apps and policies made through all three at once: every app in a
	// policy gets a tag of its own.
	const perController = 8
	var mu sync.Mutex
	apps := map[string]bool{}
	var writers sync.WaitGroup
	for i := range clients {
		writers.Add(1)
		go func() {
			defer writers.Done()
			for n := range perController {
				code, out := raw(i, "POST", "/v3/apps", fmt.Sprintf(`{"name":"app-%d-%d","relationships":{"space":{"data":{"guid":%q}}}}`, i, n, space))
				var a api.App
				if code != 201 || json.Unmarshal([]byte(out), &a) != nil {
					t.Errorf("controller %d: create app = %d %s", i, code, out)
					return
				}
				if code, out := raw(i, "POST", "/networking/v1/external/policies", policyBody([5]any{a.GUID, a.GUID, "tcp", 8080, 8080})); code != 200 {
					t.Errorf("controller %d: create policy = %d %s", i, code, out)
				}
				mu.Lock()
				apps[a.GUID] = true
				mu.Unlock()
			}
		}()
	}
	// The CA rotation begun by all three at once: one begins it, the
	// others are told it is under way.
	codes := make(chan int, len(clients))
	for i := range clients {
		writers.Add(1)
		go func() {
			defer writers.Done()
			code, _ := raw(i, "POST", "/trellis/v1/instance-ca/rotation", `{"action":"begin"}`)
			codes <- code
		}()
	}
	writers.Wait()
	close(codes)
	began := 0
	for c := range codes {
		if c == 200 {
			began++
		} else if c != http.StatusConflict {
			t.Errorf("begin rotation = %d, want 200 or 409", c)
		}
	}
	if ca, _, err := st.InstanceCA(context.Background()); began != 1 || err != nil || ca.Generation != 2 {
		t.Errorf("three controllers beginning a rotation at once: %d began it, generation %d (err %v); want 1, generation 2", began, ca.Generation, err)
	}

	_, out = raw(2, "GET", "/networking/v1/external/tags", "")
	var tags api.TagsResponse
	if err := json.Unmarshal([]byte(out), &tags); err != nil {
		t.Fatalf("tags: %s (%v)", out, err)
	}
	seen := map[string]string{}
	for _, tg := range tags.Tags {
		if other, dup := seen[tg.Tag]; dup {
			t.Errorf("tag %s given to %s and %s", tg.Tag, other, tg.ID)
		}
		seen[tg.Tag] = tg.ID
		delete(apps, tg.ID)
	}
	if len(apps) != 0 {
		t.Errorf("apps in a policy without a tag: %v", apps)
	}
}

// TestStartBeforeDatabasePostgres starts a controller while its database
// is down: it waits for it (rather than exiting) and serves once it is up.
func TestStartBeforeDatabasePostgres(t *testing.T) {
	pg := storetest.StartPostgres(t)
	db := pg.NewDatabase("trellis")
	t0 := time.Now()
	pg.Stop()
	t.Logf("database stopped in %v", time.Since(t0))
	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{StateDir: t.TempDir(), Listen: "127.0.0.1:0", DatabaseURL: db,
			Log: slog.New(slog.NewTextHandler(&logs, nil)), Ready: func(url string) { ready <- url }})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	deadline := time.Now().Add(time.Minute)
	for len(logs.lines("database unavailable: waiting for it")) == 0 {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("Run with the database down = %v, want it to wait", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("Run did not log that it waits for the database")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t0 = time.Now()
	pg.Start()
	t.Logf("database started in %v", time.Since(t0))
	select {
	case <-ready:
		t.Logf("serving %v after the database started", time.Since(t0))
	case err := <-done:
		done <- err
		t.Fatalf("Run = %v after the database started, want it serving", err)
	case <-time.After(time.Minute):
		t.Fatal("not serving a minute after the database started")
	}
}

package launcher

import (
	"context"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/store/storetest"
)

// TestUpControllersPostgres brings up a foundation of three controllers on
// one PostgreSQL database: status shows each; the admin config and every
// agent know them all; after kill -9 of the first, the CLI still works,
// status shows it down, and the cells are on another.
func TestUpControllersPostgres(t *testing.T) {
	requireRoot(t)
	db := storetest.URL(t, "postgres")
	fd := upFoundationWith(t, Options{Cells: 2, Controllers: 3, DatabaseURL: db})
	f := fd.f
	urls := f.URLs()
	if len(urls) != 3 || len(slices.Compact(slices.Sorted(slices.Values(urls)))) != 3 {
		t.Fatalf("controllers' URLs = %v, want three", urls)
	}
	cfg, err := api.LoadClientConfig(f.Admin)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.APIURLs, urls) || cfg.APIURL != urls[0] {
		t.Errorf("admin config: api_url %s, api_urls %v; want %s, %v", cfg.APIURL, cfg.APIURLs, urls[0], urls)
	}
	out := fd.cli(0, "status")
	for _, u := range urls {
		if !strings.Contains(out, "controller   "+u+"   healthy: true") {
			t.Errorf("status does not show %s healthy:\n%s", u, out)
		}
	}

	if err := syscall.Kill(f.Controller.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	fd.cli(0, "orgs") // through another controller
	deadline := time.Now().Add(time.Minute)
	for {
		st, err := Status(context.Background(), f.StateDir)
		if err != nil {
			t.Fatal(err)
		}
		moved := 0
		for _, c := range st.Cells {
			if c.Healthy && c.Controller != "" && c.Controller != urls[0] {
				moved++
			}
		}
		cs := st.ControllerStatus
		if len(cs) == 3 && !cs[0].Healthy && cs[1].Healthy && cs[2].Healthy && moved == len(st.Cells) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a minute after kill -9 of the first controller: controllers %+v, cells %+v; want the first down and every cell healthy on another", cs, st.Cells)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out := fd.cli(0, "status"); !strings.Contains(out, "controller   "+urls[0]+"   healthy: false") {
		t.Errorf("status after the kill does not show the first controller down:\n%s", out)
	}
}

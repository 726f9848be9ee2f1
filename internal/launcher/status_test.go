package launcher

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestStatusAsksEveryAgent checks Status on a foundation file alone, with
// one cell's agent answering (not ready) and the other's socket missing,
// and the JSON that `trellis status --json` prints of it.
func TestStatusAsksEveryAgent(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(`{"ready":false,"subnet":"10.255.3.0/24","reason":"no overlay yet","controller":"https://127.0.0.1:2","failovers":1}`))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	f := Foundation{
		APIURL: "https://127.0.0.1:1", Admin: filepath.Join(dir, "admin.json"), // none: not healthy
		Cells: []Cell{
			{Name: "cell1", NetNS: "x-cell1", UnderlayIP: "198.51.100.11", Socket: sock},
			{Name: "cell2", NetNS: "x-cell2", UnderlayIP: "198.51.100.12", Socket: filepath.Join(dir, "none.sock")},
		},
	}
	b, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, FoundationFile), b, 0o600); err != nil {
		t.Fatal(err)
	}

	st, err := Status(context.Background(), dir)
	if err != nil {
		t.Fatalf("Status = %v", err)
	}
	if st.ControllerHealthy {
		t.Errorf("Status: controller healthy without an admin config")
	}
	if len(st.Cells) != 2 {
		t.Fatalf("Status has %d cells, want 2", len(st.Cells))
	}
	want := CellStatus{Cell: f.Cells[0], Subnet: "10.255.3.0/24", Reason: "no overlay yet", Controller: "https://127.0.0.1:2", Failovers: 1}
	if diff := cmp.Diff(want, st.Cells[0], cmp.AllowUnexported(Process{})); diff != "" {
		t.Errorf("Status cell1 (-want +got):\n%s", diff)
	}
	if c := st.Cells[1]; c.Healthy || !strings.HasPrefix(c.Reason, "agent unreachable: ") {
		t.Errorf("Status cell2 = healthy %v, reason %q; want unhealthy, agent unreachable", c.Healthy, c.Reason)
	}

	out, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(out, &top); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"api_url", "underlay_netns", "cni_plugin", "controller", "controller_healthy", "cells", "cell_status"} {
		if _, ok := top[k]; !ok {
			t.Errorf("status JSON lacks %q: %s", k, out)
		}
	}
	var cells []map[string]any
	if err := json.Unmarshal(top["cells"], &cells); err != nil || len(cells) != 2 {
		t.Fatalf("status JSON cells = %s (%v), want 2", top["cells"], err)
	}
	if cells[0]["agent_socket"] != sock || cells[0]["subnet"] != "10.255.3.0/24" {
		t.Errorf("status JSON cells[0] = %v, want its socket and subnet", cells[0])
	}
	var short []map[string]any
	if err := json.Unmarshal(top["cell_status"], &short); err != nil {
		t.Fatal(err)
	}
	wantShort := map[string]any{"name": "cell1", "netns": "x-cell1", "underlay_ip": "198.51.100.11",
		"subnet": "10.255.3.0/24", "healthy": false, "reason": "no overlay yet"}
	if len(short) != 2 || !cmp.Equal(short[0], wantShort) {
		t.Errorf("status JSON cell_status = %v, want 2 cells, the first %v", short, wantShort)
	}
}

func TestStatusWithoutFoundation(t *testing.T) {
	if _, err := Status(context.Background(), t.TempDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Status of an empty dir = %v, want os.ErrNotExist", err)
	}
}

package launcher

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/controller"
	"github.com/trellis-c2c/trellis/internal/identity"
)

// TestStatusShowsEncryption runs a controller in this process with
// --encryption wireguard and --cell-key-rotation, joins a cell that
// registers a WireGuard key, and checks that Status shows the mode and the
// cell's key, then the scheduled rotation asked of it.
func TestStatusShowsEncryption(t *testing.T) {
	dir := t.TempDir()
	ctrlDir := filepath.Join(dir, "controller")
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan string, 1), make(chan error, 1)
	go func() {
		done <- controller.Run(ctx, controller.Config{StateDir: ctrlDir, Listen: "127.0.0.1:0", Encryption: api.EncryptionWireGuard,
			CellKeyRotation: 2 * time.Second, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Ready: func(u string) { ready <- u }})
	}()
	t.Cleanup(func() { cancel(); <-done })
	var url string
	select {
	case url = <-ready:
	case err := <-done:
		done <- err
		t.Fatalf("controller.Run: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("controller not ready after 60s")
	}
	admin := filepath.Join(ctrlDir, controller.AdminConfigFile)

	// Join cell1 and register its key.
	cfg, err := api.LoadClientConfig(admin)
	if err != nil {
		t.Fatal(err)
	}
	ac, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ac.CreateJoinToken(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	jcfg := cfg
	jcfg.Token = tok.Token
	jc, _ := api.NewClient(jcfg)
	keyPEM, csrPEM, _ := identity.NewKeyAndCSR("cell1")
	j, err := jc.Join(ctx, api.JoinRequest{Name: "cell1", UnderlayIP: "198.51.100.11", CSR: string(csrPEM)})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair([]byte(j.Certificate), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := api.NewCellClient([]string{url}, cfg.CACert, cert)
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	rand.Read(key)
	if err := cc.RegisterWireGuardKey(ctx, api.CellKey{PublicKey: base64.StdEncoding.EncodeToString(key), ListenPort: 51820, Generation: 1}); err != nil {
		t.Fatal(err)
	}

	f := Foundation{StateDir: dir, APIURL: url, Admin: admin, Cells: []Cell{
		{Name: "cell1", Socket: filepath.Join(dir, "none.sock")},
		{Name: "cell9", Socket: filepath.Join(dir, "none.sock")}, // not joined
	}}
	b, _ := json.Marshal(f)
	if err := os.WriteFile(filepath.Join(dir, FoundationFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := Status(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Encryption != api.EncryptionWireGuard {
		t.Errorf("Status encryption = %q, want wireguard (the controller's --encryption)", st.Encryption)
	}
	if c := st.Cells[0]; !c.WireGuardKey || c.KeyGeneration != 1 || c.KeyStatus() != "gen 1" && c.KeyStatus() != "gen 1, rotating to 2" {
		t.Errorf("Status cell1 = %+v (%q), want its key at generation 1", c, c.KeyStatus())
	}
	if c := st.Cells[1]; c.WireGuardKey || c.KeyStatus() != "" {
		t.Errorf("Status of a cell the controller does not know = %+v (%q)", c, c.KeyStatus())
	}
	// --cell-key-rotation 2s: the controller soon asks cell1 for generation 2.
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err = Status(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		if c := st.Cells[0]; c.KeyStatus() == "gen 1, rotating to 2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cell1 after the rotation period = %+v (%q), want gen 1, rotating to 2", st.Cells[0], st.Cells[0].KeyStatus())
		}
		time.Sleep(200 * time.Millisecond)
	}
	out, _ := json.Marshal(st)
	var top map[string]any
	json.Unmarshal(out, &top)
	if top["encryption"] != "wireguard" {
		t.Errorf("status JSON encryption = %v", top["encryption"])
	}
}

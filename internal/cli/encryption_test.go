package cli

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/identity"
)

// joinTestCell joins a cell named name to the controller of the admin
// config, and returns a client that is that cell.
func joinTestCell(t *testing.T, admin, name, ip string) *api.Client {
	t.Helper()
	ctx := context.Background()
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
	jc, err := api.NewClient(jcfg)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, csrPEM, err := identity.NewKeyAndCSR(name)
	if err != nil {
		t.Fatal(err)
	}
	j, err := jc.Join(ctx, api.JoinRequest{Name: name, UnderlayIP: ip, CSR: string(csrPEM)})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair([]byte(j.Certificate), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := api.NewCellClient(cfg.URLs(), cfg.CACert, cert)
	if err != nil {
		t.Fatal(err)
	}
	return cc
}

// TestEncryptionVerbs runs encryption and rotate-cell-keys against a real
// controller and checks what each prints.
func TestEncryptionVerbs(t *testing.T) {
	admin := realController(t)
	cell := joinTestCell(t, admin, "cell1", "198.51.100.11")
	joinTestCell(t, admin, "cell2", "198.51.100.12")
	key := make([]byte, 32)
	rand.Read(key)
	if err := cell.RegisterWireGuardKey(context.Background(), api.CellKey{PublicKey: base64.StdEncoding.EncodeToString(key), ListenPort: 51820, Generation: 1}); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{"HOME": t.TempDir(), "TRELLIS_CONFIG": admin}
	for _, c := range []struct {
		args   string
		code   int
		want   []string // parts of stdout (or stderr when code != 0), in order
		stderr string   // part of stderr when code == 0
	}{
		{"encryption", 0, []string{"encryption between cells: off"}, ""},
		{"encryption ipsec", 2, []string{"encryption takes wireguard or off"}, ""},
		{"encryption wireguard off", 2, []string{"encryption takes wireguard or off"}, ""},
		{"encryption wireguard", 0, []string{"Setting encryption between cells to wireguard as admin...", "OK", "encryption between cells: wireguard"}, ""},
		{"encryption", 0, []string{"encryption between cells: wireguard"}, ""},
		{"encryption off", 0, []string{"OK", "encryption between cells: off"}, "WARNING: encryption between cells is now OFF"},
		{"rotate-cell-keys nope", 1, []string{`cell "nope" not found: no key was rotated`}, ""},
		{"rotate-cell-keys cell1", 0, []string{"Rotating the WireGuard keys of cell1 as admin...", "OK", "cell    key generation wanted", "cell1   2"}, ""},
		{"rotate-cell-keys", 0, []string{"Rotating the WireGuard keys of every cell as admin...", "cell1   2", "cell2   1"}, ""},
	} {
		got := runCLI(vars, strings.Fields(c.args)...)
		out := got.Stdout
		if c.code != 0 {
			out = got.Stderr
		}
		if got.Code != c.code {
			t.Errorf("trellis %s: exit %d, want %d\nstdout: %s\nstderr: %s", c.args, got.Code, c.code, got.Stdout, got.Stderr)
			continue
		}
		rest := out
		for _, w := range c.want {
			i := strings.Index(rest, w)
			if i < 0 {
				t.Errorf("trellis %s: output lacks %q (in order)\n%s", c.args, w, out)
				break
			}
			rest = rest[i+len(w):]
		}
		if c.stderr != "" && !strings.Contains(got.Stderr, c.stderr) {
			t.Errorf("trellis %s: stderr %q lacks %q", c.args, got.Stderr, c.stderr)
		}
	}
	for _, verb := range []string{"encryption", "rotate-cell-keys"} {
		if got := runCLI(vars, verb, "--help"); got.Code != 0 || !strings.Contains(got.Stdout, "DESCRIPTION:") || !strings.Contains(got.Stdout, "private key never leaves") && !strings.Contains(got.Stdout, "keeps the private key") {
			t.Errorf("trellis %s --help = %d %q, want a description", verb, got.Code, got.Stdout)
		}
	}
	for _, bad := range []string{"controller --state-dir x --encryption ipsec", "controller --state-dir x --cell-key-rotation -1h", "up --encryption ipsec"} {
		if got := runCLI(vars, strings.Fields(bad)...); got.Code != 2 || !strings.Contains(got.Stderr, "invalid --") {
			t.Errorf("trellis %s = %d %q, want exit 2 naming the flag", bad, got.Code, got.Stderr)
		}
	}
}

package controller

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/store"
)

// testWireGuardKey is a random WireGuard-shaped public key (32 bytes,
// base64): the controller sees only public keys.
func testWireGuardKey() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// client is an api.Client with the admin token; cellClient one that is the
// cell whose HTTP client c is.
func (e *env) client() *api.Client {
	e.t.Helper()
	c, err := api.NewClient(api.ClientConfig{APIURL: e.srv.URL, CACert: e.serverCA(), Token: e.admin})
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func (e *env) cellClient(c *http.Client) *api.Client {
	e.t.Helper()
	cl, err := api.NewCellClient([]string{e.srv.URL}, e.serverCA(), c.Transport.(*http.Transport).TLSClientConfig.Certificates[0])
	if err != nil {
		e.t.Fatal(err)
	}
	return cl
}

func (e *env) serverCA() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.srv.Certificate().Raw}))
}

// putKey registers a WireGuard key as the cell c.
func (e *env) putKey(c *http.Client, key string, port int, gen int64) (int, string) {
	e.t.Helper()
	return e.cellCall(c, "PUT", "/trellis/v1/cell/wireguard-key", fmt.Sprintf(`{"public_key":%q,"listen_port":%d,"generation":%d}`, key, port, gen))
}

// waitState long polls the cell's state until ok holds of it.
func (e *env) waitState(c *http.Client, ok func(api.CellState) bool) api.CellState {
	e.t.Helper()
	var st api.CellState
	rev := int64(-1)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		url := e.srv.URL + "/trellis/v1/cell/state"
		if rev >= 0 {
			url += fmt.Sprintf("?after=%d&wait=5", rev)
		}
		var next api.CellState
		if code := cellGet(e.t, c, url, &next); code != 200 {
			e.t.Fatalf("GET state = %d", code)
		}
		st, rev = next, next.Revision
		if ok(st) {
			return st
		}
	}
	e.t.Fatalf("the cell's state never became as wanted: last %+v", st)
	return st
}

// TestCellWireGuardKeys: a cell registers its public key over its mutual
// TLS; every other cell's state carries it (its long poll wakes); bad
// input is refused naming the field, and a generation not asked for is
// 409; an admin rotates keys, and each cell's state asks for the next
// generation.
func TestCellWireGuardKeys(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		j1, c1 := e.joinCell("cell1", "198.51.100.11")
		_, c2 := e.joinCell("cell2", "198.51.100.12")
		if j1.Cell.KeyGeneration != 1 || j1.Cell.WireGuardKey != "" {
			t.Errorf("a joined cell = %+v, want key generation 1 and no key", j1.Cell)
		}
		st := e.waitState(c1, func(api.CellState) bool { return true })
		if st.Encryption != api.EncryptionOff || st.KeyGeneration != 1 || len(st.Peers) != 1 || st.Peers[0].WireGuardKey != "" {
			t.Errorf("a new cell's state = encryption %q, key generation %d, peers %+v; want off, 1, a peer without key", st.Encryption, st.KeyGeneration, st.Peers)
		}

		// Refused: changes nothing, names the field.
		rev := e.revision()
		for _, bad := range []struct {
			body, want string
			code       int
		}{
			{`{"public_key":"","listen_port":51820,"generation":1}`, "public_key: required", 422},
			{`{"public_key":"%%%","listen_port":51820,"generation":1}`, "public_key: not standard base64", 422},
			{fmt.Sprintf(`{"public_key":%q,"listen_port":51820,"generation":1}`, base64.StdEncoding.EncodeToString(make([]byte, 16))), "public_key: 16 bytes", 422},
			{fmt.Sprintf(`{"public_key":%q,"listen_port":51820,"generation":1}`, base64.StdEncoding.EncodeToString(make([]byte, 32))), "public_key: all zero", 422},
			{fmt.Sprintf(`{"public_key":%q,"listen_port":0,"generation":1}`, testWireGuardKey()), "listen_port: 0", 422},
			{fmt.Sprintf(`{"public_key":%q,"listen_port":65536,"generation":1}`, testWireGuardKey()), "listen_port: 65536", 422},
			{fmt.Sprintf(`{"public_key":%q,"listen_port":51820,"generation":0}`, testWireGuardKey()), "generation: 0", 422},
			{fmt.Sprintf(`{"public_key":%q,"listen_port":51820,"generation":2}`, testWireGuardKey()), "generation 2 is newer than the key_generation 1", 409},
			{fmt.Sprintf(`{"public_key":%q,"listen_port":51820,"generation":1,"private_key":"x"}`, testWireGuardKey()), "private_key", 400},
		} {
			code, body := e.cellCall(c1, "PUT", "/trellis/v1/cell/wireguard-key", bad.body)
			if code != bad.code || !strings.Contains(body, bad.want) {
				t.Errorf("PUT wireguard-key %s = %d %s, want %d with %q", bad.body, code, body, bad.code, bad.want)
			}
		}
		if got := e.revision(); got != rev {
			t.Errorf("refused registrations moved the revision %d → %d", rev, got)
		}

		// cell1's key reaches cell2's state, and not its generations.
		k1 := testWireGuardKey()
		if code, body := e.putKey(c1, k1, 51820, 1); code != 204 {
			t.Fatalf("register cell1's key = %d %s", code, body)
		}
		st2 := e.waitState(c2, func(s api.CellState) bool { return len(s.Peers) == 1 && s.Peers[0].WireGuardKey == k1 })
		if p := st2.Peers[0]; p.WireGuardPort != 51820 || p.KeyGeneration != 0 || p.WireGuardKeyGeneration != 0 || st2.Cell.WireGuardKey != "" {
			t.Errorf("cell2's state = peer %+v, own %+v; want cell1's key and port, no generations", p, st2.Cell)
		}
		if st := e.waitState(c1, func(api.CellState) bool { return true }); st.Cell.WireGuardKey != k1 || st.Cell.KeyGeneration != 0 {
			t.Errorf("cell1's own state = %+v, want its key and no generation in Cell", st.Cell)
		}
		// cell2 cannot take cell1's key; its certificate names it, so it
		// can register no other cell's.
		if code, body := e.putKey(c2, k1, 51820, 1); code != 409 || !strings.Contains(body, "another cell") {
			t.Errorf("cell2 registering cell1's key = %d %s, want 409", code, body)
		}

		// Rotation by the admin; a write token may not.
		write := e.token(ScopeWrite, []string{e.defaultSpace()})
		if code, _ := e.do(write, "POST", "/trellis/v1/cells/rotate-keys", `{"cells":[]}`); code != 403 {
			t.Errorf("rotate as a write token = %d, want 403", code)
		}
		rev = e.revision()
		if code, body := e.do(e.admin, "POST", "/trellis/v1/cells/rotate-keys", `{"cells":["cell1","nope"]}`); code != 404 || !strings.Contains(body, `nope`) {
			t.Errorf("rotate an unknown cell = %d %s, want 404 naming it", code, body)
		}
		if e.revision() != rev {
			t.Errorf("a refused rotation moved the revision")
		}
		var rot api.RotateCellKeysResponse
		e.must(e.admin, "POST", "/trellis/v1/cells/rotate-keys", `{"cells":["cell1"]}`, 200, &rot)
		if len(rot.Cells) != 1 || rot.Cells[0] != (api.CellKeyGeneration{Name: "cell1", KeyGeneration: 2}) {
			t.Errorf("rotate cell1 = %+v", rot)
		}
		st = e.waitState(c1, func(s api.CellState) bool { return s.KeyGeneration == 2 })
		var cells api.List[api.Cell]
		e.must(e.admin, "GET", "/trellis/v1/cells?names=cell1", "", 200, &cells)
		if c := cells.Resources[0]; c.WireGuardKey != k1 || c.WireGuardKeyGeneration != 1 || c.KeyGeneration != 2 {
			t.Errorf("cell1 listed while its rotation is pending = %+v", c)
		}
		k2 := testWireGuardKey()
		if code, body := e.putKey(c1, k2, 51821, 2); code != 204 {
			t.Fatalf("register cell1's new key = %d %s", code, body)
		}
		e.waitState(c2, func(s api.CellState) bool { return s.Peers[0].WireGuardKey == k2 && s.Peers[0].WireGuardPort == 51821 })
		if code, body := e.putKey(c1, k1, 51820, 1); code != 409 || !strings.Contains(body, "older") {
			t.Errorf("the old key again = %d %s, want 409 (older)", code, body)
		}
		// All cells: the client sends [] for none named.
		cl := e.client()
		out, err := cl.RotateCellKeys(context.Background(), nil)
		if err != nil || len(out.Cells) != 2 || out.Cells[0].KeyGeneration != 3 || out.Cells[1].KeyGeneration != 1 {
			t.Errorf("rotate all = %+v, %v; want cell1 at 3, cell2 (no key) at 1", out, err)
		}
		// The cell's client registers as the agent does.
		k3 := testWireGuardKey()
		if err := e.cellClient(c2).RegisterWireGuardKey(context.Background(), api.CellKey{PublicKey: k3, ListenPort: 51820, Generation: 1}); err != nil {
			t.Fatalf("RegisterWireGuardKey = %v", err)
		}
		e.waitState(c1, func(s api.CellState) bool { return s.Peers[0].WireGuardKey == k3 })
		err = e.cellClient(c2).RegisterWireGuardKey(context.Background(), api.CellKey{PublicKey: testWireGuardKey(), ListenPort: 51820, Generation: 5})
		if err == nil || !strings.Contains(err.Error(), "409") && !strings.Contains(err.Error(), "newer") {
			t.Errorf("RegisterWireGuardKey of a generation not asked for = %v, want the 409", err)
		}
	})
}

// TestEncryptionSwitch: anyone who reads the foundation reads the mode,
// the admin sets it; every cell's state follows; turning it off is logged
// as a warning.
func TestEncryptionSwitch(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		var logs syncBuffer
		e.srv.Config.Handler.(*Server).log = slog.New(slog.NewTextHandler(&logs, nil))
		_, c1 := e.joinCell("cell1", "198.51.100.11")
		_, c2 := e.joinCell("cell2", "198.51.100.12")
		write := e.token(ScopeWrite, []string{e.defaultSpace()})
		var mode api.EncryptionSetting
		e.must(write, "GET", "/trellis/v1/encryption", "", 200, &mode)
		if mode.Mode != api.EncryptionOff {
			t.Errorf("a new foundation's mode = %q, want off", mode.Mode)
		}
		rev := e.revision()
		if code, body := e.do(e.admin, "PUT", "/trellis/v1/encryption", `{"mode":"ipsec"}`); code != 422 || !strings.Contains(body, "mode") {
			t.Errorf("PUT an unknown mode = %d %s, want 422 naming mode", code, body)
		}
		if code, _ := e.do(write, "PUT", "/trellis/v1/encryption", `{"mode":"wireguard"}`); code != 403 {
			t.Errorf("PUT as a write token = %d, want 403", code)
		}
		if e.revision() != rev {
			t.Errorf("refused PUTs moved the revision")
		}
		cl := e.client()
		if err := cl.SetEncryption(context.Background(), api.EncryptionWireGuard); err != nil {
			t.Fatal(err)
		}
		if m, err := cl.Encryption(context.Background()); err != nil || m != api.EncryptionWireGuard {
			t.Errorf("Encryption() = %q, %v", m, err)
		}
		for _, c := range []*http.Client{c1, c2} {
			e.waitState(c, func(s api.CellState) bool { return s.Encryption == api.EncryptionWireGuard })
		}
		if err := cl.SetEncryption(context.Background(), api.EncryptionOff); err != nil {
			t.Fatal(err)
		}
		for _, c := range []*http.Client{c1, c2} {
			e.waitState(c, func(s api.CellState) bool { return s.Encryption == api.EncryptionOff })
		}
		if l := logs.lines("ENCRYPTION BETWEEN CELLS TURNED OFF"); len(l) != 1 || !strings.Contains(l[0], "level=WARN") {
			t.Errorf("turning encryption off logged %q, want one warning", l)
		}
	})
}

// TestInitEncryption: the controller flag sets a new foundation's mode; a
// foundation with one keeps it.
func TestInitEncryption(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		log := slog.New(slog.NewTextHandler(&syncBuffer{}, nil))
		ctx := context.Background()
		if _, err := initEncryption(ctx, e.store, "ipsec", log); err == nil || !strings.Contains(err.Error(), "--encryption") {
			t.Errorf("initEncryption(ipsec) = %v, want an error naming --encryption", err)
		}
		if m, err := initEncryption(ctx, e.store, api.EncryptionWireGuard, log); err != nil || m != api.EncryptionWireGuard {
			t.Errorf("initEncryption(wireguard) on a new foundation = %q, %v", m, err)
		}
		if m, err := initEncryption(ctx, e.store, "", log); err != nil || m != api.EncryptionWireGuard {
			t.Errorf("initEncryption() on a foundation with wireguard = %q, %v; want it kept", m, err)
		}
		var mode api.EncryptionSetting
		e.must(e.admin, "GET", "/trellis/v1/encryption", "", 200, &mode)
		if mode.Mode != api.EncryptionWireGuard {
			t.Errorf("GET encryption = %q", mode.Mode)
		}
	})
}

// TestScheduledCellKeyRotation: with a rotation period, a cell whose key is
// older is asked for the next generation, once until it registers it.
func TestScheduledCellKeyRotation(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		j1, c1 := e.joinCell("cell1", "198.51.100.11")
		if code, body := e.putKey(c1, testWireGuardKey(), 51820, 1); code != 204 {
			t.Fatalf("register = %d %s", code, body)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			rotateKeysEvery(ctx, e.store, 300*time.Millisecond, slog.New(slog.NewTextHandler(&syncBuffer{}, nil)))
		}()
		defer func() { cancel(); <-done }()
		e.waitState(c1, func(s api.CellState) bool { return s.KeyGeneration == 2 })
		// Pending: not asked again however long it takes.
		time.Sleep(time.Second)
		cs, err := e.store.Cells(ctx, store.CellFilter{GUIDs: []string{j1.Cell.GUID}})
		if err != nil || cs[0].KeyGeneration != 2 {
			t.Fatalf("cell1 while its rotation is pending = %+v, %v; want key generation 2", cs, err)
		}
		if code, body := e.putKey(c1, testWireGuardKey(), 51820, 2); code != 204 {
			t.Fatalf("register generation 2 = %d %s", code, body)
		}
		e.waitState(c1, func(s api.CellState) bool { return s.KeyGeneration == 3 })
	})
}

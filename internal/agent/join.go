package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/identity"
)

// Files of a cell's identity in the agent's state directory.
const (
	cellFile     = "cell.json"
	cellKeyFile  = "cell.key" // generated here; never sent anywhere
	cellCertFile = "cell.crt"
	caFile       = "ca.crt"
)

// cellIdentity is what the agent keeps of its cell across restarts.
type cellIdentity struct {
	Cell          api.Cell `json:"cell"`
	ControllerURL string   `json:"controller_url"`
}

// loadOrJoin returns the cell's identity and a controller client that
// authenticates with the cell certificate, joining with cfg.JoinToken if the
// state dir holds no identity yet — or if it holds one the controller no
// longer knows (the cell was deleted, or left) and a join token is given.
// rejoined reports the latter.
func loadOrJoin(ctx context.Context, cfg Config, underlayIP string) (id cellIdentity, c *controllerClient, rejoined bool, err error) {
	dir := cfg.StateDir
	id, c, found, err := loadIdentity(cfg)
	switch {
	case err != nil:
		return id, nil, false, err
	case found && cfg.JoinToken == "":
		return id, c, false, nil
	case found:
		if !c.forgotten(ctx) {
			return id, c, false, nil // known, or unknowable now: keep it, and the token unused
		}
		cfg.Log.Warn("the controller no longer knows this cell: joining again with the join token",
			"cell", id.Cell.Name, "old_guid", id.Cell.GUID, "old_subnet", id.Cell.Subnet)
		if cfg.ControllerURL == "" {
			cfg.ControllerURL = id.ControllerURL
		}
		if cfg.CACertFile == "" {
			cfg.CACertFile = filepath.Join(dir, caFile)
		}
		rejoined = true
	case cfg.JoinToken == "":
		return id, nil, false, fmt.Errorf("state dir %s holds no cell identity: give --join-token (make one with `trellis create-join-token`)", dir)
	}
	id, c, err = join(ctx, cfg, underlayIP)
	return id, c, rejoined, err
}

// loadIdentity reads the cell's identity from the state dir, if it holds
// one, and makes its client.
func loadIdentity(cfg Config) (id cellIdentity, c *controllerClient, found bool, err error) {
	dir := cfg.StateDir
	b, err := os.ReadFile(filepath.Join(dir, cellFile))
	if errors.Is(err, fs.ErrNotExist) {
		return id, nil, false, nil
	}
	if err != nil {
		return id, nil, false, err
	}
	if err := json.Unmarshal(b, &id); err != nil {
		return id, nil, false, fmt.Errorf("read %s: %w", cellFile, err)
	}
	if cfg.ControllerURL != "" && cfg.ControllerURL != id.ControllerURL {
		id.ControllerURL = cfg.ControllerURL
		if err := saveJSON(filepath.Join(dir, cellFile), id); err != nil {
			return id, nil, false, err
		}
	}
	c, err = newControllerClient(id.ControllerURL, filepath.Join(dir, caFile), filepath.Join(dir, cellCertFile), filepath.Join(dir, cellKeyFile))
	return id, c, true, err
}

// join joins the foundation with cfg.JoinToken and keeps the identity it
// gets in the state dir.
func join(ctx context.Context, cfg Config, underlayIP string) (cellIdentity, *controllerClient, error) {
	dir := cfg.StateDir
	var id cellIdentity
	if cfg.ControllerURL == "" {
		return id, nil, errors.New("--controller is required to join")
	}
	caPEM, err := os.ReadFile(cfg.CACertFile)
	if err != nil {
		return id, nil, fmt.Errorf("read controller CA (--ca-cert): %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return id, nil, fmt.Errorf("--ca-cert %s holds no PEM certificate", cfg.CACertFile)
	}
	keyPEM, csrPEM, err := identity.NewKeyAndCSR(cfg.Name)
	if err != nil {
		return id, nil, err
	}
	body, _ := json.Marshal(api.JoinRequest{Name: cfg.Name, UnderlayIP: underlayIP, CSR: string(csrPEM)})
	req, err := http.NewRequestWithContext(ctx, "POST", strings.TrimSuffix(cfg.ControllerURL, "/")+"/trellis/v1/cells/join", bytes.NewReader(body))
	if err != nil {
		return id, nil, fmt.Errorf("--controller %q: %w", cfg.ControllerURL, err)
	}
	req.Header.Set("Authorization", "Bearer "+cfg.JoinToken)
	req.Header.Set("Content-Type", "application/json")
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}
	resp, err := hc.Do(req)
	if err != nil {
		var uerr x509.UnknownAuthorityError
		if errors.As(err, &uerr) {
			return id, nil, fmt.Errorf("join %s: the controller's certificate is not signed by the CA in %s: give the controller's ca.crt", cfg.ControllerURL, cfg.CACertFile)
		}
		return id, nil, fmt.Errorf("join %s: %w", cfg.ControllerURL, err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusCreated {
		return id, nil, fmt.Errorf("join %s: %s", cfg.ControllerURL, apiError(resp.StatusCode, rb))
	}
	var jr api.JoinResponse
	if err := json.Unmarshal(rb, &jr); err != nil {
		return id, nil, fmt.Errorf("join: decode answer: %w", err)
	}
	id = cellIdentity{Cell: jr.Cell, ControllerURL: cfg.ControllerURL}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{cellKeyFile, keyPEM, 0o600},
		{cellCertFile, []byte(jr.Certificate), 0o644},
		{caFile, []byte(jr.CA), 0o644},
	} {
		if err := identity.WriteFileAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return id, nil, err
		}
	}
	if err := saveJSON(filepath.Join(dir, cellFile), id); err != nil {
		return id, nil, err
	}
	c, err := newControllerClient(id.ControllerURL, filepath.Join(dir, caFile), filepath.Join(dir, cellCertFile), filepath.Join(dir, cellKeyFile))
	return id, c, err
}

// apiError renders a controller error answer in its own words.
func apiError(status int, body []byte) string {
	var e api.Error
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		return e.Error
	}
	var v3 api.V3Errors
	if json.Unmarshal(body, &v3) == nil && len(v3.Errors) > 0 {
		return v3.Errors[0].Detail
	}
	return fmt.Sprintf("%d %s", status, http.StatusText(status))
}

// saveJSON writes v to path atomically.
func saveJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return identity.WriteFileAtomic(path, append(b, '\n'), 0o600)
}

// controllerClient talks to the controller as the cell, over mutual TLS.
type controllerClient struct {
	base string
	http *http.Client
}

func newControllerClient(base, caPath, certPath, keyPath string) (*controllerClient, error) {
	caPEM, err := os.ReadFile(caPath)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, fmt.Errorf("load cell certificate: %w", err)
	}
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
	}
	return &controllerClient{base: strings.TrimSuffix(base, "/"), http: &http.Client{Transport: tr}}, nil
}

// errController marks failures to reach the controller (as opposed to its
// refusals), so callers can tell "try later" from "wrong".
var errController = errors.New("controller unreachable")

func (c *controllerClient) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %w", errController, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%w: %w", errController, err)
	}
	if resp.StatusCode >= 500 {
		return fmt.Errorf("%w: %s", errController, apiError(resp.StatusCode, b))
	}
	if resp.StatusCode >= 300 {
		return &refusedError{status: resp.StatusCode, msg: apiError(resp.StatusCode, b)}
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// refusedError is the controller saying no (4xx), in its words.
type refusedError struct {
	status int
	msg    string
}

func (e *refusedError) Error() string { return e.msg }

func (c *controllerClient) state(ctx context.Context, after int64, wait time.Duration) (api.CellState, error) {
	var st api.CellState
	path := "/trellis/v1/cell/state"
	if after >= 0 {
		path += fmt.Sprintf("?after=%d&wait=%s", after, strconv.FormatFloat(wait.Seconds(), 'f', -1, 64))
	}
	err := c.do(ctx, "GET", path, nil, &st)
	return st, err
}

// forgotten reports whether the controller says it does not know the cell
// (any other answer, or none, is not taken as forgotten).
func (c *controllerClient) forgotten(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := c.state(ctx, -1, 0)
	return isForgotten(err)
}

// isForgotten reports whether err is the controller refusing the cell's
// certificate because the cell is no longer registered.
func isForgotten(err error) bool {
	var refused *refusedError
	return errors.As(err, &refused) && refused.status == http.StatusUnauthorized
}

func (c *controllerClient) register(ctx context.Context, guid string, reg api.InstanceRegistration) error {
	return c.do(ctx, "PUT", "/trellis/v1/cell/instances/"+guid, reg, nil)
}

func (c *controllerClient) deregister(ctx context.Context, guid string) error {
	return c.do(ctx, "DELETE", "/trellis/v1/cell/instances/"+guid, nil, nil)
}

func (c *controllerClient) leave(ctx context.Context) error {
	return c.do(ctx, "DELETE", "/trellis/v1/cell", nil, nil)
}

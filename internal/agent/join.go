package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
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
	Cell api.Cell `json:"cell"`
	// ControllerURL is the first controller; ControllerURLs every one, in
	// the order the agent tries them (absent from the files of agents that
	// knew one controller).
	ControllerURL  string   `json:"controller_url"`
	ControllerURLs []string `json:"controller_urls,omitempty"`
}

// urls are the controllers the identity names.
func (id cellIdentity) urls() []string {
	if len(id.ControllerURLs) > 0 {
		return id.ControllerURLs
	}
	return []string{id.ControllerURL}
}

// setURLs makes the identity name the controllers at urls.
func (id *cellIdentity) setURLs(urls []string) {
	id.ControllerURL, id.ControllerURLs = urls[0], nil
	if len(urls) > 1 {
		id.ControllerURLs = slices.Clone(urls)
	}
}

// loadOrJoin returns the cell's identity and a controller client that
// authenticates with the cell certificate, joining with cfg.JoinToken if the
// state dir holds no identity yet — or if it holds one the controller no
// longer knows (the cell was deleted, or left) and a join token is given.
// rejoined reports the latter.
func loadOrJoin(ctx context.Context, cfg Config, underlayIP string) (id cellIdentity, c *api.Client, rejoined bool, err error) {
	dir := cfg.StateDir
	id, c, found, err := loadIdentity(cfg)
	switch {
	case err != nil:
		return id, nil, false, err
	case found && cfg.JoinToken == "":
		return id, c, false, nil
	case found:
		if !forgotten(ctx, c) {
			return id, c, false, nil // known, or unknowable now: keep it, and the token unused
		}
		cfg.Log.Warn("the controller no longer knows this cell: joining again with the join token",
			"cell", id.Cell.Name, "old_guid", id.Cell.GUID, "old_subnet", id.Cell.Subnet)
		if len(cfg.ControllerURLs) == 0 {
			cfg.ControllerURLs = id.urls()
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
func loadIdentity(cfg Config) (id cellIdentity, c *api.Client, found bool, err error) {
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
	if len(cfg.ControllerURLs) > 0 && !slices.Equal(cfg.ControllerURLs, id.urls()) {
		id.setURLs(cfg.ControllerURLs)
		if err := saveJSON(filepath.Join(dir, cellFile), id); err != nil {
			return id, nil, false, err
		}
	}
	c, err = cellClient(id.urls(), dir)
	return id, c, true, err
}

// join joins the foundation with cfg.JoinToken and keeps the identity it
// gets in the state dir.
func join(ctx context.Context, cfg Config, underlayIP string) (cellIdentity, *api.Client, error) {
	dir := cfg.StateDir
	var id cellIdentity
	if len(cfg.ControllerURLs) == 0 {
		return id, nil, errors.New("--controller is required to join")
	}
	controllers := strings.Join(cfg.ControllerURLs, ",")
	caPEM, err := os.ReadFile(cfg.CACertFile)
	if err != nil {
		return id, nil, fmt.Errorf("read controller CA (--ca-cert): %w", err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(caPEM) {
		return id, nil, fmt.Errorf("--ca-cert %s holds no PEM certificate", cfg.CACertFile)
	}
	jc, err := api.NewClient(api.ClientConfig{APIURL: cfg.ControllerURLs[0], APIURLs: cfg.ControllerURLs, CACert: string(caPEM), Token: cfg.JoinToken})
	if err != nil {
		return id, nil, fmt.Errorf("--controller %q: %w", controllers, err)
	}
	defer jc.CloseIdleConnections()
	keyPEM, csrPEM, err := identity.NewKeyAndCSR(cfg.Name)
	if err != nil {
		return id, nil, err
	}
	jr, err := jc.Join(ctx, api.JoinRequest{Name: cfg.Name, UnderlayIP: underlayIP, CSR: string(csrPEM)})
	if err != nil {
		var uerr x509.UnknownAuthorityError
		if errors.As(err, &uerr) {
			return id, nil, fmt.Errorf("join %s: the controller's certificate is not signed by the CA in %s: give the controller's ca.crt", controllers, cfg.CACertFile)
		}
		return id, nil, fmt.Errorf("join %s: %w", controllers, err)
	}
	id = cellIdentity{Cell: jr.Cell}
	id.setURLs(cfg.ControllerURLs)
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
	c, err := cellClient(id.urls(), dir)
	return id, c, err
}

// saveJSON writes v to path atomically.
func saveJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return identity.WriteFileAtomic(path, append(b, '\n'), 0o600)
}

// cellClient makes the client that talks to the controllers at urls as
// the cell, over mutual TLS, with the cell's certificate and the CA in dir.
func cellClient(urls []string, dir string) (*api.Client, error) {
	caPEM, err := os.ReadFile(filepath.Join(dir, caFile))
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, cellCertFile), filepath.Join(dir, cellKeyFile))
	if err != nil {
		return nil, fmt.Errorf("load cell certificate: %w", err)
	}
	// A controller named by a host name with several addresses is one
	// controller per address (see api.NewCellClientResolving).
	return api.NewCellClientResolving(urls, string(caPEM), cert, api.SystemResolver)
}

// forgotten reports whether the controller says it does not know the cell
// (any other answer, or none, is not taken as forgotten).
func forgotten(ctx context.Context, c *api.Client) bool {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := c.CellState(ctx, -1, 0)
	return isForgotten(err)
}

// isForgotten reports whether err is the controller refusing the cell's
// certificate because the cell is no longer registered.
func isForgotten(err error) bool {
	var he *api.HTTPError
	return errors.As(err, &he) && he.Status == http.StatusUnauthorized
}

package api

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// ClientConfig is what a CLI needs to reach a controller: written by the
// controller to STATE/admin.json on first start, copied to
// ~/.trellis/config.json by `trellis login --config-from`.
type ClientConfig struct {
	APIURL string `json:"api_url"`
	CACert string `json:"ca_cert"` // PEM of the controller's CA
	Token  string `json:"token"`
	// Org and Space are the CLI's target, as `cf target` sets it; empty
	// means "default".
	Org   string `json:"org,omitempty"`
	Space string `json:"space,omitempty"`
	// User names the token's holder in CLI messages ("... as admin...");
	// empty means "admin", the holder of admin.json's token.
	User string `json:"user,omitempty"`
}

// LoadClientConfig reads a ClientConfig from path.
func LoadClientConfig(path string) (ClientConfig, error) {
	var c ClientConfig
	b, err := os.ReadFile(path)
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("parse %s: %w", path, err)
	}
	if c.APIURL == "" || c.Token == "" {
		return c, fmt.Errorf("parse %s: api_url and token are required", path)
	}
	return c, nil
}

// Save writes c to path atomically with mode 0600 (it holds a token),
// creating the directory if needed.
func (c ClientConfig) Save(path string) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".config-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

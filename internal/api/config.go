package api

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// ClientConfig is what a CLI needs to reach a controller: written by the
// controller to STATE/admin.json on first start, copied to
// ~/.trellis/config.json by `trellis login --config-from`.
type ClientConfig struct {
	// APIURL is the controller's URL; APIURLs, when a foundation has
	// several controllers, every one's, tried in turn when one does not
	// answer (see Client). URLs says which are used.
	APIURL  string   `json:"api_url"`
	APIURLs []string `json:"api_urls,omitempty"`
	CACert  string   `json:"ca_cert"` // PEM of the controller's CA
	Token   string   `json:"token"`
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
	if (c.APIURL == "" && len(c.APIURLs) == 0) || c.Token == "" {
		return c, fmt.Errorf("parse %s: api_url and token are required", path)
	}
	if c.APIURL == "" {
		c.APIURL = c.APIURLs[0]
	}
	return c, nil
}

// URLs are the controllers a Client made for c knows, in the order it
// tries them: APIURL first, then the others of APIURLs.
func (c ClientConfig) URLs() []string {
	var out []string
	for _, u := range append([]string{c.APIURL}, c.APIURLs...) {
		if u != "" && !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out
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

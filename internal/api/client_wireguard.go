package api

import (
	"context"
	"net/http"
)

// Encryption reports the foundation's encryption mode (EncryptionOff or
// EncryptionWireGuard).
func (c *Client) Encryption(ctx context.Context) (string, error) {
	var e EncryptionSetting
	err := c.do(ctx, http.MethodGet, "/trellis/v1/encryption", nil, nil, &e)
	return e.Mode, err
}

// SetEncryption sets the foundation's encryption mode (admin).
func (c *Client) SetEncryption(ctx context.Context, mode string) error {
	return c.do(ctx, http.MethodPut, "/trellis/v1/encryption", nil, EncryptionSetting{Mode: mode}, nil)
}

// RotateCellKeys asks the named cells (all if none) to make new WireGuard
// key pairs (admin).
func (c *Client) RotateCellKeys(ctx context.Context, cells []string) (RotateCellKeysResponse, error) {
	if cells == nil {
		cells = []string{}
	}
	var out RotateCellKeysResponse
	err := c.do(ctx, http.MethodPost, "/trellis/v1/cells/rotate-keys", nil, RotateCellKeysRequest{Cells: cells}, &out)
	return out, err
}

// RegisterWireGuardKey registers the calling cell's WireGuard public key
// and port, made for key generation k.Generation (a cell client).
func (c *Client) RegisterWireGuardKey(ctx context.Context, k CellKey) error {
	return c.do(ctx, http.MethodPut, "trellis/v1/cell/wireguard-key", nil, k, nil)
}

package api

// Encryption between cells: a foundation-wide switch, and the WireGuard
// public keys each cell registers. A cell's private key never leaves it.

// The encryption modes of a foundation.
const (
	// EncryptionOff sends traffic between cells as plain VXLAN.
	EncryptionOff = "off"
	// EncryptionWireGuard carries all traffic between cells inside
	// WireGuard.
	EncryptionWireGuard = "wireguard"
)

// EncryptionSetting is the body and answer of GET and PUT
// /trellis/v1/encryption: GET for any caller that may read the foundation,
// PUT for an admin.
type EncryptionSetting struct {
	Mode string `json:"mode"`
}

// CellKey is the body of PUT /trellis/v1/cell/wireguard-key, sent by a cell
// over its mutual TLS: the cell is the one its certificate names.
type CellKey struct {
	// PublicKey is the base64 of the 32-byte WireGuard public key.
	PublicKey string `json:"public_key"`
	// ListenPort is the UDP port the cell's WireGuard device listens on.
	ListenPort int `json:"listen_port"`
	// Generation is the key_generation (CellState.KeyGeneration) the key
	// answers. The controller refuses one newer than it asked for.
	Generation int64 `json:"generation"`
}

// RotateCellKeysRequest is the body of POST /trellis/v1/cells/rotate-keys
// (admin): the names of the cells whose keys to rotate, empty for all.
type RotateCellKeysRequest struct {
	Cells []string `json:"cells"`
}

// RotateCellKeysResponse answers POST /trellis/v1/cells/rotate-keys: the
// cells asked for a new key, with the generation each must now reach.
type RotateCellKeysResponse struct {
	Cells []CellKeyGeneration `json:"cells"`
}

// CellKeyGeneration is one cell's wanted key generation.
type CellKeyGeneration struct {
	Name          string `json:"name"`
	KeyGeneration int64  `json:"key_generation"`
}

// Package wireguard describes a cell's WireGuard device: the layer below
// the overlay that encrypts every packet between cells. Engine hides which
// implementation runs it (package engine starts them: the kernel's
// WireGuard, programmed through wgctrl, where the kernel has it, and
// otherwise wireguard-go in the calling process on a TUN device), so that
// the dataplane programs both the same way. A cell's private key is made
// on the cell and kept in its state directory (see LoadOrCreateKey); only
// its public key leaves. This package holds the types and keys only, so
// that the CNI plugin, which links the dataplane, links no engine.
package wireguard

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Engine kinds, as Engine.Kind reports them.
const (
	KindKernel    = "kernel"
	KindUserspace = "userspace"
)

// Overhead is what WireGuard adds to every packet on an IPv4 underlay:
// outer IPv4 (20), UDP (8), and its own header and tag (32).
const Overhead = 60

// DefaultPort is the UDP port a cell's device listens on when none is set.
const DefaultPort = 51820

// Key is a Curve25519 key, private or public.
type Key = wgtypes.Key

// ParseKey parses a base64 key, as Key.String writes it.
func ParseKey(s string) (Key, error) { return wgtypes.ParseKey(s) }

// Config is what Up makes: a device in a network namespace with a key and
// a listening port.
type Config struct {
	// NetNS is the path of the network namespace the device lives in and
	// its UDP socket is bound in.
	NetNS string
	// Name is the device's name, e.g. "trellis-wg".
	Name string
	// PrivateKey is the cell's private key.
	PrivateKey Key
	// ListenPort is the UDP port; 0 means DefaultPort.
	ListenPort int
	// MTU is the device's MTU when Up makes it.
	MTU int
	// Kind forces an implementation ("kernel" or "userspace"); "" picks
	// the kernel's where it has WireGuard.
	Kind string
	// Log receives the userspace engine's errors; nil discards them.
	Log Logger
}

// Logger is the part of a *slog.Logger the engines use.
type Logger interface {
	Warn(msg string, args ...any)
}

// Peer is another cell as the device needs it: its public key, where its
// device listens on the underlay, and the inner addresses it may send from
// and is sent to.
type Peer struct {
	PublicKey  Key
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix
}

// Engine is a running WireGuard device. SetKey and SetPeers converge it:
// a peer whose key, endpoint and allowed IPs are unchanged keeps its
// session, so traffic to it flows on while others change.
type Engine interface {
	// Kind is KindKernel or KindUserspace.
	Kind() string
	// PublicKey is the public key of the device's private key.
	PublicKey() Key
	// ListenPort is the UDP port the device listens on.
	ListenPort() int
	// SetKey replaces the device's private key (a rotation); every session
	// starts anew with a handshake under the new key.
	SetKey(Key) error
	// SetPeers makes peers the device's whole peer set.
	SetPeers([]Peer) error
	// Close deletes the device.
	Close() error
}

// KeyFile is a cell's WireGuard key as its state directory keeps it: the
// private key, and the generation it was registered as.
type KeyFile struct {
	PrivateKey Key
	Generation int64
}

// keyFileJSON is KeyFile on disk, the key in base64.
type keyFileJSON struct {
	PrivateKey string `json:"private_key"`
	Generation int64  `json:"generation"`
}

// LoadOrCreateKey reads the key file at path, or makes a new private key
// (generation 0) and writes it there first, readable by the owner only.
func LoadOrCreateKey(path string) (KeyFile, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		var j keyFileJSON
		if err := json.Unmarshal(b, &j); err != nil {
			return KeyFile{}, fmt.Errorf("read WireGuard key %s: %w", path, err)
		}
		k, err := ParseKey(j.PrivateKey)
		if err != nil || k == (Key{}) {
			return KeyFile{}, fmt.Errorf("read WireGuard key %s: no valid private key", path)
		}
		return KeyFile{PrivateKey: k, Generation: j.Generation}, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return KeyFile{}, fmt.Errorf("read WireGuard key: %w", err)
	}
	kf, err := NewKey(0)
	if err != nil {
		return kf, err
	}
	return kf, SaveKey(path, kf)
}

// NewKey makes a new private key for generation gen.
func NewKey(gen int64) (KeyFile, error) {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return KeyFile{}, fmt.Errorf("make WireGuard key: %w", err)
	}
	return KeyFile{PrivateKey: k, Generation: gen}, nil
}

// SaveKey writes kf to path (mode 0600) through a temporary file, so that a
// crash leaves the old key or the new one, never half of one.
func SaveKey(path string, kf KeyFile) error {
	b, err := json.Marshal(keyFileJSON{PrivateKey: kf.PrivateKey.String(), Generation: kf.Generation})
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".wgkey-*")
	if err != nil {
		return fmt.Errorf("save WireGuard key: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("save WireGuard key: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("save WireGuard key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save WireGuard key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save WireGuard key: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("save WireGuard key: %w", err)
	}
	return nil
}

// Engines makes and removes the engines a dataplane runs (package engine's
// Up and Down). A dataplane is given them (dataplane.UseWireGuard), so
// that what links the dataplane only for the container wiring — the CNI
// plugin — does not link WireGuard's implementations.
type Engines struct {
	Up   func(Config) (Engine, error)
	Down func(nsPath, name string) error
}

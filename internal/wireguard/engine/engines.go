// Package engine runs a cell's WireGuard device: Up starts the kernel's
// WireGuard (through wgctrl) where the kernel has it, and otherwise
// wireguard-go in the calling process on a TUN device made in the cell's
// network namespace; Down removes either. The agent gives Engines to its
// dataplane (dataplane.UseWireGuard).
package engine

import "github.com/trellis-c2c/trellis/internal/wireguard"

// Engines are this package's Up and Down, for dataplane.UseWireGuard.
func Engines() wireguard.Engines { return wireguard.Engines{Up: Up, Down: Down} }

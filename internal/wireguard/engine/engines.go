package engine

import "github.com/trellis-c2c/trellis/internal/wireguard"

// Engines are this package's Up and Down, for dataplane.UseWireGuard.
func Engines() wireguard.Engines { return wireguard.Engines{Up: Up, Down: Down} }

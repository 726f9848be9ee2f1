package dataplane

import (
	"net/netip"

	"github.com/trellis-c2c/trellis/internal/wireguard"
)

// Encryption between cells: with a cell's WireGuard set, the VXLAN packets
// between cells leave through the cell's WireGuard device instead of the
// underlay. Every cell's device holds one address derived from its subnet
// (WireGuardAddr); the VTEP uses it as its local address and sends to the
// peers' such addresses, which the device routes to the peers' WireGuard
// sessions. The VXLAN-GBP packet inside, with its policy tag, is the same
// as without encryption.

// WGName is the WireGuard device every cell uses.
const WGName = "trellis-wg"

// WireGuard configures a cell's WireGuard device.
type WireGuard struct {
	// PrivateKey is the cell's private key; it stays in the cell.
	PrivateKey wireguard.Key
	// ListenPort is the device's UDP port; 0 means wireguard.DefaultPort.
	ListenPort int
	// Engine forces "kernel" or "userspace"; "" takes the kernel's where
	// it has WireGuard.
	Engine string
}

// WireGuardAddr is the address a cell's WireGuard device holds, and the
// VTEP's local address while encryption is on: the second of the cell's
// subnet, which container addressing keeps back (see ipam.FirstHost).
func WireGuardAddr(subnet netip.Prefix) netip.Addr { return vtepAddr(subnet).Next() }

// OverlayMTU is the MTU of the overlay (the VTEP's, and every container's)
// over an underlay of underlayMTU: VXLAN's overhead less, and WireGuard's
// too while encryption is on.
func OverlayMTU(underlayMTU int, encrypted bool) int {
	if encrypted {
		return underlayMTU - wireguard.Overhead - VXLANOverhead
	}
	return underlayMTU - VXLANOverhead
}

// wgPeers are the WireGuard peers of a cell: one for every peer cell that
// registered a key, allowed to send from (and sent to for) its device's
// address only — the only packets inside WireGuard are VXLAN between the
// devices' addresses, so a peer cell cannot put anything else in.
func wgPeers(c Cell, peers []Peer) []wireguard.Peer {
	var out []wireguard.Peer
	for _, p := range peers {
		if p.WireGuardKey == (wireguard.Key{}) || (p.UnderlayIP == c.UnderlayIP && p.Subnet == c.Subnet) {
			continue
		}
		port := p.WireGuardPort
		if port == 0 {
			port = wireguard.DefaultPort
		}
		out = append(out, wireguard.Peer{
			PublicKey:  p.WireGuardKey,
			Endpoint:   netip.AddrPortFrom(p.UnderlayIP, uint16(port)),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(WireGuardAddr(p.Subnet), 32)},
		})
	}
	return out
}

// WireGuard reports the engine that runs the cell's WireGuard device
// ("kernel" or "userspace") and its public key; "" when encryption is off.
// It does not wait for a Set under way.
func (d *Dataplane) WireGuard() (engine string, publicKey wireguard.Key) {
	p, _ := d.wgNow.Load().(*wireguard.Engine)
	if p == nil || *p == nil {
		return "", wireguard.Key{}
	}
	return (*p).Kind(), (*p).PublicKey()
}

// setWG records the engine in use (nil: none).
func (d *Dataplane) setWG(e wireguard.Engine) {
	d.wg = e
	d.wgNow.Store(&e)
}

// UseWireGuard gives d the engines that make and remove its WireGuard
// device (engine.Engines()); without them, a Set that turns encryption on
// fails. It returns d.
func (d *Dataplane) UseWireGuard(e wireguard.Engines) *Dataplane {
	d.engines = e
	return d
}

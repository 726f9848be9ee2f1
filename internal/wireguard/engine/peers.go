package engine

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/trellis-c2c/trellis/internal/wireguard"
)

// peerConfig is the wgctrl change that turns the peer set have into want:
// removals for peers gone, and the full settings of every wanted peer
// whose settings differ (an unchanged one is left alone).
func peerConfig(have map[wireguard.Key]wireguard.Peer, want []wireguard.Peer) ([]wgtypes.PeerConfig, error) {
	seen := map[wireguard.Key]bool{}
	var pcs []wgtypes.PeerConfig
	for _, p := range want {
		if seen[p.PublicKey] {
			return nil, fmt.Errorf("peer %s appears twice", p.PublicKey)
		}
		seen[p.PublicKey] = true
		if h, ok := have[p.PublicKey]; ok && samePeer(h, p) {
			continue
		}
		pc := wgtypes.PeerConfig{PublicKey: p.PublicKey, ReplaceAllowedIPs: true}
		if p.Endpoint.IsValid() {
			pc.Endpoint = net.UDPAddrFromAddrPort(p.Endpoint)
		}
		for _, a := range p.AllowedIPs {
			pc.AllowedIPs = append(pc.AllowedIPs, net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())})
		}
		pcs = append(pcs, pc)
	}
	for k := range have {
		if !seen[k] {
			pcs = append(pcs, wgtypes.PeerConfig{PublicKey: k, Remove: true})
		}
	}
	return pcs, nil
}

// newKeys are the keys of want that have does not hold: peers whose
// sessions start now.
func newKeys(have map[wireguard.Key]wireguard.Peer, want []wireguard.Peer) map[wireguard.Key]bool {
	fresh := map[wireguard.Key]bool{}
	for _, p := range want {
		if _, ok := have[p.PublicKey]; !ok {
			fresh[p.PublicKey] = true
		}
	}
	return fresh
}

func samePeer(a, b wireguard.Peer) bool {
	return a.PublicKey == b.PublicKey && a.Endpoint == b.Endpoint && slices.Equal(a.AllowedIPs, b.AllowedIPs)
}

func peerMap(peers []wireguard.Peer) map[wireguard.Key]wireguard.Peer {
	m := make(map[wireguard.Key]wireguard.Peer, len(peers))
	for _, p := range peers {
		p.AllowedIPs = slices.Clone(p.AllowedIPs)
		m[p.PublicKey] = p
	}
	return m
}

func prefixOf(n net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func netipAddrPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

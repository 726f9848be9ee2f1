// Package dataplane programs a cell's kernel: the VXLAN device and the
// routes, ARP and FDB entries that reach other cells, the policy table
// (both through one Dataplane value per cell, New and Set), and the veth
// pairs that connect containers to the cell (AddContainer, DelContainer,
// CheckContainer).
//
// A Dataplane is given the network namespace that plays the cell, acts
// only there, through netlink handles bound to it, and owns what it
// remembers of what it applied: the package holds no state of its own. The package follows
// Cloud Foundry silk's wiring (VTEP address .0 of the cell's subnet, MACs
// derived from IPs, /32 point-to-point veths with ARP off) so that every
// cell can compute every other cell's entries from the list of leases.
//
// Planning is pure and kernel calls are separate: the overlay is converged
// by reading the kernel's state, planning the ops that turn it into the
// desired state (planOverlay), and executing only those. An op prints as
// the iproute2 command with the same effect, which is what the golden tests
// compare. The kernel side is in *_linux.go.
//
// Set enforces network policy in the cell with one nftables table
// (inet "trellis"): packets from local instances are checked against their
// interface, address and MAC, and those that can open a connection (a TCP
// SYN, any packet not TCP) are marked with their app's tag, which
// VXLAN-GBP carries to other cells; new connections to local instances are
// accepted only for the (tag, destination, protocol, port) tuples allowed,
// and rejected otherwise. planPolicy renders the table as nft text for the
// golden tests; Dataplane.CutDisallowed and CutFlows remove the conntrack
// entries of revoked connections.
package dataplane

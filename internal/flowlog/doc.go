// Package flowlog reads the packets that a cell's nftables rules log to
// NFLOG groups ("log group N") and turns them into Packets: addresses,
// protocol, ports and TCP flags decoded from the logged IP header, with the
// rule's prefix, the packet mark and the interfaces from the log message.
// The agent turns Packets into flow events ("why was my connection
// denied?").
//
// NFLOG instances belong to a network namespace: a group is bound by a
// netlink socket opened in the namespace whose rules log to it, and only one
// socket per namespace can bind a given group. Open therefore creates its
// sockets on a thread switched into the cell's namespace (netns.Do); the
// sockets stay there and are read from ordinary goroutines.
//
// Messages the kernel cannot deliver because the socket's receive buffer is
// full are lost, not retried. The reader asks the kernel to number every
// message of a group and counts the gaps, so Stats says exactly how many
// were lost; reading goes on after an overrun.
package flowlog

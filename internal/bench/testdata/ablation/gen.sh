#!/bin/bash
# Sourced by variants.sh: hdr writes what every variant of BenchmarkAblation
# shares (trellis's sets, counters and policy chains, with the bench's
# client 10.255.1.2, tag 1000, and server 10.255.2.2, tag 1, allowed on
# tcp 5201 and 5202); out FUNC writes $OUT/$NAME.cell1.nft and .cell2.nft,
# hdr then FUNC's chains (FUNC gets the cell's number).
set -e
hdr() { # $1 cell
  local ip=10.255.$1.2 mac=ee:ee:0a:ff:0$1:02 veth=s-01025500${1}002 tag
  if [ $1 = 1 ]; then tag=1000; else tag=1; fi
  cat <<E
table inet trellis
delete table inet trellis
table inet trellis {
	counter spoofed { }
	counter denied { }
	counter allowed { }
	set local_ids { type ifname . ipv4_addr . ether_addr; elements = { "$veth" . $ip . $mac } }
	map local_tags { type ifname . ipv4_addr . ether_addr : mark; elements = { "$veth" . $ip . $mac : $tag } }
	map src_tag { type ipv4_addr : mark; elements = { $ip : $tag } }
	set allow_ports { type ipv4_addr . mark . inet_proto . inet_service; counter; $( [ $1 = 2 ] && echo 'elements = { 10.255.2.2 . 1000 . tcp . 5201, 10.255.2.2 . 1000 . tcp . 5202 }' ) }
	set allow_ranges { type ipv4_addr . mark . inet_proto . inet_service; flags interval; counter; }
	chain allow_new {
		ct mark set meta mark & 0xffff | 0x10000 counter name "allowed" accept
	}
	chain deny_new {
		counter name "denied"
		meta l4proto tcp reject with tcp reset
		reject
	}
	chain to_instance {
		ip daddr . meta mark & 0xffff . meta l4proto . th dport @allow_ports goto allow_new
		ip daddr . meta mark & 0xffff . meta l4proto . th dport @allow_ranges goto allow_new
		goto deny_new
	}
E
}
out() { for c in 1 2; do { hdr $c; "$1" $c; echo "}"; } > "${OUT:-.}/$NAME.cell$c.nft"; done; }

#!/bin/bash
# OUT=DIR bash variants.sh writes BenchmarkAblation's variants into DIR, then:
#   TRELLIS_ABLATION=DIR [ABLATION_PERF=1] flock /tmp/trellis-bench.lock go test -run - -bench Ablation -benchtime 1x -v ./internal/bench/
# (or a test binary built with go test -c), and with ABLATION_PERF,
#   bash share.sh DIR/perf.*
. "$(dirname "$0")/gen.sh"
# same: the trellis ruleset, written by nft (AddContainer and the overlay put
# the devices in their groups)
same() { cat <<E
	chain prerouting { type filter hook prerouting priority raw; policy accept;
		meta iifgroup 0x74720001 goto from_instance
		meta iifgroup 0x74720002 accept
		iifname "s-*" goto from_instance
		udp dport 4789 notrack
	}
	chain output { type filter hook output priority raw; policy accept;
		udp dport 4789 notrack
	}
	chain from_instance {
		meta nfproto ipv4 tcp flags & (syn|ack) != syn iifname . ip saddr . ether saddr @local_ids accept
		meta nfproto ipv4 iifname . ip saddr . ether saddr @local_ids meta mark set ip saddr map @src_tag accept
		meta nfproto ipv4 iifname . ip saddr . ether saddr @local_ids accept
		counter name "spoofed" drop
	}
	chain forward { type filter hook forward priority filter; policy accept;
		meta oifgroup 0x74720002 accept
		meta oifgroup != 0x74720001 oifname != "s-*" accept
		tcp flags & (syn|ack) == syn meta nfproto ipv4 goto to_instance
		ct state established,related accept
		meta nfproto ipv4 goto to_instance
		drop
	}
E
}
NAME=same; out same
# names: trellis's ruleset before device groups (2026-12-07), dispatching on
# interface names
names() { cat <<E
	chain prerouting { type filter hook prerouting priority raw; policy accept;
		iifname "s-*" goto from_instance
		udp dport 4789 iifname != "trellis-vtep*" notrack
	}
	chain output { type filter hook output priority raw; policy accept;
		udp dport 4789 notrack
	}
	chain from_instance {
		meta nfproto ipv4 tcp flags & (syn|ack) != syn iifname . ip saddr . ether saddr @local_ids accept
		meta nfproto ipv4 iifname . ip saddr . ether saddr @local_ids meta mark set ip saddr map @src_tag accept
		meta nfproto ipv4 iifname . ip saddr . ether saddr @local_ids accept
		counter name "spoofed" drop
	}
	chain forward { type filter hook forward priority filter; policy accept;
		oifname != "s-*" accept
		tcp flags & (syn|ack) == syn meta nfproto ipv4 goto to_instance
		ct state established,related accept
		meta nfproto ipv4 goto to_instance
		drop
	}
E
}
NAME=names; out names
# nospoof: no anti-spoofing lookup; SYNs marked by src_tag
nospoof() { cat <<E
	chain prerouting { type filter hook prerouting priority raw; policy accept;
		iifname "s-*" goto from_instance
		udp dport 4789 iifname != "trellis-vtep*" notrack
	}
	chain output { type filter hook output priority raw; policy accept;
		udp dport 4789 notrack
	}
	chain from_instance {
		tcp flags & (syn|ack) != syn accept
		meta mark set ip saddr map @src_tag accept
		accept
	}
	chain forward { type filter hook forward priority filter; policy accept;
		oifname != "s-*" accept
		tcp flags & (syn|ack) == syn meta nfproto ipv4 goto to_instance
		ct state established,related accept
		meta nfproto ipv4 goto to_instance
		drop
	}
E
}
NAME=nospoof; out nospoof
# nffwd: trellis's prerouting, conntrack alone's forward chain (polices nothing)
nofwd() { cat <<E
	chain prerouting { type filter hook prerouting priority raw; policy accept;
		iifname "s-*" goto from_instance
		udp dport 4789 iifname != "trellis-vtep*" notrack
	}
	chain output { type filter hook output priority raw; policy accept;
		udp dport 4789 notrack
	}
	chain from_instance {
		meta nfproto ipv4 tcp flags & (syn|ack) != syn iifname . ip saddr . ether saddr @local_ids accept
		meta nfproto ipv4 iifname . ip saddr . ether saddr @local_ids meta mark set ip saddr map @src_tag accept
		meta nfproto ipv4 iifname . ip saddr . ether saddr @local_ids accept
		counter name "spoofed" drop
	}
	chain forward { type filter hook forward priority filter; policy accept;
		ct state established,related accept
	}
E
}
NAME=nffwd; out nofwd
# nfpre: conntrack alone with trellis's VXLAN rule (no from_instance, no policing)
nfpre() { cat <<E
	chain prerouting { type filter hook prerouting priority raw; policy accept;
		udp dport 4789 iifname != "trellis-vtep*" notrack
	}
	chain output { type filter hook output priority raw; policy accept;
		udp dport 4789 notrack
	}
	chain forward { type filter hook forward priority filter; policy accept;
		ct state established,related accept
	}
E
}
NAME=nfpre; out nfpre
# nfmark: conntrack alone + SYN marked on the source cell (what the mark costs)
nfmark() { cat <<E
	chain prerouting { type filter hook prerouting priority raw; policy accept;
		iifname "s-*" tcp flags & (syn|ack) == syn meta mark set 1000
		udp dport 4789 iifname != "trellis-vtep*" notrack
	}
	chain output { type filter hook output priority raw; policy accept;
		udp dport 4789 notrack
	}
	chain forward { type filter hook forward priority filter; policy accept;
		ct state established,related accept
	}
E
}
NAME=nfmark; out nfmark
# opt: no ifname loads but the dispatch; one map lookup (anti-spoofing and tag) for SYNs;
# forward dispatch on the cell's subnet; the underlay rule on the overlay prefix
opt() { cat <<E
	chain prerouting { type filter hook prerouting priority raw; policy accept;
		iifname "s-*" goto from_instance
		udp dport 4789 ip daddr != 10.255.0.0/16 notrack
	}
	chain output { type filter hook output priority raw; policy accept;
		udp dport 4789 notrack
	}
	chain from_instance {
		meta nfproto ipv4 tcp flags & (syn|ack) != syn iifname . ip saddr . ether saddr @local_ids accept
		meta nfproto ipv4 meta mark set iifname . ip saddr . ether saddr map @local_tags accept
		counter name "spoofed" drop
	}
	chain forward { type filter hook forward priority filter; policy accept;
		ip daddr != 10.255.$1.0/24 accept
		tcp flags & (syn|ack) == syn meta nfproto ipv4 goto to_instance
		ct state established,related accept
		meta nfproto ipv4 goto to_instance
		drop
	}
E
}
NAME=opt; out opt
# grp: no interface names per packet: host veths in device group 7 and the
# VTEP in group 8 (setup.sh sets them: not what trellis does today), the
# anti-spoofing key on the interface index
grp() { cat <<E
	set local_idx { type iface_index . ipv4_addr . ether_addr; elements = { "s-01025500${1}002" . 10.255.$1.2 . ee:ee:0a:ff:0$1:02 } }
	chain prerouting { type filter hook prerouting priority raw; policy accept;
		meta iifgroup 7 goto from_instance
		udp dport 4789 meta iifgroup != 8 notrack
	}
	chain output { type filter hook output priority raw; policy accept;
		udp dport 4789 notrack
	}
	chain from_instance {
		meta nfproto ipv4 tcp flags & (syn|ack) != syn iif . ip saddr . ether saddr @local_idx accept
		meta nfproto ipv4 iif . ip saddr . ether saddr @local_idx meta mark set ip saddr map @src_tag accept
		counter name "spoofed" drop
	}
	chain forward { type filter hook forward priority filter; policy accept;
		meta oifgroup != 7 accept
		tcp flags & (syn|ack) == syn meta nfproto ipv4 goto to_instance
		ct state established,related accept
		meta nfproto ipv4 goto to_instance
		drop
	}
E
}
NAME=grp; out grp

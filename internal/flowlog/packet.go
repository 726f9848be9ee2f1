package flowlog

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Packet is one packet logged by an nftables log rule, as read from its
// NFLOG group.
//
// The network fields come from the logged copy of the packet, which starts at
// its IP header. A field the copy does not reach stays zero: SrcIP and DstIP
// are invalid when the copy holds no readable IPv4 or IPv6 header (a rule
// logging non-IP traffic, or a copy range of 0), and the ports and flags are
// zero when the transport header is cut off or absent (a non-first fragment),
// in which case Truncated is set.
type Packet struct {
	// Time is the kernel's receive timestamp of the packet when the log
	// message carries one (packets from the network), else the time the
	// message was read (packets sent by local sockets usually have none).
	Time time.Time
	// Group is the NFLOG group the rule logged to.
	Group uint16
	// Prefix is the rule's log prefix ("log prefix ..."), without the
	// trailing NUL.
	Prefix string
	// Mark is the packet mark (meta mark) when it was logged.
	Mark uint32
	// InIfIndex and OutIfIndex are the input and output interfaces in the
	// namespace of the rule, 0 when the hook has none (no input device in
	// output, no output device in input). InIf and OutIf are their names
	// when they could be looked up, else "".
	InIfIndex, OutIfIndex uint32
	InIf, OutIf           string

	// SrcIP and DstIP are the addresses in the IP header.
	SrcIP, DstIP netip.Addr
	// Protocol is the transport protocol: "tcp", "udp", "icmp", "icmpv6",
	// "sctp", ... or the protocol number in decimal for others. For IPv6 it
	// is the protocol after the extension headers.
	Protocol string
	// Length is the packet's length according to its IP header, which is
	// more than the logged copy when that was cut short.
	Length int
	// SrcPort and DstPort are the transport ports for tcp, udp, udplite,
	// sctp and dccp.
	SrcPort, DstPort uint16
	// TCPFlags are the flags of a TCP segment.
	TCPFlags TCPFlags
	// ICMPType and ICMPCode are set for icmp and icmpv6.
	ICMPType, ICMPCode uint8
	// Truncated reports that the logged copy ended before the headers this
	// package decodes (IP header, and the transport header up to the ports,
	// TCP flags or ICMP code).
	Truncated bool
}

// TCPFlags are the flag bits of a TCP header (byte 13).
type TCPFlags uint8

// The TCP flags, as nftables names them.
const (
	FIN TCPFlags = 1 << iota
	SYN
	RST
	PSH
	ACK
	URG
	ECE
	CWR
)

var tcpFlagNames = [...]string{"fin", "syn", "rst", "psh", "ack", "urg", "ecn", "cwr"}

// String returns the flags as nftables prints them, "syn,ack" for example,
// and "" for none.
func (f TCPFlags) String() string {
	var names []string
	for i, n := range tcpFlagNames {
		if f&(1<<i) != 0 {
			names = append(names, n)
		}
	}
	return strings.Join(names, ",")
}

// IP protocol numbers this package names or decodes.
const (
	protoICMP    = 1
	protoTCP     = 6
	protoUDP     = 17
	protoDCCP    = 33
	protoICMPv6  = 58
	protoSCTP    = 132
	protoUDPLite = 136
)

var protoNames = map[uint8]string{
	protoICMP: "icmp", 2: "igmp", 4: "ipip", protoTCP: "tcp", protoUDP: "udp",
	protoDCCP: "dccp", 41: "ipv6", 47: "gre", 50: "esp", 51: "ah", protoICMPv6: "icmpv6",
	protoSCTP: "sctp", protoUDPLite: "udplite",
}

func protoName(p uint8) string {
	if n, ok := protoNames[p]; ok {
		return n
	}
	return strconv.Itoa(int(p))
}

var (
	errShort   = errors.New("payload too short for an IP header")
	errVersion = errors.New("payload is not IPv4 or IPv6")
	errHeader  = errors.New("invalid IP header length")
)

// decode fills p's network fields from b, a logged copy of a packet that
// starts at its IP header. It returns an error, leaving SrcIP and DstIP
// invalid, when b holds no usable IP header; a transport header that b cuts
// short only sets Truncated. It never reads outside b.
func (p *Packet) decode(b []byte) error {
	if len(b) == 0 {
		return errShort
	}
	switch b[0] >> 4 {
	case 4:
		return p.decode4(b)
	case 6:
		return p.decode6(b)
	}
	return errVersion
}

func (p *Packet) decode4(b []byte) error {
	if len(b) < 20 {
		p.Truncated = true
		return errShort
	}
	hlen := int(b[0]&0x0f) * 4
	if hlen < 20 {
		return errHeader
	}
	if len(b) < hlen {
		p.Truncated = true
		return errShort
	}
	p.SrcIP = netip.AddrFrom4([4]byte(b[12:16]))
	p.DstIP = netip.AddrFrom4([4]byte(b[16:20]))
	p.Protocol = protoName(b[9])
	p.Length = int(binary.BigEndian.Uint16(b[2:4]))
	l4 := b[hlen:]
	// Bytes past the IP total length are padding, not transport header.
	if p.Length >= hlen && p.Length-hlen < len(l4) {
		l4 = l4[:p.Length-hlen]
	}
	if binary.BigEndian.Uint16(b[6:8])&0x1fff != 0 {
		// A non-first fragment: no transport header in it.
		p.Truncated = true
		return nil
	}
	p.decodeL4(b[9], l4)
	return nil
}

// maxExtHeaders bounds the IPv6 extension headers decode6 walks through.
const maxExtHeaders = 8

func (p *Packet) decode6(b []byte) error {
	if len(b) < 40 {
		p.Truncated = true
		return errShort
	}
	p.SrcIP = netip.AddrFrom16([16]byte(b[8:24]))
	p.DstIP = netip.AddrFrom16([16]byte(b[24:40]))
	plen := int(binary.BigEndian.Uint16(b[4:6]))
	p.Length = 40 + plen
	next, rest := b[6], b[40:]
	// Bytes past the payload length are padding. A length of 0 is a jumbo
	// payload (big TCP): its real length is in a hop-by-hop option.
	if plen != 0 && p.Length < len(b) {
		rest = b[40:p.Length]
	}
	for range maxExtHeaders {
		var n int
		switch next {
		case 0, 43, 60: // hop-by-hop, routing, destination options
			if len(rest) < 2 {
				p.Protocol, p.Truncated = protoName(next), true
				return nil
			}
			n = (int(rest[1]) + 1) * 8
		case 44: // fragment
			if len(rest) < 8 {
				p.Protocol, p.Truncated = protoName(next), true
				return nil
			}
			if binary.BigEndian.Uint16(rest[2:4])&0xfff8 != 0 {
				p.Protocol, p.Truncated = protoName(rest[0]), true
				return nil
			}
			n = 8
		case 51: // authentication header
			if len(rest) < 2 {
				p.Protocol, p.Truncated = protoName(next), true
				return nil
			}
			n = (int(rest[1]) + 2) * 4
		default:
			p.Protocol = protoName(next)
			p.decodeL4(next, rest)
			return nil
		}
		if len(rest) < n {
			p.Protocol, p.Truncated = protoName(next), true
			return nil
		}
		next, rest = rest[0], rest[n:]
	}
	// More extension headers than any sane packet: report the last one.
	p.Protocol, p.Truncated = protoName(next), true
	return nil
}

// decodeL4 fills the transport fields of protocol proto from its header l4.
func (p *Packet) decodeL4(proto uint8, l4 []byte) {
	switch proto {
	case protoTCP:
		if len(l4) < 14 {
			p.Truncated = true
		} else {
			p.TCPFlags = TCPFlags(l4[13])
		}
		fallthrough
	case protoUDP, protoUDPLite, protoSCTP, protoDCCP:
		if len(l4) < 4 {
			p.Truncated = true
			return
		}
		p.SrcPort = binary.BigEndian.Uint16(l4[0:2])
		p.DstPort = binary.BigEndian.Uint16(l4[2:4])
	case protoICMP, protoICMPv6:
		if len(l4) < 2 {
			p.Truncated = true
			return
		}
		p.ICMPType, p.ICMPCode = l4[0], l4[1]
	}
}

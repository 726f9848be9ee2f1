package flowlog

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var (
	src4 = netip.MustParseAddr("10.255.1.2")
	dst4 = netip.MustParseAddr("10.255.2.3")
	src6 = netip.MustParseAddr("fd00::1")
	dst6 = netip.MustParseAddr("fd00::2")
)

// ip4 returns an IPv4 header with options opts (a multiple of 4 bytes)
// followed by l4, total length set to cover both.
func ip4(proto byte, opts, l4 []byte) []byte {
	hlen := 20 + len(opts)
	b := make([]byte, hlen, hlen+len(l4))
	b[0] = 0x40 | byte(hlen/4)
	binary.BigEndian.PutUint16(b[2:], uint16(hlen+len(l4)))
	b[8] = 64
	b[9] = proto
	copy(b[12:], src4.AsSlice())
	copy(b[16:], dst4.AsSlice())
	copy(b[20:], opts)
	return append(b, l4...)
}

// ip6 returns an IPv6 header whose next header is next, followed by rest.
func ip6(next byte, rest []byte) []byte {
	b := make([]byte, 40, 40+len(rest))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(rest)))
	b[6] = next
	b[7] = 64
	copy(b[8:], src6.AsSlice())
	copy(b[24:], dst6.AsSlice())
	return append(b, rest...)
}

func udp(sport, dport uint16) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], 8)
	return b
}

func tcp(sport, dport uint16, flags TCPFlags) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	b[12] = 5 << 4
	b[13] = byte(flags)
	return b
}

// with returns b with byte i set to v.
func with(b []byte, i int, v byte) []byte {
	b = append([]byte(nil), b...)
	b[i] = v
	return b
}

func TestDecode(t *testing.T) {
	fragment4 := ip4(17, nil, udp(40000, 8080))
	fragment4[6], fragment4[7] = 0x00, 0xb9 // offset 185*8
	firstFragment4 := ip4(17, nil, udp(40000, 8080))
	firstFragment4[6] = 0x20 // more fragments, offset 0
	padded := append(ip4(17, nil, udp(1, 2)), 0xff, 0xff, 0xff, 0xff)
	// The IPv4 total length says the UDP header ends after 2 bytes; the
	// rest of the copy is Ethernet padding, not ports.
	short := ip4(17, nil, udp(1, 2))
	binary.BigEndian.PutUint16(short[2:], 22)
	// hop-by-hop (8 bytes) then a first fragment, then TCP.
	hbh := []byte{44, 0, 1, 4, 0, 0, 0, 0}
	frag0 := []byte{6, 0, 0, 0, 0, 0, 0, 1}
	fragN := []byte{17, 0, 0x05, 0x00, 0, 0, 0, 1}

	tests := []struct {
		name    string
		in      []byte
		want    Packet
		wantErr bool
	}{
		{
			name: "ipv4 udp",
			in:   ip4(17, nil, udp(40000, 8080)),
			want: Packet{SrcIP: src4, DstIP: dst4, Protocol: "udp", Length: 28, SrcPort: 40000, DstPort: 8080},
		},
		{
			name: "ipv4 tcp syn",
			in:   ip4(6, nil, tcp(40000, 8080, SYN)),
			want: Packet{SrcIP: src4, DstIP: dst4, Protocol: "tcp", Length: 40, SrcPort: 40000, DstPort: 8080, TCPFlags: SYN},
		},
		{
			name: "ipv4 options",
			in:   ip4(6, []byte{1, 1, 1, 0}, tcp(1, 2, SYN|ACK)),
			want: Packet{SrcIP: src4, DstIP: dst4, Protocol: "tcp", Length: 44, SrcPort: 1, DstPort: 2, TCPFlags: SYN | ACK},
		},
		{
			name: "ipv4 icmp echo",
			in:   ip4(1, nil, []byte{8, 0, 0, 0, 0, 1, 0, 1}),
			want: Packet{SrcIP: src4, DstIP: dst4, Protocol: "icmp", Length: 28, ICMPType: 8},
		},
		{
			name: "ipv4 sctp",
			in:   ip4(132, nil, udp(5000, 5001)),
			want: Packet{SrcIP: src4, DstIP: dst4, Protocol: "sctp", Length: 28, SrcPort: 5000, DstPort: 5001},
		},
		{
			name: "ipv4 gre has no ports",
			in:   ip4(47, nil, udp(1, 2)),
			want: Packet{SrcIP: src4, DstIP: dst4, Protocol: "gre", Length: 28},
		},
		{
			name: "ipv4 unnamed protocol",
			in:   ip4(253, nil, nil),
			want: Packet{SrcIP: src4, DstIP: dst4, Protocol: "253", Length: 20},
		},
		{
			name: "ipv4 tcp cut after ports",
			in:   ip4(6, nil, tcp(40000, 8080, SYN))[:24],
			want: Packet{SrcIP: src4, DstIP: dst4, Protocol: "tcp", Length: 40, SrcPort: 40000, DstPort: 8080, Truncated: true},
		},
		{
			name: "ipv4 udp cut inside ports",
			in:   ip4(17, nil, udp(40000, 8080))[:23],
			want: Packet{SrcIP: src4, DstIP: dst4, Protocol: "udp", Length: 28, Truncated: true},
		},
		{
			name: "ipv4 padding after total length",
			in:   padded,
			want: Packet{SrcIP: src4, DstIP: dst4, Protocol: "udp", Length: 28, SrcPort: 1, DstPort: 2},
		},
		{
			name: "ipv4 total length ends inside ports",
			in:   short,
			want: Packet{SrcIP: src4, DstIP: dst4, Protocol: "udp", Length: 22, Truncated: true},
		},
		{
			name: "ipv4 total length 0 (segmentation offload)",
			in:   with(ip4(17, nil, udp(1, 2)), 3, 0),
			want: Packet{SrcIP: src4, DstIP: dst4, Protocol: "udp", Length: 0, SrcPort: 1, DstPort: 2},
		},
		{
			name: "ipv4 first fragment",
			in:   firstFragment4,
			want: Packet{SrcIP: src4, DstIP: dst4, Protocol: "udp", Length: 28, SrcPort: 40000, DstPort: 8080},
		},
		{
			name: "ipv4 later fragment",
			in:   fragment4,
			want: Packet{SrcIP: src4, DstIP: dst4, Protocol: "udp", Length: 28, Truncated: true},
		},
		{
			name:    "ipv4 cut inside header",
			in:      ip4(17, nil, nil)[:19],
			want:    Packet{Truncated: true},
			wantErr: true,
		},
		{
			name:    "ipv4 cut inside options",
			in:      ip4(17, []byte{1, 1, 1, 0}, nil)[:22],
			want:    Packet{Truncated: true},
			wantErr: true,
		},
		{
			name:    "ipv4 header length below 20",
			in:      with(ip4(17, nil, udp(1, 2)), 0, 0x44),
			wantErr: true,
		},
		{
			name: "ipv6 udp",
			in:   ip6(17, udp(40000, 8080)),
			want: Packet{SrcIP: src6, DstIP: dst6, Protocol: "udp", Length: 48, SrcPort: 40000, DstPort: 8080},
		},
		{
			name: "ipv6 icmpv6",
			in:   ip6(58, []byte{128, 0, 0, 0}),
			want: Packet{SrcIP: src6, DstIP: dst6, Protocol: "icmpv6", Length: 44, ICMPType: 128},
		},
		{
			name: "ipv6 hop-by-hop and first fragment before tcp",
			in:   ip6(0, append(append(append([]byte(nil), hbh...), frag0...), tcp(1, 443, SYN)...)),
			want: Packet{SrcIP: src6, DstIP: dst6, Protocol: "tcp", Length: 76, SrcPort: 1, DstPort: 443, TCPFlags: SYN},
		},
		{
			name: "ipv6 later fragment",
			in:   ip6(44, append(append([]byte(nil), fragN...), udp(1, 2)...)),
			want: Packet{SrcIP: src6, DstIP: dst6, Protocol: "udp", Length: 56, Truncated: true},
		},
		{
			name: "ipv6 cut inside extension header",
			in:   ip6(0, hbh)[:44],
			want: Packet{SrcIP: src6, DstIP: dst6, Protocol: "0", Length: 48, Truncated: true},
		},
		{
			name: "ipv6 extension headers without end",
			in:   ip6(60, []byte{60, 0, 0, 0, 0, 0, 0, 0, 60, 0, 0, 0, 0, 0, 0, 0, 60, 0, 0, 0, 0, 0, 0, 0, 60, 0, 0, 0, 0, 0, 0, 0, 60, 0, 0, 0, 0, 0, 0, 0, 60, 0, 0, 0, 0, 0, 0, 0, 60, 0, 0, 0, 0, 0, 0, 0, 60, 0, 0, 0, 0, 0, 0, 0, 60, 0}),
			want: Packet{SrcIP: src6, DstIP: dst6, Protocol: "60", Length: 106, Truncated: true},
		},
		{
			name:    "ipv6 cut inside header",
			in:      ip6(17, nil)[:39],
			want:    Packet{Truncated: true},
			wantErr: true,
		},
		{name: "empty", in: nil, wantErr: true},
		{name: "not ip", in: []byte{0x52, 0, 0, 0}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got Packet
			err := got.decode(tt.in)
			if (err != nil) != tt.wantErr {
				t.Errorf("decode(% x) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
				t.Errorf("decode(% x) mismatch (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestTCPFlagsString(t *testing.T) {
	tests := []struct {
		in   TCPFlags
		want string
	}{
		{0, ""},
		{SYN, "syn"},
		{SYN | ACK, "syn,ack"},
		{FIN | PSH | ACK, "fin,psh,ack"},
		{0xff, "fin,syn,rst,psh,ack,urg,ecn,cwr"},
	}
	for _, tt := range tests {
		if got := tt.in.String(); got != tt.want {
			t.Errorf("TCPFlags(%#x).String() = %q, want %q", uint8(tt.in), got, tt.want)
		}
	}
}

// FuzzDecode checks that decode never panics nor reads past its input, and
// that its result is consistent: addresses exactly when it reports no
// error, ports only for protocols that have them.
func FuzzDecode(f *testing.F) {
	f.Add(ip4(17, nil, udp(40000, 8080)))
	f.Add(ip4(6, []byte{1, 1, 1, 0}, tcp(1, 2, SYN|ACK)))
	f.Add(ip4(1, nil, []byte{8, 0, 0, 0}))
	f.Add(ip6(0, []byte{44, 0, 1, 4, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 1}))
	f.Add(ip6(58, []byte{128, 0}))
	f.Add([]byte{0x45})
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Packet
		err := p.decode(b)
		if (err == nil) != p.SrcIP.IsValid() || p.SrcIP.IsValid() != p.DstIP.IsValid() {
			t.Fatalf("decode(% x) = %v with SrcIP %v, DstIP %v", b, err, p.SrcIP, p.DstIP)
		}
		if err == nil && p.Protocol == "" {
			t.Fatalf("decode(% x) gave no protocol", b)
		}
		switch p.Protocol {
		case "tcp", "udp", "udplite", "sctp", "dccp":
		default:
			if p.SrcPort != 0 || p.DstPort != 0 {
				t.Fatalf("decode(% x) gave ports %d, %d for protocol %q", b, p.SrcPort, p.DstPort, p.Protocol)
			}
		}
		if p.TCPFlags != 0 && p.Protocol != "tcp" {
			t.Fatalf("decode(% x) gave TCP flags for protocol %q", b, p.Protocol)
		}
	})
}

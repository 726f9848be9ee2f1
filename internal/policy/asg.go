package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/trellis-c2c/trellis/internal/api"
)

// Application security groups: validation of Cloud Foundry's rule fields
// and their parsing into address and port ranges, which the egress
// compiler (egress.go) turns into each cell's egress rules.

// Egress protocols of security group rules.
const (
	ICMP = "icmp"
	All  = "all"
)

// MaxRules bounds the rules of one security group.
const MaxRules = 5000

// AddrRange is an inclusive IPv4 address range.
type AddrRange struct{ From, To netip.Addr }

// Contains reports whether a is in r.
func (r AddrRange) Contains(a netip.Addr) bool {
	return r.From.Compare(a) <= 0 && a.Compare(r.To) <= 0
}

// PortRange is an inclusive port range.
type PortRange struct{ From, To uint16 }

// Rule is a validated security group rule.
type Rule struct {
	Protocol     string
	Destinations []AddrRange
	Ports        []PortRange // tcp and udp only
	// ICMPType and ICMPCode are -1 for any (icmp only).
	ICMPType, ICMPCode int
	Log                bool
	Description        string
}

// ParseRules validates a group's rules as Cloud Foundry does, with its
// messages ("Rules[0]: destination must be ..."), and returns them parsed.
// Every problem is reported, joined.
func ParseRules(rules []api.SecurityGroupRule) ([]Rule, error) {
	if len(rules) > MaxRules {
		return nil, fmt.Errorf("Rules: a security group has at most %d rules, not %d", MaxRules, len(rules))
	}
	out := make([]Rule, 0, len(rules))
	var errs []error
	for i, r := range rules {
		p, err := ParseRule(r)
		if err != nil {
			errs = append(errs, fmt.Errorf("Rules[%d]: %w", i, err))
			continue
		}
		out = append(out, p)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// ParseRule validates one rule (see ParseRules); its error names the field.
func ParseRule(r api.SecurityGroupRule) (Rule, error) {
	out := Rule{Protocol: r.Protocol, ICMPType: -1, ICMPCode: -1, Log: r.Log, Description: r.Description}
	var errs []string
	switch r.Protocol {
	case TCP, UDP, ICMP, All:
	default:
		errs = append(errs, fmt.Sprintf("protocol must be 'tcp', 'udp', 'icmp', or 'all' (got %q)", r.Protocol))
	}
	dests, err := ParseDestination(r.Destination)
	if err != nil {
		errs = append(errs, err.Error())
	}
	out.Destinations = dests
	switch r.Protocol {
	case TCP, UDP:
		if r.Ports == "" {
			errs = append(errs, "ports are required for protocols of type TCP and UDP")
		} else if out.Ports, err = ParsePorts(r.Ports); err != nil {
			errs = append(errs, err.Error())
		}
	default:
		if r.Ports != "" {
			errs = append(errs, "ports are not allowed for protocols of type ICMP or ALL")
		}
	}
	if r.Protocol == ICMP {
		if r.Type == nil || r.Code == nil {
			errs = append(errs, "type and code are required for protocols of type ICMP")
		} else {
			if *r.Type < -1 || *r.Type > 255 {
				errs = append(errs, "type must be an integer between -1 and 255 (inclusive)")
			}
			if *r.Code < -1 || *r.Code > 255 {
				errs = append(errs, "code must be an integer between -1 and 255 (inclusive)")
			}
			out.ICMPType, out.ICMPCode = *r.Type, *r.Code
		}
	} else if r.Type != nil || r.Code != nil {
		errs = append(errs, "type and code are only allowed for protocols of type ICMP")
	}
	if len(r.Description) > 255 {
		errs = append(errs, "description must be at most 255 characters")
	}
	if len(errs) > 0 {
		return Rule{}, errors.New(strings.Join(errs, "; "))
	}
	return out, nil
}

// ParseDestination parses a rule's destination: an IPv4 address, a range
// "A-B" (A <= B), a CIDR, or a comma-separated list of these.
func ParseDestination(s string) ([]AddrRange, error) {
	bad := fmt.Errorf("destination must be a valid CIDR, IP address, or IP address range, or a comma-separated list of these (got %q)", s)
	if s == "" {
		return nil, bad
	}
	var out []AddrRange
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		switch {
		case strings.Contains(part, "/"):
			p, err := netip.ParsePrefix(part)
			if err != nil || !p.Addr().Is4() {
				return nil, bad
			}
			p = p.Masked()
			out = append(out, AddrRange{p.Addr(), lastAddr(p)})
		case strings.Contains(part, "-"):
			a, b, _ := strings.Cut(part, "-")
			from, err1 := netip.ParseAddr(strings.TrimSpace(a))
			to, err2 := netip.ParseAddr(strings.TrimSpace(b))
			if err1 != nil || err2 != nil || !from.Is4() || !to.Is4() {
				return nil, bad
			}
			if to.Less(from) {
				return nil, fmt.Errorf("destination range %s is reversed: its first address must not be after its last", part)
			}
			out = append(out, AddrRange{from, to})
		default:
			a, err := netip.ParseAddr(part)
			if err != nil || !a.Is4() {
				return nil, bad
			}
			out = append(out, AddrRange{a, a})
		}
	}
	return out, nil
}

// lastAddr is the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().As4()
	n := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	n |= uint32(1<<(32-p.Bits())) - 1
	if p.Bits() == 0 {
		n = 0xffffffff
	}
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

// ParsePorts parses a rule's ports: "443", "8000-9000" or "80,443".
func ParsePorts(s string) ([]PortRange, error) {
	bad := fmt.Errorf("ports must be a valid single port, comma separated list of ports, or range of ports, formatted as a string (e.g. '80', '80,443', '8080-8081'; got %q)", s)
	var out []PortRange
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		a, b, isRange := strings.Cut(part, "-")
		from, err := port(a)
		if err != nil {
			return nil, bad
		}
		to := from
		if isRange {
			if to, err = port(b); err != nil {
				return nil, bad
			}
			if to < from {
				return nil, fmt.Errorf("ports range %s is reversed: its first port must not be above its last", part)
			}
		}
		out = append(out, PortRange{from, to})
	}
	return out, nil
}

func port(s string) (uint16, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 1 || n > 65535 {
		return 0, errors.New("not a port")
	}
	return uint16(n), nil
}

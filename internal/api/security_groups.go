package api

import (
	"net/netip"
	"time"
)

// Application security groups (Cloud Foundry's ASGs): egress allow rules
// bound to spaces, or to every space, that let instances reach what lives
// outside the overlay. The shapes are those of CF's v3 API
// (/v3/security_groups).

// SecurityGroupRule is one allow rule, in Cloud Foundry's fields.
// Protocol is tcp, udp, icmp or all; Destination an IP, a range
// (10.0.0.1-10.0.0.255), a CIDR, or a comma-separated list of these;
// Ports (tcp and udp only) a port, a range (8000-9000) or a list (80,443);
// Type and Code (icmp only, -1: any) the ICMP type and code.
type SecurityGroupRule struct {
	Protocol    string `json:"protocol"`
	Destination string `json:"destination"`
	Ports       string `json:"ports,omitempty"`
	Type        *int   `json:"type,omitempty"`
	Code        *int   `json:"code,omitempty"`
	Description string `json:"description,omitempty"`
	Log         bool   `json:"log,omitempty"`
}

// GloballyEnabled says for which lifecycles a group applies to every space.
type GloballyEnabled struct {
	Running bool `json:"running"`
	Staging bool `json:"staging"`
}

// ToMany is a v3 to-many relationship.
type ToMany struct {
	Data []Ref `json:"data"`
}

// SecurityGroupRelationships are the spaces a group is bound to, by lifecycle.
type SecurityGroupRelationships struct {
	RunningSpaces ToMany `json:"running_spaces"`
	StagingSpaces ToMany `json:"staging_spaces"`
}

// SecurityGroup is an application security group as /v3/security_groups
// answers it.
type SecurityGroup struct {
	GUID            string                     `json:"guid"`
	CreatedAt       time.Time                  `json:"created_at"`
	UpdatedAt       time.Time                  `json:"updated_at"`
	Name            string                     `json:"name"`
	GloballyEnabled GloballyEnabled            `json:"globally_enabled"`
	Rules           []SecurityGroupRule        `json:"rules"`
	Relationships   SecurityGroupRelationships `json:"relationships"`
	Links           map[string]Link            `json:"links,omitempty"`
}

// SecurityGroupRequest is the body of POST /v3/security_groups and of
// PATCH /v3/security_groups/{guid} (where every field is optional).
type SecurityGroupRequest struct {
	Name            *string                     `json:"name,omitempty"`
	GloballyEnabled *GloballyEnabledRequest     `json:"globally_enabled,omitempty"`
	Rules           *[]SecurityGroupRule        `json:"rules,omitempty"`
	Relationships   *SecurityGroupRelationships `json:"relationships,omitempty"`
}

// GloballyEnabledRequest changes only the lifecycles it names.
type GloballyEnabledRequest struct {
	Running *bool `json:"running,omitempty"`
	Staging *bool `json:"staging,omitempty"`
}

// EgressRule is one allowed egress tuple of a cell's local instance, as
// the controller compiles it from the security groups that apply to the
// instance's space: packets from SrcIP to an address in DestStart..DestEnd
// on Protocol ("tcp", "udp", "icmp" or "all"), for tcp and udp to a port in
// StartPort..EndPort, for icmp of ICMPType and ICMPCode (-1: any). Group and
// Rule (0-based) name the security group rule that allows it, for logs and
// explanations.
type EgressRule struct {
	SrcIP     netip.Addr `json:"src_ip"`
	Protocol  string     `json:"protocol"`
	DestStart netip.Addr `json:"dest_start"`
	DestEnd   netip.Addr `json:"dest_end"`
	StartPort uint16     `json:"start_port,omitempty"`
	EndPort   uint16     `json:"end_port,omitempty"`
	ICMPType  int        `json:"icmp_type,omitempty"`
	ICMPCode  int        `json:"icmp_code,omitempty"`
	Log       bool       `json:"log,omitempty"`
	Group     string     `json:"group"`
	Rule      int        `json:"rule"`
}

// EgressExplanation answers GET /trellis/v1/explain?source=APP&to=IP: may
// the app's instances open a connection to IP (protocol, port), and by
// which security group rule, or what is missing.
type EgressExplanation struct {
	Allowed bool `json:"allowed"`
	// Group and Rule (0-based) name the rule that allows it.
	Group  string `json:"group,omitempty"`
	Rule   int    `json:"rule"`
	Reason string `json:"reason"`
	// Groups are the security groups that apply to the app's space.
	Groups []string `json:"groups"`
}

package api

import (
	"net/netip"
	"time"
)

// Cells: the hosts running an agent, how they join, and the desired state
// the controller computes for each.

// JoinTokenRequest is the body of POST /trellis/v1/join-tokens (admin).
type JoinTokenRequest struct {
	TTLSeconds int `json:"ttl_seconds,omitempty"` // default 3600
}

// JoinToken is a one-time secret an agent joins with.
type JoinToken struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
}

// JoinRequest is the body of POST /trellis/v1/cells/join, authorized by a
// join token. The agent sends a CSR; its private key never leaves the cell.
type JoinRequest struct {
	Name       string `json:"name"`
	UnderlayIP string `json:"underlay_ip"`
	CSR        string `json:"csr"` // PEM
}

// JoinResponse carries the cell's identity: its record with the overlay
// lease, and a client certificate for mutual TLS from then on.
type JoinResponse struct {
	Cell        Cell   `json:"cell"`
	Certificate string `json:"certificate"` // PEM: leaf then CA
	CA          string `json:"ca"`          // PEM
}

// Cell is a host of the foundation. Its addresses travel as text
// ("10.0.0.2", "10.255.1.0/24").
type Cell struct {
	GUID       string       `json:"guid"`
	Name       string       `json:"name"`
	UnderlayIP netip.Addr   `json:"underlay_ip"`
	Subnet     netip.Prefix `json:"subnet"`
	LastSeen   time.Time    `json:"last_seen"`
	Healthy    bool         `json:"healthy"`
	// WireGuardKey is the base64 of the cell's registered WireGuard public
	// key, and WireGuardPort the UDP port its device listens on; both
	// empty until the cell registered a key.
	WireGuardKey  string `json:"wireguard_key,omitempty"`
	WireGuardPort int    `json:"wireguard_port,omitempty"`
	// In the list of cells (GET /trellis/v1/cells) only, never in a
	// desired state: WireGuardKeyGeneration is the generation of the
	// registered key (0: none) and KeyGeneration the one the controller
	// wants (CellState.KeyGeneration); a rotation is pending while it is
	// the greater.
	WireGuardKeyGeneration int64 `json:"wireguard_key_generation,omitempty"`
	KeyGeneration          int64 `json:"key_generation,omitempty"`
}

// Overlay is the foundation-wide overlay network.
type Overlay struct {
	CIDR         netip.Prefix `json:"cidr"`
	SubnetPrefix int          `json:"subnet_prefix"`
	VNI          int          `json:"vni"`
	Port         int          `json:"port"`
}

// CellState is what one cell's agent must make true, at a revision of the
// store. GET /trellis/v1/cell/state?after=N answers as soon as the revision
// exceeds N (long poll), or with the current state after the wait.
type CellState struct {
	Revision  int64             `json:"revision"`
	Cell      Cell              `json:"cell"`
	Overlay   Overlay           `json:"overlay"`
	Peers     []Cell            `json:"peers"`
	Instances []DesiredInstance `json:"instances"`

	// Enforce is false when an operator turned policy enforcement off for
	// the foundation (Cloud Foundry's disable_container_network_policy).
	Enforce bool `json:"enforce"`
	// Allows are the (source tag, local destination, protocol, ports)
	// tuples that policies allow to reach this cell's instances.
	Allows []Allow `json:"allows"`
	// Apps names every app with a tag, and Endpoints every attached
	// instance of the foundation: what a cell needs to mark its instances'
	// packets and to say who a logged packet came from and went to.
	Apps      []TaggedApp `json:"apps"`
	Endpoints []Endpoint  `json:"endpoints"`
	// Domains are the internal domains and Routes the internal routes: what
	// the cell's DNS server answers for, from its own copy.
	Domains []string     `json:"domains"`
	Routes  []RouteEntry `json:"routes"`
	// InstanceCA is the trust anchor of instance identities, and LocalApps
	// the apps with an instance on this cell: what the agent needs to
	// request, renew and serve instance certificates (port 61443).
	InstanceCA InstanceCA `json:"instance_ca"`
	LocalApps  []LocalApp `json:"local_apps"`
	// Egress are the egress tuples the security groups allow this cell's
	// attached instances (default deny; see EgressRule), in a stable order.
	Egress []EgressRule `json:"egress"`
	// Encryption is the foundation's encryption mode (EncryptionOff or
	// EncryptionWireGuard); Peers carry their WireGuard keys and ports.
	Encryption string `json:"encryption"`
	// KeyGeneration is the generation the controller wants this cell's
	// WireGuard key at: when it exceeds the generation of the key the
	// agent last registered, the agent makes a new key pair and registers
	// it (CellKey.Generation = KeyGeneration).
	KeyGeneration int64 `json:"key_generation"`
}

// RouteEntry is an internal route: Host.Domain leads to the apps.
type RouteEntry struct {
	Host     string   `json:"host"`
	Domain   string   `json:"domain"`
	AppGUIDs []string `json:"app_guids"`
}

// Allow is one allowed tuple at a destination instance: packets from an
// instance tagged SrcTag to DestIP on Protocol ("tcp" or "udp"), ports
// StartPort..EndPort inclusive (1 <= StartPort <= EndPort). The controller
// sends only valid allows, in a stable order.
type Allow struct {
	DestIP    netip.Addr `json:"dest_ip"`
	SrcTag    uint16     `json:"src_tag"`
	Protocol  string     `json:"protocol"`
	StartPort uint16     `json:"start_port"`
	EndPort   uint16     `json:"end_port"`
}

// TaggedApp is an app's identity on the wire.
type TaggedApp struct {
	GUID string `json:"guid"`
	Name string `json:"name"`
	Tag  uint16 `json:"tag"`
}

// Endpoint is an attached instance: who owns an overlay address.
type Endpoint struct {
	IP       netip.Addr `json:"ip"`
	Instance string     `json:"instance"`
	AppGUID  string     `json:"app_guid"`
	AppName  string     `json:"app_name"`
	Index    int        `json:"index"`
	CellGUID string     `json:"cell_guid"`
}

// DesiredInstance is an app instance the cell's agent should run.
type DesiredInstance struct {
	GUID      string            `json:"guid"`
	AppGUID   string            `json:"app_guid"`
	AppName   string            `json:"app_name"`
	SpaceGUID string            `json:"space_guid"`
	OrgGUID   string            `json:"org_guid"`
	Index     int               `json:"index"`
	Command   []string          `json:"command,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
}

// InstanceRegistration is the body of PUT /trellis/v1/cell/instances/{guid}:
// an instance's container is attached to the overlay on this cell.
type InstanceRegistration struct {
	AppGUID     string `json:"app_guid"`
	Index       int    `json:"index"`
	IP          string `json:"ip"`
	ContainerID string `json:"container_id"`
	// CSR (PEM), if set, asks for the instance's identity certificate in
	// the same call, as POST .../certificate would: the controller then
	// answers 201 with an InstanceCertificate instead of 204. A container
	// start waits for its certificate, and this saves it a round trip.
	CSR string `json:"csr,omitempty"`
}

// CertificateRefusedHeader is set on the 204 that answers a registration
// whose CSR the controller did not sign: the registration stands (the
// container is attached whether or not it has a certificate), the value
// says why the certificate was refused. A 204 without it is from a
// controller that does not sign at registration: ask POST .../certificate.
const CertificateRefusedHeader = "Trellis-Certificate-Refused"

// Instance is an app instance as the platform API lists it.
type Instance struct {
	GUID     string `json:"guid"`
	AppGUID  string `json:"app_guid"`
	Index    int    `json:"index"`
	Managed  bool   `json:"managed"`
	CellGUID string `json:"cell_guid,omitempty"`
	CellName string `json:"cell,omitempty"`
	IP       string `json:"ip,omitempty"`
	State    string `json:"state"`
	// UpdatedAt is the last change of the instance's state, cell or
	// address: for a running instance, when its cell registered it.
	UpdatedAt time.Time `json:"updated_at"`
}

// AppUpdate is the body of PATCH /v3/apps/{guid}: what the app runs.
type AppUpdate struct {
	Command  *[]string          `json:"command,omitempty"`
	Env      *map[string]string `json:"environment_variables,omitempty"`
	CellGUID *string            `json:"cell_guid,omitempty"`
}

// ScaleRequest is the body of POST /v3/apps/{guid}/processes/web/actions/scale.
type ScaleRequest struct {
	Instances int `json:"instances"`
}

package api

// The agent's unix-socket API, spoken by the CNI plugin on the same cell
// (and the launcher and benchmarks) through AgentClient. Base path /v1;
// JSON bodies; errors as {"error":"..."} with an HTTP status.
//
//	POST   /v1/containers              Allocate: reserve an address for a container (idempotent per container ID);
//	                                   the agent registers the instance, certifies it and updates the policy table meanwhile
//	POST   /v1/containers/{id}/commit  Commit: the plugin has wired it; wait for those steps and serve it on 61443
//	GET    /v1/containers/{id}         the record (CNI CHECK)
//	DELETE /v1/containers/{id}         release the address and deregister (idempotent: CNI DEL)
//	POST   /v1/gc                      release every container not in the list (CNI GC)
//	GET    /v1/status                  200 when the agent can serve ADDs (CNI STATUS), else 503, both with AgentStatus
//	GET    /metrics                    the agent's metrics (Prometheus text format)

// Identity is who a container is: the app instance it runs.
type Identity struct {
	AppGUID      string `json:"app_guid"`
	AppName      string `json:"app_name,omitempty"`
	SpaceGUID    string `json:"space_guid,omitempty"`
	OrgGUID      string `json:"org_guid,omitempty"`
	InstanceGUID string `json:"instance_guid"`
	Index        int    `json:"index"`
}

// AllocateRequest asks the agent for an address.
type AllocateRequest struct {
	ContainerID string   `json:"container_id"`
	NetNS       string   `json:"netns"`
	IfName      string   `json:"ifname"`
	Identity    Identity `json:"identity"`
}

// Allocation is the agent's answer: how to wire the container.
type Allocation struct {
	ContainerID string   `json:"container_id"`
	IP          string   `json:"ip"`      // the container's overlay address
	Subnet      string   `json:"subnet"`  // the cell's subnet, e.g. 10.255.3.0/24
	Gateway     string   `json:"gateway"` // 169.254.0.1
	MTU         int      `json:"mtu"`
	DNS         []string `json:"dns"`
	Committed   bool     `json:"committed"`
}

// CommitRequest reports the wiring done.
type CommitRequest struct {
	HostVeth string `json:"host_veth"`
}

// GCRequest lists the containers the runtime still has on this network.
type GCRequest struct {
	Valid []string `json:"valid_container_ids"`
}

// AgentStatus is the agent's health for CNI STATUS and `trellis status`.
type AgentStatus struct {
	Cell     string `json:"cell"`
	Subnet   string `json:"subnet"`
	Revision int64  `json:"revision"`
	Ready    bool   `json:"ready"`
	Reason   string `json:"reason,omitempty"`
	// Controller is the URL of the controller the agent talks to now, and
	// Failovers the times it moved to another because one did not answer.
	Controller string `json:"controller,omitempty"`
	Failovers  int64  `json:"failovers,omitempty"`
	// States counts the answers to the agent's polls of its desired
	// state: bytes read, whole states and deltas applied.
	States StateStats `json:"states"`
	// WireGuard is the engine of the cell's WireGuard device while the
	// foundation encrypts: "kernel" or "userspace"; empty when off.
	WireGuard string `json:"wireguard,omitempty"`
}

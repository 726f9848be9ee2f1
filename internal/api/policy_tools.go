package api

import "time"

// FlowEvent is one logged connection attempt, as cells report it
// (POST /trellis/v1/cell/flows) and the API lists it (GET /trellis/v1/flows).
type FlowEvent struct {
	ID          int64     `json:"id,omitempty"`
	Time        time.Time `json:"time"`
	Cell        string    `json:"cell,omitempty"`
	Verdict     string    `json:"verdict"` // allowed | denied
	Protocol    string    `json:"protocol"`
	SrcIP       string    `json:"src_ip"`
	SrcPort     int       `json:"src_port"`
	DstIP       string    `json:"dst_ip"`
	DstPort     int       `json:"dst_port"`
	SrcApp      string    `json:"src_app,omitempty"`      // GUID
	SrcAppName  string    `json:"src_app_name,omitempty"` // filled by the API
	SrcInstance string    `json:"src_instance,omitempty"`
	DstApp      string    `json:"dst_app,omitempty"`
	DstAppName  string    `json:"dst_app_name,omitempty"`
	DstInstance string    `json:"dst_instance,omitempty"`
	Reason      string    `json:"reason"`
}

// FlowEvents is the body of POST /trellis/v1/cell/flows.
type FlowEvents struct {
	Events []FlowEvent `json:"events"`
	// Suppressed counts attempts the cell's rate limit kept out of Events.
	Suppressed int64 `json:"suppressed,omitempty"`
}

// Explanation answers GET /trellis/v1/explain: would a connection from
// source to destination on protocol/port be allowed, and why.
type Explanation struct {
	Allowed     bool     `json:"allowed"`
	Reason      string   `json:"reason"`
	Policy      *Policy  `json:"policy,omitempty"` // the policy that allows it
	Enforcement bool     `json:"enforcement"`
	Others      []Policy `json:"other_policies,omitempty"` // other policies from source to destination
	// DestinationInstances is how many instances of the destination are
	// attached now (a policy takes effect for each as it starts).
	DestinationInstances int `json:"destination_instances"`
}

// Enforcement is the body of GET/PUT /trellis/v1/enforcement.
type Enforcement struct {
	Enabled bool `json:"enabled"`
}

package launcher

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
)

// FoundationStatus is a foundation as foundation.json records it, with
// whether its controller answers and each cell's subnet and health as its
// agent reports them: what `trellis status` shows, as a table or as JSON.
type FoundationStatus struct {
	*Foundation
	ControllerHealthy bool `json:"controller_healthy"`
	// ControllerStatus is each controller's URL and health, the first's
	// first.
	ControllerStatus []ControllerStatus `json:"controller_status"`
	// Cells are the foundation's cells, each with its status; they stand
	// for Foundation.Cells in the JSON.
	Cells []CellStatus `json:"cells"`
	// Encryption is the encryption between cells (api.EncryptionOff or
	// api.EncryptionWireGuard) as a controller answers; "" if none did.
	Encryption string `json:"encryption,omitempty"`
}

// ControllerStatus is one controller of a foundation and whether it
// answers its health check (which needs its database).
type ControllerStatus struct {
	URL     string `json:"url"`
	Healthy bool   `json:"healthy"`
}

// CellStatus is a cell of the foundation and its status from its agent.
type CellStatus struct {
	Cell
	Subnet  string `json:"subnet"`
	Healthy bool   `json:"healthy"`
	Reason  string `json:"reason,omitempty"` // why it is not healthy
	// WireGuardKey is whether the cell registered a WireGuard public key
	// with the controller, KeyGeneration the generation of that key and
	// WantedKeyGeneration the one the controller asks for (a rotation is
	// under way while it is the greater); all as the controller answers.
	WireGuardKey        bool  `json:"wireguard_key"`
	KeyGeneration       int64 `json:"key_generation,omitempty"`
	WantedKeyGeneration int64 `json:"wanted_key_generation,omitempty"`
	// Controller is the controller the agent talks to now, and Failovers
	// the times it moved to another (api.AgentStatus).
	Controller string `json:"controller,omitempty"`
	Failovers  int64  `json:"failovers,omitempty"`
	// WireGuard is the engine of the cell's WireGuard device ("kernel" or
	// "userspace"), empty while the foundation does not encrypt.
	WireGuard string `json:"wireguard,omitempty"`
}

// KeyStatus says whether the cell has a WireGuard key and at which
// generation: "none", "gen 2", "gen 2, rotating to 3"; "" when the
// controller did not say.
func (c CellStatus) KeyStatus() string {
	switch {
	case c.WantedKeyGeneration == 0:
		return ""
	case !c.WireGuardKey:
		return "none"
	case c.WantedKeyGeneration > c.KeyGeneration:
		return fmt.Sprintf("gen %d, rotating to %d", c.KeyGeneration, c.WantedKeyGeneration)
	}
	return fmt.Sprintf("gen %d", c.KeyGeneration)
}

// Status reads the foundation in stateDir and asks its controller and
// each cell's agent how they are. A controller or agent that does not
// answer is reported unhealthy, an agent with the reason; the error is for
// a foundation that cannot be read (os.ErrNotExist when there is none).
func Status(ctx context.Context, stateDir string) (FoundationStatus, error) {
	f, err := Load(stateDir)
	if err != nil {
		return FoundationStatus{}, err
	}
	s := FoundationStatus{Foundation: f}
	for _, u := range f.URLs() {
		ok := controllerHealthy(ctx, f.Admin, u)
		s.ControllerStatus = append(s.ControllerStatus, ControllerStatus{URL: u, Healthy: ok})
		s.ControllerHealthy = s.ControllerHealthy || ok
	}
	for _, c := range f.Cells {
		cs := CellStatus{Cell: c}
		st, err := AgentStatus(ctx, c.Socket)
		if err != nil {
			cs.Reason = "agent unreachable: " + err.Error()
		} else {
			cs.Subnet, cs.Healthy, cs.Reason = st.Subnet, st.Ready, st.Reason
			cs.Controller, cs.Failovers = st.Controller, st.Failovers
			cs.WireGuard = st.WireGuard
		}
		s.Cells = append(s.Cells, cs)
	}
	s.controllerView(ctx)
	return s, nil
}

// controllerView adds what a controller says: the encryption mode, and
// each cell's WireGuard key. A controller that does not answer leaves them
// out.
func (s *FoundationStatus) controllerView(ctx context.Context) {
	if !s.ControllerHealthy {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cfg, err := api.LoadClientConfig(s.Admin)
	if err != nil {
		return
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		return
	}
	if s.Encryption, err = c.Encryption(ctx); err != nil {
		s.Encryption = ""
		return
	}
	cells, err := c.Cells(ctx)
	if err != nil {
		return
	}
	for i := range s.Cells {
		for _, k := range cells {
			if k.Name == s.Cells[i].Name {
				s.Cells[i].WireGuardKey = k.WireGuardKey != ""
				s.Cells[i].KeyGeneration, s.Cells[i].WantedKeyGeneration = k.WireGuardKeyGeneration, k.KeyGeneration
			}
		}
	}
}

// controllerHealthy reports whether the controller at url answers its
// health check, asked with the admin config file admin.
func controllerHealthy(ctx context.Context, admin, url string) bool {
	cfg, err := api.LoadClientConfig(admin)
	if err != nil {
		return false
	}
	cfg.APIURL, cfg.APIURLs = url, nil
	c, err := api.NewClient(cfg)
	if err != nil {
		return false
	}
	_, err = c.Health(ctx)
	return err == nil
}

// MarshalJSON writes s with, after its cells, "cell_status": the cells'
// status again with only their name, namespace and underlay IP, which
// readers of earlier versions of `trellis status --json` use.
func (s FoundationStatus) MarshalJSON() ([]byte, error) {
	type cellStatus struct {
		Name       string `json:"name"`
		NetNS      string `json:"netns"`
		UnderlayIP string `json:"underlay_ip"`
		Subnet     string `json:"subnet"`
		Healthy    bool   `json:"healthy"`
		Reason     string `json:"reason,omitempty"`
	}
	type plain FoundationStatus // without this method
	out := struct {
		plain
		CellStatus []cellStatus `json:"cell_status"`
	}{plain: plain(s)}
	for _, c := range s.Cells {
		out.CellStatus = append(out.CellStatus, cellStatus{c.Name, c.NetNS, c.UnderlayIP, c.Subnet, c.Healthy, c.Reason})
	}
	return json.Marshal(out)
}

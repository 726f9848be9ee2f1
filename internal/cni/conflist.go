package cni

import "encoding/json"

// ConfList returns the network configuration list that a CNI runtime on a
// cell needs to attach containers to trellis: the given network name, and
// one plugin of type PluginType that talks to the agent at agentSocket and
// asks the runtime for the "metadata" capability (the app identity, as
// Cloud Foundry's garden-external-networker passes it). cell is
// informative. The result, with a trailing newline, is ready to be written
// to /etc/cni/net.d/NAME.conflist.
//
// The list says "cniVersion": "1.0.0" and "cniVersions": ["1.0.0", "1.1.0"]:
// a runtime whose libcni knows "cniVersions" (libcni 1.2 and later) uses
// 1.1.0, with STATUS and GC; older ones, such as Debian 12's podman 4.3,
// read only "cniVersion" and cannot parse a 1.1.0 result, so they get 1.0.0.
func ConfList(name, cell, agentSocket string) []byte {
	type plugin struct {
		Type         string          `json:"type"`
		AgentSocket  string          `json:"agent_socket"`
		Cell         string          `json:"cell,omitempty"`
		Capabilities map[string]bool `json:"capabilities"`
	}
	list := struct {
		CNIVersion  string   `json:"cniVersion"`
		CNIVersions []string `json:"cniVersions"`
		Name        string   `json:"name"`
		Plugins     []plugin `json:"plugins"`
	}{
		CNIVersion:  "1.0.0",
		CNIVersions: []string{"1.0.0", "1.1.0"},
		Name:        name,
		Plugins: []plugin{{
			Type:         PluginType,
			AgentSocket:  agentSocket,
			Cell:         cell,
			Capabilities: map[string]bool{"metadata": true},
		}},
	}
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		panic(err) // cannot happen: only strings, slices and a map
	}
	return append(b, '\n')
}

package cni

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// standardKeys are the top-level keys of a plugin configuration that the CNI
// specification (or libcni, when it builds the configuration for a plugin)
// defines. Keys that start with "cni.dev/" are reserved for the
// specification and accepted as well.
var standardKeys = []string{
	"args", "capabilities", "cniVersion", "cniVersions", "disableCheck", "disableGC",
	"dns", "ipam", "name", "prevResult", "runtimeConfig", "type",
}

// trellisKeys are the keys trellis itself reads.
var trellisKeys = []string{"agent_socket", "cell"}

// netConf is a parsed, validated network configuration.
type netConf struct {
	types.PluginConf

	AgentSocket string // path of the agent's unix socket
	Cell        string // informative: the cell the configuration was made for

	// metadata is runtimeConfig.metadata (capability "metadata").
	metadata map[string]any
	// hasValidAttachments tells an absent cni.dev/valid-attachments from an
	// empty one: only the latter means "nothing is valid any more".
	hasValidAttachments bool
}

// parseConf reads and checks the network configuration on stdin. Errors are
// *types.Error with the specification's codes.
func parseConf(data []byte) (*netConf, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure,
			fmt.Sprintf("network configuration is not a JSON object: %v", err), "")
	}
	var unknown []string
	for k := range raw {
		if !slices.Contains(standardKeys, k) && !slices.Contains(trellisKeys, k) &&
			!strings.HasPrefix(k, "cni.dev/") {
			unknown = append(unknown, strconv.Quote(k))
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		noun := "key"
		if len(unknown) > 1 {
			noun = "keys"
		}
		return nil, invalidConf("unknown %s %s (trellis reads %s and the standard CNI keys)",
			noun, strings.Join(unknown, ", "), strings.Join(trellisKeys, ", "))
	}

	c := &netConf{}
	if err := json.Unmarshal(data, &c.PluginConf); err != nil {
		return nil, invalidConf("%v", err)
	}
	var own struct {
		AgentSocket   *string `json:"agent_socket"`
		Cell          string  `json:"cell"`
		RuntimeConfig struct {
			Metadata map[string]any `json:"metadata"`
		} `json:"runtimeConfig"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&own); err != nil {
		return nil, invalidConf("%v", err)
	}
	if own.AgentSocket == nil || *own.AgentSocket == "" {
		return nil, invalidConf(`"agent_socket" is required: the path of the trellis agent's unix socket on this cell (print a complete configuration with "trellis cni-config")`)
	}
	if !filepath.IsAbs(*own.AgentSocket) {
		return nil, invalidConf(`"agent_socket" %q is not an absolute path`, *own.AgentSocket)
	}
	c.AgentSocket, c.Cell, c.metadata = *own.AgentSocket, own.Cell, own.RuntimeConfig.Metadata
	if ipam, ok := raw["ipam"]; ok && !isEmptyJSON(ipam) {
		return nil, invalidConf(`"ipam" is not supported: the trellis agent assigns container addresses itself; remove the "ipam" section`)
	}
	if _, ok := raw["cni.dev/valid-attachments"]; ok {
		c.hasValidAttachments = true
	} else if legacy, ok := raw["cni.dev/attachments"]; ok {
		// libcni also sends the key under the name an early version of the
		// specification used.
		c.hasValidAttachments = true
		if err := json.Unmarshal(legacy, &c.ValidAttachments); err != nil {
			return nil, invalidConf(`"cni.dev/attachments": %v`, err)
		}
	}
	if err := version.ParsePrevResult(&c.PluginConf); err != nil {
		return nil, invalidConf("%v", err)
	}
	return c, nil
}

func isEmptyJSON(m json.RawMessage) bool {
	switch string(bytes.Join(bytes.Fields(m), nil)) {
	case "null", "{}":
		return true
	}
	return false
}

func invalidConf(format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig,
		"invalid trellis network configuration: "+fmt.Sprintf(format, args...), "")
}

func invalidArgs(format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf(format, args...), "")
}

// Keys of CNI_ARGS that carry a container's identity.
const (
	argAppGUID      = "TRELLIS_APP_GUID"
	argSpaceGUID    = "TRELLIS_SPACE_GUID"
	argOrgGUID      = "TRELLIS_ORG_GUID"
	argAppName      = "TRELLIS_APP_NAME"
	argInstanceGUID = "TRELLIS_INSTANCE_GUID"
	argIndex        = "TRELLIS_INDEX"
)

var identityArgs = []string{argAppGUID, argSpaceGUID, argOrgGUID, argAppName, argInstanceGUID, argIndex}

// parseArgs parses CNI_ARGS ("K=V;K2=V2") into the trellis keys. Other keys
// are an error unless IgnoreUnknown is true, as with types.LoadArgs.
func parseArgs(s string) (map[string]string, error) {
	out := map[string]string{}
	if s == "" {
		return out, nil
	}
	var unknown []string
	ignoreUnknown := false
	for pair := range strings.SplitSeq(s, ";") {
		k, v, ok := strings.Cut(pair, "=")
		if !ok || k == "" {
			return nil, invalidArgs("CNI_ARGS: %q is not KEY=VALUE", pair)
		}
		switch {
		case k == "IgnoreUnknown":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, invalidArgs("CNI_ARGS: IgnoreUnknown=%q is not a boolean", v)
			}
			ignoreUnknown = b
		case slices.Contains(identityArgs, k):
			out[k] = v
		default:
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 && !ignoreUnknown {
		return nil, invalidArgs("CNI_ARGS: unknown keys %s (trellis reads %s; add IgnoreUnknown=1 to pass others)",
			strings.Join(unknown, ", "), strings.Join(identityArgs, ", "))
	}
	return out, nil
}

// identity finds who the container is: from runtimeConfig.metadata (keys
// app_id or policy_group_id, space_id, org_id, app_name, instance_guid,
// index — the Cloud Foundry garden-external-networker names) and from
// CNI_ARGS (TRELLIS_*). A value given both ways must agree. The instance
// GUID defaults to the container ID, the index to 0.
func identity(c *netConf, containerID, cniArgs string) (instanceIdentity, error) {
	args, err := parseArgs(cniArgs)
	if err != nil {
		return instanceIdentity{}, err
	}
	var id instanceIdentity
	var index string
	fields := []struct {
		dst      *string
		metaKeys []string
		arg      string
	}{
		{&id.AppGUID, []string{"app_id", "policy_group_id"}, argAppGUID},
		{&id.SpaceGUID, []string{"space_id"}, argSpaceGUID},
		{&id.OrgGUID, []string{"org_id"}, argOrgGUID},
		{&id.AppName, []string{"app_name"}, argAppName},
		{&id.InstanceGUID, []string{"instance_guid"}, argInstanceGUID},
		{&index, []string{"index"}, argIndex},
	}
	for _, f := range fields {
		var fromMeta, metaKey string
		for _, k := range f.metaKeys {
			v, ok := c.metadata[k]
			if !ok {
				continue
			}
			s, err := metaString(v)
			if err != nil {
				return instanceIdentity{}, invalidConf("runtimeConfig.metadata.%s: %v", k, err)
			}
			if s != "" {
				fromMeta, metaKey = s, k
				break
			}
		}
		fromArg := args[f.arg]
		if fromMeta != "" && fromArg != "" && fromMeta != fromArg {
			return instanceIdentity{}, invalidArgs("runtimeConfig.metadata.%s is %q but CNI_ARGS %s is %q: pass one, or the same value",
				metaKey, fromMeta, f.arg, fromArg)
		}
		*f.dst = cmp.Or(fromArg, fromMeta)
	}
	if id.AppGUID == "" {
		return instanceIdentity{}, invalidArgs("no app GUID for container %s: pass it as runtimeConfig.metadata.app_id "+
			`(capability "metadata", as Cloud Foundry's garden-external-networker does) or in CNI_ARGS as %s=<guid>`,
			containerID, argAppGUID)
	}
	if id.InstanceGUID == "" {
		id.InstanceGUID = containerID
	}
	if index != "" {
		n, err := strconv.Atoi(index)
		if err != nil || n < 0 {
			return instanceIdentity{}, invalidArgs("instance index %q is not a non-negative integer", index)
		}
		id.Index = n
	}
	return id, nil
}

// metaString accepts the metadata values runtimes send: strings (Garden's
// properties are all strings) and integral numbers.
func metaString(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case json.Number:
		if f, err := v.Float64(); err != nil || f != math.Trunc(f) {
			return "", fmt.Errorf("%s is not an integer", v)
		}
		return v.String(), nil
	case nil:
		return "", nil
	}
	return "", fmt.Errorf("want a string, got %T", v)
}

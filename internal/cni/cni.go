// Package cni is trellis's CNI plugin: it wires a container into the cell's
// overlay, the way Cloud Foundry's silk-cni does, by asking the trellis
// agent on the same cell for an address over the agent's unix socket and
// building the veth pair with package dataplane.
//
// Main is the plugin's entry point: the trellis-cni binary (cmd/trellis-cni)
// calls it, and so does the trellis binary when a runtime runs it with
// CNI_COMMAND set (installed as "trellis-cni" where no trellis-cni binary
// was built: PluginBinary). The package links only the agent-socket client
// and the container wiring, so that the plugin starts fast. It runs in the
// namespace the runtime starts it in, which is the cell's (the host's)
// namespace.
//
// ADD allocates, wires, then commits; when wiring or committing fails it
// undoes both, so a failed ADD leaves nothing behind. DEL is idempotent.
// Errors are CNI error results whose messages say what to fix.
package cni

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/trellis-c2c/trellis/internal/dataplane"
)

// PluginType is the plugin's "type" in a network configuration, and so the
// file name the plugin binary must have in the runtime's CNI_PATH.
const PluginType = "trellis-cni"

// SupportedVersions are the CNI specification versions the plugin speaks.
// STATUS and GC need 1.1.0.
var SupportedVersions = []string{"0.4.0", "1.0.0", "1.1.0"}

// commandTimeout bounds one plugin invocation's conversation with the agent.
const commandTimeout = 30 * time.Second

// Main runs the plugin for the command in CNI_COMMAND (ADD, DEL, CHECK,
// STATUS, GC, VERSION), reading the network configuration on stdin and the
// CNI_* environment, and returns the process exit code: 0 on success, 1
// after printing a CNI error result on stdout. Warnings go to stderr.
func Main() int {
	p := &plugin{log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	e := skel.PluginMainFuncsWithError(skel.CNIFuncs{
		Add:    p.add,
		Del:    p.del,
		Check:  p.check,
		Status: p.status,
		GC:     p.gc,
	}, version.PluginSupports(SupportedVersions...), "trellis-cni: the trellis container networking CNI plugin")
	if e != nil {
		if err := e.Print(); err != nil {
			fmt.Fprintf(os.Stderr, "trellis-cni: write error result: %v\n", err)
		}
		return 1
	}
	return 0
}

// plugin holds what every command needs.
type plugin struct {
	log *slog.Logger
}

func (p *plugin) add(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	id, err := identity(conf, args.ContainerID, args.Args)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	agent := agentClient{conf.AgentSocket}

	alloc, err := agent.allocate(ctx, allocateRequest{
		ContainerID: args.ContainerID,
		NetNS:       args.Netns,
		IfName:      args.IfName,
		Identity:    id,
	})
	if err != nil {
		return agentFailure(err, "allocate an address for container %s", args.ContainerID)
	}
	if alloc.Committed {
		// Another ADD already wired it: undoing here would cut off a working
		// container.
		return types.NewError(types.ErrInternal, fmt.Sprintf(
			"container %s is already attached to network %q with address %s: run DEL before adding it again",
			args.ContainerID, conf.Name, alloc.IP), "")
	}
	c, err := containerFor(alloc, args)
	if err != nil {
		return p.undo(ctx, agent, args.ContainerID, nil, internalError("container %s: %v", args.ContainerID, err))
	}
	// AddContainer removes what it made when it fails, and never touches a
	// veth it did not make, so only the allocation is left to undo.
	wired, err := dataplane.AddContainer(c)
	if err != nil {
		return p.undo(ctx, agent, args.ContainerID, nil, internalError("wire container %s: %v", args.ContainerID, err))
	}
	if err := agent.commit(ctx, args.ContainerID, commitRequest{HostVeth: wired.HostVeth}); err != nil {
		return p.undo(ctx, agent, args.ContainerID, &c, agentFailure(err, "commit container %s", args.ContainerID))
	}
	return types.PrintResult(addResult(conf, args, c, alloc, wired), conf.CNIVersion)
}

// undo removes the wiring (when wired is not nil) and releases the
// allocation after a failed ADD, and returns cause with what could not be
// undone in its details.
func (p *plugin) undo(ctx context.Context, agent agentClient, containerID string, wired *dataplane.Container, cause *types.Error) *types.Error {
	var left []string
	if wired != nil {
		if err := dataplane.DelContainer(*wired); err != nil {
			p.log.Warn("undo ADD: remove wiring", "container", containerID, "err", err)
			left = append(left, fmt.Sprintf("remove wiring: %v", err))
		}
	}
	if err := agent.release(ctx, containerID); err != nil && !isNotFound(err) {
		p.log.Warn("undo ADD: release address", "container", containerID, "err", err)
		left = append(left, fmt.Sprintf("release the address (it stays reserved until the agent's garbage collection): %v", err))
	}
	if len(left) > 0 {
		if cause.Details != "" {
			left = append([]string{cause.Details}, left...)
		}
		cause.Details = strings.Join(left, "; ")
	}
	return cause
}

// containerFor turns the agent's allocation into what dataplane wires.
func containerFor(a allocation, args *skel.CmdArgs) (dataplane.Container, error) {
	ip, err := netip.ParseAddr(a.IP)
	if err != nil || !ip.Is4() {
		return dataplane.Container{}, fmt.Errorf("the trellis agent allocated %q, not an IPv4 address", a.IP)
	}
	if a.Gateway != "" && a.Gateway != dataplane.HostGateway.String() {
		return dataplane.Container{}, fmt.Errorf("the trellis agent wants gateway %s but this plugin wires %s: are agent and plugin the same trellis version?",
			a.Gateway, dataplane.HostGateway)
	}
	for _, s := range a.DNS {
		if _, err := netip.ParseAddr(s); err != nil {
			return dataplane.Container{}, fmt.Errorf("the trellis agent gave DNS server %q, not an IP address", s)
		}
	}
	return dataplane.Container{
		NetNS:  args.Netns,
		IfName: args.IfName,
		IP:     ip,
		MTU:    a.MTU,
	}, nil
}

// addResult is the ADD result: the host veth and the container interface,
// the container's /32 with the shared gateway, a default route and DNS.
func addResult(conf *netConf, args *skel.CmdArgs, c dataplane.Container, a allocation, w dataplane.Result) *current.Result {
	gw := net.IP(dataplane.HostGateway.AsSlice())
	var nameservers []string
	for _, s := range append(slices.Clone(a.DNS), conf.DNS.Nameservers...) {
		if !slices.Contains(nameservers, s) {
			nameservers = append(nameservers, s)
		}
	}
	return &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: w.HostVeth, Mac: w.HostMAC.String(), Mtu: c.MTU},
			{Name: c.IfName, Mac: w.ContainerMAC.String(), Mtu: c.MTU, Sandbox: args.Netns},
		},
		IPs: []*current.IPConfig{{
			Interface: current.Int(1),
			Address:   net.IPNet{IP: c.IP.AsSlice(), Mask: net.CIDRMask(32, 32)},
			Gateway:   gw,
		}},
		Routes: []*types.Route{{
			Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			GW:  gw,
		}},
		DNS: types.DNS{
			Nameservers: nameservers,
			Domain:      conf.DNS.Domain,
			Search:      conf.DNS.Search,
			Options:     conf.DNS.Options,
		},
	}
}

func (p *plugin) del(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	agent := agentClient{conf.AgentSocket}

	rec, err := agent.container(ctx, args.ContainerID)
	switch {
	case isNotFound(err):
		// Nothing is reserved. If wiring is left from an ADD that crashed,
		// it goes with the container's namespace; its address may already
		// belong to another container, so a veth named for it is not ours
		// to delete.
		return nil
	case errors.Is(err, errAgentUnreachable):
		// Remove what can be removed without the agent.
		ip, ok := sandboxIP(conf, args)
		if !ok {
			return types.NewError(types.ErrTryAgainLater, err.Error(), fmt.Sprintf(
				"container %s: without the agent (or a prevResult) its address is unknown, so its wiring stays until a DEL succeeds", args.ContainerID))
		}
		if derr := dataplane.DelContainer(dataplane.Container{NetNS: args.Netns, IfName: args.IfName, IP: ip}); derr != nil {
			return types.NewError(types.ErrTryAgainLater, err.Error(), fmt.Sprintf(
				"container %s: remove wiring: %v", args.ContainerID, derr))
		}
		return types.NewError(types.ErrTryAgainLater, err.Error(), fmt.Sprintf(
			"container %s: removed its wiring (%s), but its address stays reserved until the agent releases it (CNI DEL again, or the agent's garbage collection)",
			args.ContainerID, ip))
	case err != nil:
		return agentFailure(err, "look up container %s", args.ContainerID)
	}
	ip, err := netip.ParseAddr(rec.IP)
	if err != nil {
		return internalError("container %s: the trellis agent has address %q, not an IP address", args.ContainerID, rec.IP)
	}
	// Wiring first: an address released while its veth still exists could
	// be given to a container that then cannot be wired.
	if err := dataplane.DelContainer(dataplane.Container{NetNS: args.Netns, IfName: args.IfName, IP: ip}); err != nil {
		return internalError("remove wiring of container %s: %v", args.ContainerID, err)
	}
	if err := agent.release(ctx, args.ContainerID); err != nil && !isNotFound(err) {
		return agentFailure(err, "release the address of container %s", args.ContainerID)
	}
	return nil
}

// sandboxIP is the container's IPv4 address in prevResult: the one on the
// interface CNI_IFNAME inside a sandbox.
func sandboxIP(conf *netConf, args *skel.CmdArgs) (netip.Addr, bool) {
	if conf.PrevResult == nil {
		return netip.Addr{}, false
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return netip.Addr{}, false
	}
	for _, ipc := range prev.IPs {
		if ipc.Interface == nil || *ipc.Interface < 0 || *ipc.Interface >= len(prev.Interfaces) {
			continue
		}
		iface := prev.Interfaces[*ipc.Interface]
		if iface.Name != args.IfName || iface.Sandbox == "" {
			continue
		}
		if ip, ok := netip.AddrFromSlice(ipc.Address.IP); ok && ip.Unmap().Is4() {
			return ip.Unmap(), true
		}
	}
	return netip.Addr{}, false
}

func (p *plugin) check(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return invalidConf("CHECK needs the result of ADD in \"prevResult\"")
	}
	want, ok := sandboxIP(conf, args)
	if !ok {
		return invalidConf("prevResult has no IPv4 address on interface %s in a sandbox", args.IfName)
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	rec, err := agentClient{conf.AgentSocket}.container(ctx, args.ContainerID)
	if isNotFound(err) {
		return types.NewError(types.ErrUnknownContainer, fmt.Sprintf(
			"the trellis agent has no address for container %s: it was deleted or garbage-collected", args.ContainerID), "")
	}
	if err != nil {
		return agentFailure(err, "look up container %s", args.ContainerID)
	}
	if rec.IP != want.String() {
		return internalError("container %s has address %s in prevResult, but %s at the trellis agent", args.ContainerID, want, rec.IP)
	}
	if !rec.Committed {
		return internalError("container %s (%s) is not committed at the trellis agent: its ADD did not finish", args.ContainerID, want)
	}
	c := dataplane.Container{NetNS: args.Netns, IfName: args.IfName, IP: want, MTU: rec.MTU}
	if err := dataplane.CheckContainer(c); err != nil {
		return internalError("%v", err)
	}
	return nil
}

func (p *plugin) status(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	st, err := agentClient{conf.AgentSocket}.status(ctx)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, err.Error(), "")
	}
	if !st.Ready {
		reason := st.Reason
		if reason == "" {
			reason = "no reason given"
		}
		return types.NewError(types.ErrPluginNotAvailable,
			fmt.Sprintf("the trellis agent of cell %q is not ready: %s", st.Cell, reason), "")
	}
	return nil
}

func (p *plugin) gc(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	if !conf.hasValidAttachments {
		// Without the list nothing can be known to be stale; releasing
		// everything would cut off every container.
		p.log.Warn("GC without cni.dev/valid-attachments: nothing released", "network", conf.Name)
		return nil
	}
	valid := []string{}
	for _, a := range conf.ValidAttachments {
		if a.ContainerID != "" && !slices.Contains(valid, a.ContainerID) {
			valid = append(valid, a.ContainerID)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	if err := (agentClient{conf.AgentSocket}).gc(ctx, valid); err != nil {
		return agentFailure(err, "garbage-collect network %q", conf.Name)
	}
	return nil
}

func internalError(format string, args ...any) *types.Error {
	return types.NewError(types.ErrInternal, fmt.Sprintf(format, args...), "")
}

// agentFailure is the CNI error for a failed agent request: "try again
// later" (11) when the agent cannot be reached or is busy, else internal
// (999) with the agent's message.
func agentFailure(err error, format string, args ...any) *types.Error {
	if errors.Is(err, errAgentUnreachable) {
		return types.NewError(types.ErrTryAgainLater, err.Error(), fmt.Sprintf(format, args...))
	}
	var ae *agentError
	if errors.As(err, &ae) && ae.status == 503 {
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf(format, args...)+": "+err.Error(), "")
	}
	return types.NewError(types.ErrInternal, fmt.Sprintf(format, args...)+": "+err.Error(), "")
}

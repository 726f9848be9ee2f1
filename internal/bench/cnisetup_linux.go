package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/uuid"
	"golang.org/x/sys/unix"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/cni"
	"github.com/trellis-c2c/trellis/internal/launcher"
	"github.com/trellis-c2c/trellis/internal/netns"
)

// cniSetup times n sequential container setups the way a runtime does
// them on a local foundation (one cell, default deny): CNI ADD through
// libcni, the trellis-cni plugin and the cell's agent (address, wiring,
// registration with the controller, the policy table, the instance's
// certificate), until the first UDP datagram from the new container to a
// responder container on the same cell is echoed back — which takes a
// policy from the new container's app to the responder's, so the policy
// table must know the container too. Every container stays attached until
// the end, so the last adds run with n-1 others present. It also times the
// start of the plugin the foundation installed (pluginStart). The samples
// go into s.
func (r *run) cniSetup(exe string, p overlayParams, s *setupResult) error {
	n := p.adds
	dir, err := os.MkdirTemp("", "trbench-cni-")
	if err != nil {
		return err
	}
	r.onCleanup(func() error { return os.RemoveAll(dir) })
	r.logf("container setup through CNI: starting a local foundation with 1 cell")
	state := filepath.Join(dir, "foundation")
	f, err := launcher.Up(r.ctx, launcher.Options{StateDir: state, Cells: 1, Exe: exe})
	// Cleanup runs last registered first: the foundation goes before the
	// containers' namespaces.
	r.onCleanup(func() error { return launcher.Down(context.WithoutCancel(r.ctx), state, true, io.Discard) })
	if err != nil {
		return fmt.Errorf("local foundation: %w", err)
	}
	if exe == "" { // the launcher checked that it is not a test binary
		if exe, err = os.Executable(); err != nil {
			return err
		}
	}
	if s.start, err = r.pluginStart(f.CNIPlugin, exe, cni.PluginBinary(exe) == exe, p.starts); err != nil {
		return fmt.Errorf("plugin start: %w", err)
	}
	cfg, err := api.LoadClientConfig(f.Admin)
	if err != nil {
		return err
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		return err
	}
	spaces, err := c.Spaces(r.ctx, api.SpaceFilter{Names: []string{"default"}})
	if err != nil || len(spaces) == 0 {
		return fmt.Errorf("default space: %v", err)
	}
	src, err := c.CreateApp(r.ctx, spaces[0].GUID, "setup-source")
	if err != nil {
		return err
	}
	dst, err := c.CreateApp(r.ctx, spaces[0].GUID, "setup-echo")
	if err != nil {
		return err
	}
	err = c.CreatePolicies(r.ctx, []api.Policy{{Source: api.Source{ID: src.GUID},
		Destination: api.Destination{ID: dst.GUID, Protocol: "udp", Ports: api.Ports{Start: echoPort, End: echoPort}}}})
	if err != nil {
		return err
	}

	cell := f.Cells[0]
	list, err := libcni.ConfListFromFile(cell.CNIConfList)
	if err != nil {
		return fmt.Errorf("the cell's CNI config: %w", err)
	}
	cache := filepath.Join(dir, "cni-cache")
	plugin := libcni.NewCNIConfigWithCacheDir([]string{filepath.Dir(f.CNIPlugin)}, cache, nil)
	add := func(path, app string, index int) (netip.Addr, error) {
		rt := &libcni.RuntimeConf{ContainerID: filepath.Base(path), NetNS: path, IfName: "eth0", Args: [][2]string{
			{"TRELLIS_APP_GUID", app}, {"TRELLIS_INSTANCE_GUID", uuid.NewString()}, {"TRELLIS_INDEX", strconv.Itoa(index)}}}
		// As a runtime on the cell would: from the cell's namespace.
		var res types.Result
		err := netns.Do(netns.Path(cell.NetNS), func() (err error) {
			res, err = plugin.AddNetworkList(r.ctx, list, rt)
			return err
		})
		if err != nil {
			return netip.Addr{}, err
		}
		cur, err := types100.NewResultFromResult(res)
		if err != nil || len(cur.IPs) == 0 {
			return netip.Addr{}, fmt.Errorf("CNI ADD result without an address: %v", err)
		}
		ip, _ := netip.AddrFromSlice(cur.IPs[0].Address.IP.To4())
		return ip, nil
	}

	echoNS, err := r.namespace("cni-echo")
	if err != nil {
		return err
	}
	echoIP, err := add(echoNS, dst.GUID, 0)
	if err != nil {
		return fmt.Errorf("attach the responder: %w", err)
	}
	echoAt := netip.AddrPortFrom(echoIP, echoPort)
	if err := r.echo(echoNS, echoAt); err != nil {
		return err
	}
	r.logf("container setup through CNI: %d sequential adds, each timed until the first echo", n)
	cpu := cpuOf(f.Controller.PID, cell.Agent.PID)
	for i := range n {
		if err := r.ctx.Err(); err != nil {
			return err
		}
		d, re, err := r.timedAdd(fmt.Sprintf("cni-%d", i), echoAt, func(path string) error {
			_, err := add(path, src.GUID, i)
			return err
		})
		if err != nil {
			return fmt.Errorf("CNI add %d: %w", i+1, err)
		}
		s.cni = append(s.cni, ms(d))
		if re > 0 {
			s.cniResent++
		}
	}
	s.cpu = cpuOf(f.Controller.PID, cell.Agent.PID).minus(cpu)
	var err2 error
	if s.steps, s.stepKeys, err2 = attachedSteps(cell.Agent.Log, r.prefix+"cni-"); err2 != nil {
		r.logf("container setup through CNI: no per-step times: %v", err2)
	}
	r.logf("container setup through CNI: %d adds at once", p.burst)
	cpu = cpuOf(f.Controller.PID, cell.Agent.PID)
	if err := r.cniBurst(p.burst, echoAt, func(path string, i int) error {
		_, err := add(path, src.GUID, n+i)
		return err
	}, s); err != nil {
		return err
	}
	s.burstCPU = cpuOf(f.Controller.PID, cell.Agent.PID).minus(cpu)
	s.burstSteps, _, _ = attachedSteps(cell.Agent.Log, r.prefix+"cnib-")
	return nil
}

// cpuTimes is the CPU time (user and system) used so far by the
// controller, the agent, and the bench's reaped children (the plugin
// runs, as libcni waits for each).
type cpuTimes struct{ controller, agent, plugins time.Duration }

func cpuOf(controller, agent int) cpuTimes {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_CHILDREN, &ru)
	return cpuTimes{controller: procCPU(controller), agent: procCPU(agent),
		plugins: time.Duration(ru.Utime.Nano() + ru.Stime.Nano())}
}

func (c cpuTimes) minus(o cpuTimes) cpuTimes {
	return cpuTimes{c.controller - o.controller, c.agent - o.agent, c.plugins - o.plugins}
}

// per describes c divided among n adds.
func (c cpuTimes) per(n int) string {
	per := func(d time.Duration) float64 { return ms(d) / float64(max(n, 1)) }
	return fmt.Sprintf("agent %.1f ms, controller %.1f ms, plugin %.1f ms", per(c.agent), per(c.controller), per(c.plugins))
}

// procCPU is the CPU time pid has used (utime and stime of
// /proc/PID/stat, in clock ticks of 10 ms); 0 when unreadable.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// cniBurst adds n containers at once through add, as a cell starting up
// does: their namespaces and probe sockets are made first, then every ADD
// starts at the same moment and each is timed until its first echo from
// to. Every one must attach.
func (r *run) cniBurst(n int, to netip.AddrPort, add func(path string, i int) error, s *setupResult) error {
	paths := make([]string, n)
	conns := make([]*net.UDPConn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i := range n {
		var err error
		if paths[i], conns[i], err = r.probeNamespace(fmt.Sprintf("cnib-%d", i)); err != nil {
			return err
		}
	}
	times := make([]float64, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			begin := time.Now()
			if err := add(paths[i], i); err != nil {
				errs[i] = fmt.Errorf("CNI add %d of %d at once: %w", i+1, n, err)
				return
			}
			if _, err := probe(conns[i], to); err != nil {
				errs[i] = fmt.Errorf("first packet of add %d of %d at once: %w", i+1, n, err)
				return
			}
			times[i] = ms(time.Since(begin))
		})
	}
	begin := time.Now()
	close(start)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	s.burst, s.burstTook = times, ms(time.Since(begin))
	return nil
}

// attachedSteps reads the agent's msg=attached log lines of the containers
// whose IDs start with prefix and returns the times they give (key=value
// pairs whose value is a duration), in ms by key, with the keys in the
// order of the first line.
func attachedSteps(logPath, prefix string) (map[string][]float64, []string, error) {
	b, err := os.ReadFile(logPath)
	if err != nil {
		return nil, nil, err
	}
	steps := map[string][]float64{}
	var keys []string
	for line := range strings.Lines(string(b)) {
		_, id, ok := strings.Cut(line, " container="+prefix)
		if !strings.Contains(line, " msg=attached ") || !ok || id == "" || id[0] < '0' || id[0] > '9' {
			continue
		}
		for _, f := range strings.Fields(line) {
			k, v, ok := strings.Cut(f, "=")
			if !ok || k == "time" {
				continue
			}
			d, err := time.ParseDuration(v)
			if err != nil {
				continue
			}
			if _, seen := steps[k]; !seen {
				keys = append(keys, k)
			}
			steps[k] = append(steps[k], ms(d))
		}
	}
	if len(keys) == 0 {
		return nil, nil, fmt.Errorf("no msg=attached lines in %s", logPath)
	}
	return steps, keys, nil
}

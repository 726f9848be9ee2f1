package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/trellis-c2c/trellis/internal/agent"
	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/launcher"
)

// changeCost is what one kind of change cost the control plane, per
// change: CPU of the controller and of all agents together (less what
// they spend idle over the same time), and the bytes of the state answers
// the agents read, per cell, against the bytes whole states would have
// been (the states of the cells the change woke).
type changeCost struct {
	changes                int
	ctrlCPU, agentCPU      float64 // ms per change
	bytesPerCell, fullPer  float64 // per change per cell of the foundation
	deltas, fulls, refused int64   // answers the agents read
	woken                  float64 // state answers the agents read, per change: the cells it woke
}

// costProbe measures changeCost on a foundation.
type costProbe struct {
	f    *launcher.Foundation
	idle time.Duration // the idle window measured before the changes
	gap  time.Duration // between changes: more than the feed's 50 ms coalescing
}

// cpuNanos is the CPU time (user + system) process pid has used, in
// nanoseconds: its process CPU clock (clock_gettime on the clock id
// clock_getcpuclockid would give, CPUCLOCK_SCHED of the whole thread
// group), which the scheduler keeps to the nanosecond and which counts the
// threads that have exited too. /proc/PID/stat's utime and stime, which
// the bench read before, are in 10 ms ticks: a change costing the
// controller a few milliseconds vanished in their rounding and in the idle
// rate subtracted (a negative 1.4 ms per policy add, once).
func cpuNanos(pid int) (int64, error) {
	const cpuClockSched = 2 // CPUCLOCK_SCHED; no CPUCLOCK_PERTHREAD bit: the whole process
	var ts unix.Timespec
	if err := unix.ClockGettime(int32(^pid<<3|cpuClockSched), &ts); err != nil {
		return 0, fmt.Errorf("CPU clock of process %d: %w", pid, err)
	}
	return ts.Nano(), nil
}

// cpu returns the controller's and the agents' CPU time, in nanoseconds.
func (p *costProbe) cpu() (ctrl, agents int64, err error) {
	if ctrl, err = cpuNanos(p.f.Controller.PID); err != nil {
		return 0, 0, err
	}
	for _, c := range p.f.Cells {
		t, err := cpuNanos(c.Agent.PID)
		if err != nil {
			return 0, 0, err
		}
		agents += t
	}
	return ctrl, agents, nil
}

// statuses reads every agent's status.
func (p *costProbe) statuses(ctx context.Context) ([]api.AgentStatus, error) {
	out := make([]api.AgentStatus, len(p.f.Cells))
	for i, c := range p.f.Cells {
		st, err := launcher.AgentStatus(ctx, c.Socket)
		if err != nil {
			return nil, err
		}
		out[i] = st
	}
	return out, nil
}

// measure makes n changes, change(k) for k < n, gap apart, each of which
// should wake the cells affected(k), and returns their cost: CPU over the
// changes until every affected cell applied a newer state and no cell's
// revision moved for 500 ms, less the idle CPU of as long measured just
// before.
func (p *costProbe) measure(ctx context.Context, n int, change func(k int) error, affected func(k int) []int) (changeCost, error) {
	c0, a0, err := p.cpu()
	if err != nil {
		return changeCost{}, err
	}
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return changeCost{}, ctx.Err()
	case <-time.After(p.idle):
	}
	c1, a1, err := p.cpu()
	if err != nil {
		return changeCost{}, err
	}
	idle := time.Since(t0)
	ctrlIdle, agentIdle := float64(c1-c0)/idle.Seconds(), float64(a1-a0)/idle.Seconds()

	before, err := p.statuses(ctx)
	if err != nil {
		return changeCost{}, err
	}
	c1, a1, err = p.cpu()
	if err != nil {
		return changeCost{}, err
	}
	t1 := time.Now()
	// Every affected cell must pass its revision before the changes, and
	// the last change's cells their revisions just before it (statuses
	// are not read between the other changes: serving them costs the
	// agents CPU).
	need := map[int]int64{} // cell → a revision its agent must pass
	for k := range n {
		if k == n-1 {
			sts, err := p.statuses(ctx)
			if err != nil {
				return changeCost{}, err
			}
			for _, i := range affected(k) {
				need[i] = sts[i].Revision
			}
		} else {
			for _, i := range affected(k) {
				need[i] = before[i].Revision
			}
		}
		if err := change(k); err != nil {
			return changeCost{}, err
		}
		time.Sleep(p.gap)
	}
	var after []api.AgentStatus
	last, lastMove := []int64(nil), time.Now()
	for {
		if time.Since(t1) > 120*time.Second {
			return changeCost{}, fmt.Errorf("%d changes not applied on their cells within 120s: revisions %v, to pass (cell: revision) %v, last moved %v ago",
				n, last, need, time.Since(lastMove).Round(time.Millisecond))
		}
		sts, err := p.statuses(ctx)
		if err != nil {
			return changeCost{}, err
		}
		revs := make([]int64, len(sts))
		for i, st := range sts {
			revs[i] = st.Revision
		}
		if fmt.Sprint(revs) != fmt.Sprint(last) {
			last, lastMove = revs, time.Now()
		}
		done := time.Since(lastMove) >= 500*time.Millisecond
		for i, r := range need {
			done = done && revs[i] > r
		}
		if done {
			after = sts
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	c2, a2, err := p.cpu()
	if err != nil {
		return changeCost{}, err
	}
	took := time.Since(t1).Seconds()
	out := changeCost{changes: n,
		ctrlCPU:  (float64(c2-c1) - ctrlIdle*took) / 1e6 / float64(n),
		agentCPU: (float64(a2-a1) - agentIdle*took) / 1e6 / float64(n)}
	var bytes int64
	for i := range after {
		s0, s1 := before[i].States, after[i].States
		bytes += s1.Bytes - s0.Bytes
		out.deltas += s1.Deltas - s0.Deltas
		out.fulls += s1.Fulls - s0.Fulls
		out.refused += s1.Refused - s0.Refused
	}
	cells := float64(len(p.f.Cells))
	out.bytesPerCell = float64(bytes) / float64(n) / cells
	// Each answer is a woken poll (a held poll that ends empty after 30 s
	// counts too: rare in the window).
	out.woken = float64(out.deltas+out.fulls) / float64(n)
	// Whole states: each change would have sent each cell it woke its
	// whole state (the size of the state each agent holds now, as JSON).
	var full float64
	for k := range n {
		for _, i := range affected(k) {
			full += float64(p.stateSize(i))
		}
	}
	out.fullPer = full / float64(n) / cells
	return out, nil
}

// stateSize is the size of the JSON of the desired state cell i's agent
// holds (from the copy it saves: its snapshot and the changes journaled
// after it).
func (p *costProbe) stateSize(i int) int {
	st, ok := agent.SavedState(p.f.Cells[i].StateDir)
	if !ok {
		return 0
	}
	b, _ := json.Marshal(st)
	return len(b)
}

// costFigures turns a changeCost into the report's figures, under id.
func costFigures(id, what string, c changeCost) []Figure {
	return []Figure{
		newFigure(id+"-bytes-per-cell", what+": state bytes read per change per cell (deltas)", "bytes", c.bytesPerCell, c.fullPer,
			"the whole states of the cells it woke, per cell", nil),
		newFigure(id+"-controller-cpu", what+": controller CPU per change", "ms", c.ctrlCPU, 0, "", nil),
		newFigure(id+"-agent-cpu", what+": CPU of all agents per change", "ms", c.agentCPU, 0, "", nil),
	}
}

func (c changeCost) note(what string) string {
	perAnswer := 0.0
	if c.woken > 0 {
		perAnswer = c.agentCPU / c.woken
	}
	return fmt.Sprintf("%s: %d changes; state answers per change (cells woken; fewer than the cells a change affects when an agent still applying one state gets the next two as one) %.2f; the agents read %d deltas, %d whole states, %d refused deltas; %.0f bytes per change per cell (whole states would be %.0f); CPU per change: controller %.2f ms, all agents %.2f ms (%.2f ms per state answer applied)",
		what, c.changes, c.woken, c.deltas, c.fulls, c.refused, c.bytesPerCell, c.fullPer, c.ctrlCPU, c.agentCPU, perAnswer)
}

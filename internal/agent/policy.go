package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/dataplane"
	"github.com/trellis-c2c/trellis/internal/flowlog"
)

// NFLOG groups the cell's policy rules log to. Each cell is its own
// network namespace, so every cell can use the same numbers.
const (
	denyLogGroup  = 41
	allowLogGroup = 42
	// egressDenyLogGroup receives refused egress (security groups).
	egressDenyLogGroup = 43
	// egressAllowLogGroup receives egress accepted by rules with log: true.
	egressAllowLogGroup = 44
	logRate             = 100 // per second per group
)

// enforcer keeps the cell's dataplane in step with the desired state and
// the containers attached here, and cuts the flows of revoked pairs.
type enforcer struct {
	dp         *dataplane.Dataplane
	log        *slog.Logger
	containers *containers
	// state returns the newest desired state, to name flow events by.
	state func() api.CellState
	// report sends flow events to the controller.
	report func(context.Context, api.FlowEvents) error

	mu     sync.Mutex
	last   *api.CellState // the desired state applied last; nil before the first
	warned bool           // logged that enforcement is off
	index  stateIndex     // under mu

	applySeconds prometheus.Histogram
	applied      prometheus.Gauge
	desired      prometheus.Gauge
	flows        *prometheus.CounterVec
	suppressed   prometheus.Counter
	// events are the flow events on their way to the controller: logged
	// packets, and handshakes the TLS proxy refused.
	events chan api.FlowEvent
}

// newEnforcer returns the enforcer of the cell whose dataplane is dp, with
// its metrics registered in reg.
func newEnforcer(dp *dataplane.Dataplane, log *slog.Logger, cs *containers, state func() api.CellState,
	report func(context.Context, api.FlowEvents) error, reg prometheus.Registerer) *enforcer {
	e := &enforcer{dp: dp, log: log, containers: cs, state: state, report: report, events: make(chan api.FlowEvent, 4096),
		applySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "trellis_agent_policy_apply_seconds",
			Help: "Time to apply the cell's policy to the kernel.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		applied: prometheus.NewGauge(prometheus.GaugeOpts{Name: "trellis_agent_applied_revision",
			Help: "Store revision of the desired state last applied."}),
		desired: prometheus.NewGauge(prometheus.GaugeOpts{Name: "trellis_agent_desired_revision",
			Help: "Store revision of the newest desired state received; minus applied, the revision lag."}),
		flows: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_agent_flows_total",
			Help: "Logged connection attempts by verdict and app pair (rate-limited at 100/s per verdict)."},
			[]string{"verdict", "source_app", "destination_app"}),
		suppressed: prometheus.NewCounter(prometheus.CounterOpts{Name: "trellis_agent_flow_log_suppressed_total",
			Help: "Denied attempts the log rate limit kept out of the flow log."}),
	}
	reg.MustRegister(e.applySeconds, e.applied, e.desired, e.flows, e.suppressed)
	return e
}

// stateIndex keeps what policy and egress derive from the long lists of
// a state (every endpoint of the foundation, the tagged apps), by the
// lists' identity: a delta keeps the lists it does not change as the same
// slices, so a change of the allows or the egress rules does not walk
// every endpoint again. It keeps the lists it indexed alive, so that a
// slice's address names one list. A state's lists are never changed in
// place.
type stateIndex struct {
	endpoints []api.Endpoint
	cell      string
	owner     map[netip.Addr]string // the local records agreed was made with
	agreed    map[netip.Addr]bool

	apps []api.TaggedApp
	tags map[string]uint16
}

// locals returns the cell's attached containers (those not being
// deleted) and which instance holds each address, from our records.
func (e *enforcer) locals() ([]record, map[netip.Addr]string) {
	recs := e.containers.list()
	owner := make(map[netip.Addr]string, len(recs))
	live := recs[:0]
	for _, rec := range recs {
		if rec.Deleting {
			continue
		}
		owner[rec.IP] = rec.Identity.InstanceGUID
		live = append(live, rec)
	}
	return live, owner
}

// agreedIn returns the local addresses whose instance the controller (in
// st's endpoints) and this agent (owner) agree on.
func (x *stateIndex) agreedIn(st api.CellState, owner map[netip.Addr]string) map[netip.Addr]bool {
	if x.agreed != nil && sameSlice(x.endpoints, st.Endpoints) && x.cell == st.Cell.GUID && maps.Equal(x.owner, owner) {
		return x.agreed
	}
	agreed := map[netip.Addr]bool{}
	for _, ep := range st.Endpoints {
		if ep.CellGUID == st.Cell.GUID && owner[ep.IP] == ep.Instance {
			agreed[ep.IP] = true
		}
	}
	x.endpoints, x.cell, x.owner, x.agreed = st.Endpoints, st.Cell.GUID, owner, agreed
	return agreed
}

// tagsIn returns the tag of every app st names.
func (x *stateIndex) tagsIn(st api.CellState) map[string]uint16 {
	if x.tags != nil && sameSlice(x.apps, st.Apps) {
		return x.tags
	}
	tags := make(map[string]uint16, len(st.Apps))
	for _, app := range st.Apps {
		tags[app.GUID] = app.Tag
	}
	x.apps, x.tags = st.Apps, tags
	return tags
}

// policy computes the cell's dataplane policy from st and the attached
// containers. An allow applies to an address only while the controller and
// this agent agree on which instance holds it, so an address reused by
// another app never inherits the old app's allowances.
func (e *enforcer) policy(st api.CellState) dataplane.Policy {
	recs, owner := e.locals()
	return e.policyFor(st, recs, e.index.agreedIn(st, owner))
}

func (e *enforcer) policyFor(st api.CellState, recs []record, agreed map[netip.Addr]bool) dataplane.Policy {
	p := dataplane.Policy{Enforce: st.Enforce, DenyLogGroup: denyLogGroup, AllowLogGroup: allowLogGroup, LogRate: logRate}
	tags := e.index.tagsIn(st)
	p.Locals = make([]dataplane.Local, 0, len(recs))
	for _, rec := range recs {
		p.Locals = append(p.Locals, dataplane.Local{IP: rec.IP, Tag: tags[rec.Identity.AppGUID], HostVeth: rec.HostVeth})
	}
	// The allows come valid and sorted (policy.Compile): a stable order
	// lets the dataplane compile only what changed.
	p.Allows = make([]dataplane.Allow, 0, len(st.Allows))
	for _, al := range st.Allows {
		if agreed[al.DestIP] {
			p.Allows = append(p.Allows, dataplane.Allow(al))
		}
	}
	return p
}

// egressFor computes the cell's egress state from st: the rules of the
// attached instances that the controller and this agent agree on (agreed,
// as for allows), default deny for the rest; nil while st names no
// overlay.
func egressFor(st api.CellState, agreed map[netip.Addr]bool) *dataplane.Egress {
	if !st.Overlay.CIDR.IsValid() {
		return nil
	}
	eg := &dataplane.Egress{Overlay: st.Overlay.CIDR, DenyLogGroup: egressDenyLogGroup, AllowLogGroup: egressAllowLogGroup, LogRate: logRate}
	if st.Cell.UnderlayIP.IsValid() {
		eg.Guarded = []netip.Addr{st.Cell.UnderlayIP}
	}
	for _, r := range st.Egress {
		if agreed[r.SrcIP] {
			eg.Rules = append(eg.Rules, dataplane.EgressRule{SrcIP: r.SrcIP, Protocol: r.Protocol, DestStart: r.DestStart, DestEnd: r.DestEnd,
				StartPort: r.StartPort, EndPort: r.EndPort, ICMPType: r.ICMPType, ICMPCode: r.ICMPCode, Log: r.Log})
		}
	}
	return eg
}

// apply makes the dataplane hold st: overlay, if not nil, then the policy
// for st and the attached containers; then it cuts established flows that
// the policy no longer allows. A state of the revision already applied is a
// resync: the kernel's policy table is read back in full and repaired if
// anything differs.
func (e *enforcer) apply(ctx context.Context, st api.CellState, overlay *dataplane.Overlay) error {
	return e.set(ctx, st, overlay, true)
}

// attached re-applies st after a container was attached or detached here:
// as apply, but it trusts the table's fingerprint instead of reading the
// table back (the resync's check, whose cost grows with the table and, on a
// busy machine, with every netlink round trip: it was most of a CNI ADD's
// policy step).
func (e *enforcer) attached(ctx context.Context, st api.CellState) error {
	return e.set(ctx, st, nil, false)
}

func (e *enforcer) set(ctx context.Context, st api.CellState, overlay *dataplane.Overlay, resync bool) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	// A re-apply for a container attached here may race with a newer
	// desired state applied meanwhile: never go back to an older one.
	if e.last != nil && st.Revision < e.last.Revision {
		st = *e.last
	}
	e.desired.Set(float64(st.Revision))
	// One read of the records for both: the policy and the egress rules
	// agree on the same instances.
	recs, owner := e.locals()
	agreed := e.index.agreedIn(st, owner)
	p := e.policyFor(st, recs, agreed)
	if !p.Enforce && !e.warned {
		e.log.Warn("NETWORK POLICY ENFORCEMENT IS OFF for this foundation: every instance can reach every other")
		e.warned = true
	} else if p.Enforce {
		e.warned = false
	}
	ch, err := e.dp.Set(ctx, dataplane.Desired{Revision: st.Revision, Overlay: overlay, Policy: &p, Egress: egressFor(st, agreed),
		Verify: resync && e.last != nil && st.Revision == e.last.Revision})
	if err != nil {
		if failedPart(err) == "policy" {
			err = fmt.Errorf("apply policy: %w", err)
		}
		return err
	}
	e.last = &st
	if ch.Policy {
		e.applySeconds.Observe(ch.PolicyTook.Seconds())
	}
	e.applied.Set(float64(st.Revision))
	if ch.EgressCut > 0 {
		e.log.Info("cut established egress connections the security groups no longer allow", "flows", ch.EgressCut, "revision", st.Revision)
	}
	if ch.Revoked {
		// Established connections that the policy no longer allows are cut,
		// as a user revoking access expects.
		if n, err := e.dp.CutDisallowed(); err != nil {
			e.log.Warn("cut revoked flows", "err", err)
		} else {
			e.log.Info("cut established flows the policy no longer allows", "flows", n, "revision", st.Revision)
		}
	}
	return nil
}

// failedPart names the part of the desired state that err failed to
// apply: "overlay" or "policy".
func failedPart(err error) string {
	if se, ok := errors.AsType[*dataplane.SetError](err); ok {
		return se.Part
	}
	return "policy"
}

// watchFlows reads the policy rules' log and reports each logged attempt,
// named and explained, to the controller in batches.
func (e *enforcer) watchFlows(ctx context.Context) {
	go e.reportFlows(ctx, e.events)
	for ctx.Err() == nil {
		err := flowlog.Listen(ctx, e.dp.NetNS(), []uint16{denyLogGroup, allowLogGroup, egressDenyLogGroup, egressAllowLogGroup}, func(pk flowlog.Packet) {
			e.record(e.event(pk))
		})
		if err != nil && ctx.Err() == nil {
			e.log.Warn("read the flow log: retrying", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// record counts ev and queues it for the controller.
func (e *enforcer) record(ev api.FlowEvent) {
	e.flows.WithLabelValues(ev.Verdict, ev.SrcAppName, ev.DstAppName).Inc()
	select {
	case e.events <- ev:
	default: // the controller is slow: drop rather than block the reader
	}
}

// event names the endpoints of a logged packet from the desired state, and
// says why it was denied or allowed.
func (e *enforcer) event(pk flowlog.Packet) api.FlowEvent {
	st := e.state()
	ev := api.FlowEvent{Time: pk.Time.UTC(), Protocol: pk.Protocol, SrcIP: pk.SrcIP.String(), SrcPort: int(pk.SrcPort),
		DstIP: pk.DstIP.String(), DstPort: int(pk.DstPort), Verdict: "denied"}
	if pk.Group == allowLogGroup || pk.Group == egressAllowLogGroup {
		ev.Verdict = "allowed"
	}
	for _, ep := range st.Endpoints {
		switch ep.IP {
		case pk.SrcIP:
			ev.SrcApp, ev.SrcAppName, ev.SrcInstance = ep.AppGUID, ep.AppName, ep.Instance
		case pk.DstIP:
			ev.DstApp, ev.DstAppName, ev.DstInstance = ep.AppGUID, ep.AppName, ep.Instance
		}
	}
	tag := uint16(pk.Mark & 0xffff)
	var tagApp string
	for _, app := range st.Apps {
		if app.Tag == tag && tag != 0 {
			tagApp = app.Name
			if ev.SrcApp == "" {
				ev.SrcApp, ev.SrcAppName = app.GUID, app.Name
			}
		}
	}
	src, dst := nameOr(ev.SrcAppName, ev.SrcIP), nameOr(ev.DstAppName, ev.DstIP)
	switch {
	case pk.Group == egressDenyLogGroup:
		ev.Reason = egressReason(pk.Protocol, pk.DstIP, pk.DstPort, src)
	case pk.Group == egressAllowLogGroup:
		ev.Reason = egressAllowedReason(st.Egress, pk)
	case ev.Verdict == "allowed":
		ev.Reason = fmt.Sprintf("allowed: a policy from %s to %s covers %s/%d", nameOr(tagApp, src), dst, ev.Protocol, ev.DstPort)
	case tag == 0 && ev.SrcAppName != "":
		ev.Reason = fmt.Sprintf("no policy from %s to %s on %s/%d (%s is in no policy, so its packets carry no identity)", src, dst, ev.Protocol, ev.DstPort, src)
	case tag == 0:
		ev.Reason = fmt.Sprintf("no identity: %s is not an instance of this foundation (no policy can allow it)", ev.SrcIP)
	default:
		ev.Reason = fmt.Sprintf("no policy from %s to %s on %s/%d", nameOr(tagApp, src), dst, ev.Protocol, ev.DstPort)
	}
	return ev
}

func nameOr(name, ip string) string {
	if name != "" {
		return name
	}
	return ip
}

// totalsEvery is how often the flow reporter reads the policy table's
// totals for the denied packets the log left out: a netlink round trip in
// the cell's namespace, which on a one-CPU cell delays the agent's other
// work (the TLS proxy's requests among it) while it runs.
const totalsEvery = 5 * time.Second

// reportFlows sends events to the controller every half second, and the
// count of denied packets not logged every totalsEvery.
func (e *enforcer) reportFlows(ctx context.Context, events <-chan api.FlowEvent) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	totals := time.NewTicker(totalsEvery)
	defer totals.Stop()
	var batch []api.FlowEvent
	var lastDenied, lastLogged uint64
	var suppressed int64 // read, not yet reported
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-events:
			if len(batch) < 2000 {
				batch = append(batch, ev)
			}
			continue
		case <-t.C:
		case <-totals.C:
			if c, err := e.dp.Totals(); err == nil {
				if c.Denied >= lastDenied && c.DeniedLogged >= lastLogged {
					n := int64((c.Denied - lastDenied) - (c.DeniedLogged - lastLogged))
					e.suppressed.Add(float64(max(n, 0)))
					suppressed += max(n, 0)
				}
				lastDenied, lastLogged = c.Denied, c.DeniedLogged
			}
		}
		if len(batch) == 0 && suppressed == 0 {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := e.report(rctx, api.FlowEvents{Events: batch, Suppressed: suppressed})
		cancel()
		if err != nil {
			e.log.Debug("report flows: will retry", "err", err, "events", len(batch))
			continue // keep the batch (bounded) and the count for the next tick
		}
		batch, suppressed = batch[:0], 0
	}
}

// egressReason says why egress was refused, as the flow log shows it:
// "egress: no security group allows tcp to 203.0.113.10:5432 for app backend".
func egressReason(proto string, dst netip.Addr, port uint16, app string) string {
	to := dst.String()
	if port != 0 {
		to = netip.AddrPortFrom(dst, port).String()
	}
	return fmt.Sprintf("egress: no security group allows %s to %s for app %s", proto, to, app)
}

// egressAllowedReason names the logged security group rule that allowed
// the egress packet pk.
func egressAllowedReason(rules []api.EgressRule, pk flowlog.Packet) string {
	for _, r := range rules {
		if !r.Log || r.SrcIP != pk.SrcIP || pk.DstIP.Less(r.DestStart) || r.DestEnd.Less(pk.DstIP) {
			continue
		}
		if r.Protocol == "all" || r.Protocol == pk.Protocol && (r.Protocol == "icmp" || r.StartPort <= pk.DstPort && pk.DstPort <= r.EndPort) {
			return fmt.Sprintf("egress allowed: rule %d of security group %s covers %s to %s", r.Rule, r.Group, pk.Protocol, pk.DstIP)
		}
	}
	return fmt.Sprintf("egress allowed: a security group covers %s to %s", pk.Protocol, pk.DstIP)
}

package dataplane

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trellis-c2c/trellis/internal/wireguard"
)

// selfNetNS is the process's own namespace, used when a path is "".
const selfNetNS = "/proc/self/ns/net"

// Dataplane is one cell's dataplane: the overlay and the policy table in
// the network namespace that plays the cell. It remembers what it applied
// there, so that Set can apply a change as a difference and find the
// connections a change revokes. It is safe for concurrent use; a cell
// should have one.
type Dataplane struct {
	ns  string
	log *slog.Logger

	mu sync.Mutex // held by Set and the teardowns
	// trusted is the plan the policy table holds as far as this value
	// knows; it is trusted only while the table's fingerprint still names
	// it.
	trusted  *policyPlan
	compiler planCache
	// last is the plan the last successful Set applied (nil: none since
	// New or TeardownPolicy), which revocations are found against.
	last *policyPlan
	// strict is set once conntrack was made strict in the namespace.
	strict bool
	// updates and replaces count how Set applied policy changes: as
	// differences of set elements, or by replacing the table. For tests.
	updates, replaces int
	// egress is the egress plan last applied (nil: none since New).
	egress *egressPlan
	// wg is the cell's WireGuard device while encryption is on (nil: off,
	// or not yet adopted since New).
	wg    wireguard.Engine
	wgNow atomic.Value // *wireguard.Engine: wg, for WireGuard without the lock
	// engines make and remove WireGuard devices (see UseWireGuard).
	engines wireguard.Engines
	// guardSet and guardPort are the VXLAN guard last applied (see
	// setVXLANGuard): the VXLAN port it guards, -1 for none.
	guardSet  bool
	guardPort int
	// nft is the nftables connection Set applies the policy and egress
	// tables through, kept open between calls (nil: none open; see
	// tablesConn).
	nft *nftConn
}

// New returns the dataplane of the cell whose network namespace is at
// nsPath ("" is the process's own). It touches nothing until Set is
// called. log receives what Set did, at debug level, and the connections
// it cut.
func New(nsPath string, log *slog.Logger) *Dataplane {
	if nsPath == "" {
		nsPath = selfNetNS
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Dataplane{ns: nsPath, log: log}
}

// NetNS returns the path of the cell's network namespace.
func (d *Dataplane) NetNS() string { return d.ns }

// Close releases what the Dataplane keeps open between calls (its
// nftables connection). The kernel's tables, links and routes stay: an
// agent that stops leaves its cell's network as it was, for the next one
// to take over. The Dataplane can be used again after Close.
func (d *Dataplane) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if c := d.nft; c != nil {
		d.nft = nil
		c.CloseLasting()
	}
}

// Desired is the state Set makes the cell's kernel hold. A part left nil
// is left as it is. Later parts of a cell's dataplane (egress, encryption)
// are more fields.
type Desired struct {
	// Revision is the store revision the state was computed from; Set
	// only logs it.
	Revision int64
	// Overlay is the cell's place in the overlay.
	Overlay *Overlay
	// Policy is what the cell enforces.
	Policy *Policy
	// Egress is what the cell's instances may reach outside the overlay.
	Egress *Egress
	// Verify makes Set read the policy table back in full and repair
	// whatever differs from Policy, instead of trusting the fingerprint the
	// table holds: the periodic resync's check for changes made behind
	// trellis's back. Its cost grows with the number of elements.
	Verify bool
}

// Overlay is the cell's place in the overlay: the cell and its peers.
type Overlay struct {
	Cell  Cell
	Peers []Peer
}

// Changes is what Set did.
type Changes struct {
	// OverlayOps is how many changes the overlay needed; 0 when the
	// kernel already matched (or the overlay was left alone).
	OverlayOps int
	// Policy reports whether the policy table changed, and PolicyTook how
	// long Set took to apply the policy.
	Policy     bool
	PolicyTook time.Duration
	// Revoked reports that the policy may take away access that
	// established connections were given: an allow went, enforcement was
	// turned on, or this is the first policy enforced since New. The
	// caller cuts those connections with CutDisallowed.
	Revoked bool
	// Egress reports whether the egress table changed, and EgressCut how
	// many established egress connections the change cut (those it no
	// longer allows; Set cuts them itself).
	Egress    bool
	EgressCut int
}

// SetError is Set's error: the part of Desired ("overlay" or "policy")
// that failed to apply. Set stops at the first part that fails.
type SetError struct {
	Part string
	Err  error
}

func (e *SetError) Error() string { return e.Err.Error() }

// Unwrap returns the cause.
func (e *SetError) Unwrap() error { return e.Err }

// Set makes the cell's kernel hold want: the overlay first, then the
// policy. Each part is diffed against what the kernel and this value
// hold, and an unchanged part writes nothing.
//
// The overlay is converged by reading the kernel's state and applying only
// the operations that differ, so a Set repairs whatever was changed since.
// The policy table is replaced or updated in one netlink batch, which the
// kernel applies atomically (see Policy and Verify). The established
// connections that a new policy no longer allows live on (conntrack lets
// them pass) until CutDisallowed, which Changes.Revoked calls for.
func (d *Dataplane) Set(ctx context.Context, want Desired) (Changes, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ch Changes
	if ov := want.Overlay; ov != nil {
		start := time.Now()
		ops, err := d.setOverlay(ctx, ov.Cell, ov.Peers)
		ch.OverlayOps = len(ops)
		if err != nil {
			return ch, &SetError{"overlay", err}
		}
		d.log.Debug("overlay applied", "revision", want.Revision, "peers", len(ov.Peers), "took", time.Since(start))
	}
	if p := want.Policy; p != nil {
		if err := d.setPolicy(ctx, *p, want.Verify, want.Revision, &ch); err != nil {
			return ch, &SetError{"policy", err}
		}
	}
	if e := want.Egress; e != nil {
		if err := d.setEgress(*e, want.Revision, &ch); err != nil {
			return ch, &SetError{"egress", err}
		}
	}
	return ch, nil
}

// setEgress is Set's egress part: it replaces the egress table when the
// plan differs from the last one applied, then cuts the established
// connections the new plan no longer allows.
func (d *Dataplane) setEgress(e Egress, rev int64, ch *Changes) error {
	plan, err := compileEgress(e)
	if err != nil {
		return err
	}
	if d.egress != nil && d.egress.sum == plan.sum {
		return nil
	}
	if !d.strict {
		if err := d.makeConntrackStrict(); err != nil {
			return err
		}
		d.strict = true
	}
	start := time.Now()
	if err := d.applyEgress(plan); err != nil {
		return fmt.Errorf("set egress in %s: %w", d.ns, err)
	}
	ch.Egress = true
	d.egress = plan
	n, err := d.cutEgress(plan)
	ch.EgressCut = n
	if err != nil {
		return err
	}
	d.log.Debug("egress applied", "revision", rev, "rules", len(e.Rules), "cut", n, "took", time.Since(start))
	return nil
}

// setPolicy is Set's policy part.
func (d *Dataplane) setPolicy(ctx context.Context, p Policy, verify bool, rev int64, ch *Changes) error {
	if !d.strict {
		// Conntrack must not pick up a connection in the middle: after a
		// revoked connection's entry is cut, the next packet from the
		// instance's side would otherwise make a new "established" entry
		// that lets the peer's packets in as replies.
		if err := d.makeConntrackStrict(); err != nil {
			return err
		}
		d.strict = true
	}
	start := time.Now()
	plan, changed, err := d.applyPolicy(ctx, p, verify)
	if err != nil {
		return err
	}
	ch.Policy, ch.PolicyTook = changed, time.Since(start)
	if changed {
		d.log.Debug("policy applied", "revision", rev, "locals", len(p.Locals), "allows", len(p.Allows), "took", ch.PolicyTook)
	}
	last := d.last
	d.last = plan
	ch.Revoked = plan.enforce && (last == nil || !last.enforce || revokesFrom(last, plan))
	return nil
}

// CutDisallowed deletes the conntrack entries of established connections
// to local instances that the policy Set last applied does not allow:
// connections the trellis table accepted whose source tag, destination,
// protocol and port it has no allow for now. Connections the table did not
// accept (from the cell itself, or from before the table existed) are left
// alone, and so is everything when the policy does not enforce. It returns
// how many it deleted.
func (d *Dataplane) CutDisallowed() (int, error) {
	d.mu.Lock()
	plan := d.last
	d.mu.Unlock()
	if plan == nil || !plan.enforce {
		return 0, nil
	}
	return d.cutDisallowed(plan)
}

//go:build !linux

package dataplane

import (
	"context"
	"errors"
)

// The kernel side of a Dataplane needs Linux.

type nftConn struct{}

func (c *nftConn) CloseLasting() error { return nil }

func (d *Dataplane) setOverlay(ctx context.Context, c Cell, peers []Peer) ([]op, error) {
	return nil, errors.ErrUnsupported
}

// TeardownOverlay needs Linux.
func (d *Dataplane) TeardownOverlay() error { return errors.ErrUnsupported }

func (d *Dataplane) applyPolicy(ctx context.Context, p Policy, verify bool) (*policyPlan, bool, error) {
	return nil, false, errors.ErrUnsupported
}

func (d *Dataplane) makeConntrackStrict() error { return errors.ErrUnsupported }

func (d *Dataplane) cutDisallowed(plan *policyPlan) (int, error) { return 0, errors.ErrUnsupported }

// TeardownPolicy needs Linux.
func (d *Dataplane) TeardownPolicy() error { return errors.ErrUnsupported }

// Counters needs Linux.
func (d *Dataplane) Counters() (Counters, error) { return Counters{}, errors.ErrUnsupported }

// Totals needs Linux.
func (d *Dataplane) Totals() (Counters, error) { return Counters{}, errors.ErrUnsupported }

// CutFlows needs Linux.
func (d *Dataplane) CutFlows(flows []Flow) (int, error) { return 0, errors.ErrUnsupported }

// AddContainer needs Linux.
func AddContainer(c Container) (Result, error) { return Result{}, errors.ErrUnsupported }

// DelContainer needs Linux.
func DelContainer(c Container) error { return errors.ErrUnsupported }

// CheckContainer needs Linux.
func CheckContainer(c Container) error { return errors.ErrUnsupported }

func (d *Dataplane) applyEgress(p *egressPlan) error { return errors.ErrUnsupported }

func (d *Dataplane) cutEgress(p *egressPlan) (int, error) { return 0, errors.ErrUnsupported }

// TeardownEgress is not supported on this system.
func (d *Dataplane) TeardownEgress() error { return errors.ErrUnsupported }

// SetContainerMTU needs Linux.
func SetContainerMTU(hostNS, containerNS, ifName, hostVeth string, mtu int) error {
	return errors.ErrUnsupported
}

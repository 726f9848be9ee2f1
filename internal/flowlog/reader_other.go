//go:build !linux

package flowlog

import (
	"context"
	"errors"
)

// Reader delivers the packets logged to NFLOG groups; NFLOG exists only on
// Linux.
type Reader struct{}

var errUnsupported = errors.New("flow log: nflog needs linux")

// Open fails: NFLOG exists only on Linux.
func Open(nsPath string, groups []uint16) (*Reader, error) { return nil, errUnsupported }

// Listen fails: NFLOG exists only on Linux.
func Listen(ctx context.Context, nsPath string, groups []uint16, fn func(Packet)) error {
	return errUnsupported
}

// Run fails: NFLOG exists only on Linux.
func (r *Reader) Run(ctx context.Context, fn func(Packet)) error { return errUnsupported }

// Stats returns zero counters.
func (r *Reader) Stats() Stats { return Stats{} }

// Close does nothing.
func (r *Reader) Close() error { return nil }

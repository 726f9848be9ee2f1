//go:build !linux

package dataplane

import (
	"context"
	"errors"
)

// SetPolicy needs Linux.
func SetPolicy(ctx context.Context, nsPath string, p Policy) (bool, error) {
	return false, errors.ErrUnsupported
}

// VerifyPolicy needs Linux.
func VerifyPolicy(ctx context.Context, nsPath string, p Policy) (bool, error) {
	return false, errors.ErrUnsupported
}

// TeardownPolicy needs Linux.
func TeardownPolicy(nsPath string) error { return errors.ErrUnsupported }

// PolicyCounters needs Linux.
func PolicyCounters(nsPath string) (Counters, error) { return Counters{}, errors.ErrUnsupported }

// PolicyTotals needs Linux.
func PolicyTotals(nsPath string) (Counters, error) { return Counters{}, errors.ErrUnsupported }

// CutFlows needs Linux.
func CutFlows(nsPath string, flows []Flow) (int, error) { return 0, errors.ErrUnsupported }

// CutDisallowed needs Linux.
func CutDisallowed(nsPath string, p Policy) (int, error) { return 0, errors.ErrUnsupported }

//go:build !linux

package dataplane

import (
	"context"
	"errors"
)

// SetOverlay needs Linux.
func SetOverlay(ctx context.Context, c Cell, peers []Peer) error { return errors.ErrUnsupported }

// TeardownOverlay needs Linux.
func TeardownOverlay(c Cell) error { return errors.ErrUnsupported }

// AddContainer needs Linux.
func AddContainer(c Container) (Result, error) { return Result{}, errors.ErrUnsupported }

// DelContainer needs Linux.
func DelContainer(c Container) error { return errors.ErrUnsupported }

// CheckContainer needs Linux.
func CheckContainer(c Container) error { return errors.ErrUnsupported }

//go:build !linux

package bench

import (
	"context"
	"errors"
)

// Overlay needs Linux.
func Overlay(ctx context.Context, o OverlayOptions) (*Report, error) {
	return nil, errors.ErrUnsupported
}

// Leftovers needs Linux; it finds nothing elsewhere.
func Leftovers(prefix string) []string { return nil }

//go:build !linux

package dataplane

import "errors"

// FindUnderlay needs Linux.
func FindUnderlay(nsPath, name string) (Underlay, error) { return Underlay{}, errors.ErrUnsupported }

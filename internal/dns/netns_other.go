//go:build !linux

package dns

import (
	"errors"
	"net/netip"
)

// inNamespace runs fn when path is ""; network namespaces are Linux's.
func inNamespace(path string, fn func() error) error {
	if path != "" {
		return errors.ErrUnsupported
	}
	return fn()
}

// AddAddress needs Linux.
func AddAddress(nsPath string, ip netip.Addr) error { return errors.ErrUnsupported }

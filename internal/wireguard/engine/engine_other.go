//go:build !linux

package engine

import "errors"

// Up is Linux only.
func Up(cfg wireguard.Config) (wireguard.Engine, error) {
	return nil, errors.New("wireguard: only on Linux")
}

// Down is Linux only.
func Down(nsPath, name string) error { return errors.New("wireguard: only on Linux") }

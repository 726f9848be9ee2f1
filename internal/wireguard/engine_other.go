//go:build !linux

package wireguard

import "errors"

// Up is Linux only.
func Up(cfg Config) (Engine, error) { return nil, errors.New("wireguard: only on Linux") }

// Down is Linux only.
func Down(nsPath, name string) error { return errors.New("wireguard: only on Linux") }

//go:build !linux

package bench

import (
	"context"
	"errors"
)

// TLS needs Linux.
func TLS(ctx context.Context, o TLSOptions) (*Report, error) {
	return nil, errors.ErrUnsupported
}

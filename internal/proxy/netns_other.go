//go:build !linux

package proxy

import (
	"errors"
	"net"
	"os"
)

// nsID identifies a namespace; network namespaces are Linux's.
type nsID struct{ dev, ino uint64 }

func openHome() (*os.File, nsID, error) { return nil, nsID{}, errors.ErrUnsupported }

func openNetns(path string) (*os.File, nsID, error) { return nil, nsID{}, errors.ErrUnsupported }

func listen(ns *os.File) (*net.TCPListener, error) { return nil, errors.ErrUnsupported }

var errStuck = errors.New("thread stuck in an instance's network namespace")

func (c *conn) dial() (*net.TCPConn, error) { return nil, errors.ErrUnsupported }

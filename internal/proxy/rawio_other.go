//go:build !linux

package proxy

import "net"

// rawSocket is the connection itself where raw socket calls are not made.
type rawSocket struct{ net.Conn }

func newRawSocket(c *net.TCPConn) (*rawSocket, error) { return &rawSocket{c}, nil }

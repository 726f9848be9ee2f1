// Package capture records the frames crossing one interface of a network
// namespace (an AF_PACKET socket opened inside it), so that a test or the
// demo can show what an eavesdropper on the underlay sees: plaintext on
// port 8080, ciphertext on port 61443.
package capture

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/trellis-c2c/trellis/internal/netns"
)

// maxBytes bounds what one capture keeps.
const maxBytes = 64 << 20

// Capture is a running capture.
type Capture struct {
	fd   int
	done chan struct{}

	mu      sync.Mutex
	stopped bool
	frames  [][]byte
	size    int
	err     error
}

// Start captures every frame in and out of ifname in the namespace at
// nsPath until Stop.
func Start(nsPath, ifname string) (*Capture, error) {
	fd := -1
	err := netns.Do(nsPath, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		proto := htons(unix.ETH_P_ALL)
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind packet socket to %s: %w", ifname, err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("capture on %s: %w", ifname, err)
	}
	// A short receive timeout lets the reader notice Stop.
	tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, err
	}
	c := &Capture{fd: fd, done: make(chan struct{})}
	go c.read()
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *Capture) read() {
	defer close(c.done)
	buf := make([]byte, 65536)
	for {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			c.mu.Lock()
			stopped := c.stopped
			c.mu.Unlock()
			if stopped {
				return
			}
			continue
		}
		if err != nil {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		// After Stop the reader drains what is queued (until a receive
		// times out), so that the frames of traffic that finished before
		// Stop are all there.
		c.mu.Lock()
		if c.size+n <= maxBytes {
			c.frames = append(c.frames, bytes.Clone(buf[:n]))
			c.size += n
		}
		c.mu.Unlock()
	}
}

// Stop ends the capture and returns the frames seen, in order.
func (c *Capture) Stop() ([][]byte, error) {
	c.mu.Lock()
	again := c.stopped
	c.stopped = true
	c.mu.Unlock()
	<-c.done
	if !again {
		unix.Close(c.fd)
	}
	return c.frames, c.err
}

// Find returns the first frame that contains marker, and where in it.
func Find(frames [][]byte, marker []byte) (frame []byte, at int) {
	for _, f := range frames {
		if i := bytes.Index(f, marker); i >= 0 {
			return f, i
		}
	}
	return nil, -1
}

// UDPPayloads returns the payloads of the IPv4 UDP frames sent to port
// (VXLAN carries the overlay's packets in them).
func UDPPayloads(frames [][]byte, port uint16) [][]byte {
	var out [][]byte
	for _, f := range frames {
		if len(f) < 14+20+8 || f[12] != 0x08 || f[13] != 0x00 {
			continue
		}
		ip := f[14:]
		ihl := int(ip[0]&0x0f) * 4
		if ip[9] != unix.IPPROTO_UDP || len(ip) < ihl+8 {
			continue
		}
		udp := ip[ihl:]
		if uint16(udp[2])<<8|uint16(udp[3]) == port {
			out = append(out, udp[8:])
		}
	}
	return out
}

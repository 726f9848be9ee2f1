package flowlog

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	nflog "github.com/florianl/go-nflog/v2"
	"github.com/trellis-c2c/trellis/internal/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	// copyRange is how many bytes of each packet the kernel copies into the
	// log message: enough for an IPv4 header with options (60) and a TCP
	// header up to its flags, or an IPv6 header and a few extension
	// headers. A rule's "snaplen" lowers it further.
	copyRange = 128
	// flushTimeout is how long the kernel may hold log messages to batch
	// them, in 1/100 s: 10 ms. Its default is a second.
	flushTimeout = 1
	// readBuffer is the receive buffer asked for each socket; the kernel
	// caps it at net.core.rmem_max.
	readBuffer = 1 << 20
	// nameTTL is how long an interface name looked up by index is trusted.
	nameTTL = 10 * time.Second
)

// Reader delivers the packets logged to a set of NFLOG groups in one network
// namespace. Open binds the groups, Run delivers, Close releases them.
type Reader struct {
	ns     string
	groups []uint16
	socks  []*nflog.Nflog
	links  *netlink.Handle

	ctx    context.Context // ends at Close; stops the socket readers
	cancel context.CancelFunc

	started  chan struct{} // closed when Run has set fn
	failed   chan struct{} // closed when a socket fails for good
	failOnce sync.Once
	err      error // why failed was closed

	mu      sync.Mutex // serializes fn; guards the fields below
	fn      func(Packet)
	stopped bool
	nextSeq map[uint16]uint32 // expected sequence number per group
	names   map[uint32]ifName

	packets, lost, overruns, malformed atomic.Uint64
	closeOnce                          sync.Once
	closeErr                           error
}

type ifName struct {
	name string
	at   time.Time
}

// Open binds the NFLOG groups in the network namespace at nsPath, with one
// netlink socket per group opened in that namespace. It needs CAP_NET_ADMIN
// there, and fails if another socket has a group bound in that namespace
// already (the kernel answers EPERM). Messages logged before Run is called
// wait in the sockets' buffers.
func Open(nsPath string, groups []uint16) (*Reader, error) {
	if len(groups) == 0 {
		return nil, errors.New("open flow log: no nflog groups")
	}
	if g := slices.Sorted(slices.Values(groups)); len(slices.Compact(g)) != len(groups) {
		return nil, fmt.Errorf("open flow log: duplicate nflog group in %v", groups)
	}
	links, err := netns.Handle(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open flow log: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Reader{
		ns:      nsPath,
		groups:  slices.Clone(groups),
		links:   links,
		ctx:     ctx,
		cancel:  cancel,
		started: make(chan struct{}),
		failed:  make(chan struct{}),
		nextSeq: make(map[uint16]uint32),
		names:   make(map[uint32]ifName),
	}
	err = netns.Do(nsPath, func() error {
		for _, g := range groups {
			s, err := nflog.Open(&nflog.Config{
				Group:    g,
				Copymode: nflog.CopyPacket,
				Bufsize:  copyRange,
				Flags:    nflog.FlagSeq,
				Timeout:  flushTimeout,
			})
			if err != nil {
				return fmt.Errorf("open nflog socket for group %d: %w", g, err)
			}
			r.socks = append(r.socks, s)
		}
		return nil
	})
	if err == nil {
		for i, s := range r.socks {
			// Best effort: a smaller buffer only loses more in a burst.
			_ = s.Con.SetReadBuffer(readBuffer)
			g := groups[i]
			if err = s.RegisterWithErrorFunc(ctx, r.hook(g), r.onError(g)); err != nil {
				err = fmt.Errorf("bind nflog group %d: %w", g, err)
				break
			}
		}
	}
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("open flow log in %s: %w", nsPath, err)
	}
	return r, nil
}

// Listen reads the packets logged to groups in the network namespace at
// nsPath and calls fn for each, one at a time, until ctx ends (then it
// returns nil) or reading fails. It is Open, Run and Close in one call.
func Listen(ctx context.Context, nsPath string, groups []uint16, fn func(Packet)) error {
	r, err := Open(nsPath, groups)
	if err != nil {
		return err
	}
	return errors.Join(r.Run(ctx, fn), r.Close())
}

// Run calls fn for every logged packet until ctx ends or the Reader is
// closed (it returns nil), or a socket fails (it returns why). fn is called
// from the sockets' reader goroutines, never concurrently and never after
// Run has returned; while fn runs, messages queue in the kernel, so fn should
// be quick. A Reader runs once.
func (r *Reader) Run(ctx context.Context, fn func(Packet)) error {
	r.mu.Lock()
	if r.fn != nil || r.stopped {
		r.mu.Unlock()
		return errors.New("flow log: Run called twice or after Close")
	}
	r.fn = fn
	r.mu.Unlock()
	close(r.started)
	defer r.stop()
	select {
	case <-ctx.Done():
		return nil
	case <-r.ctx.Done():
		return nil
	case <-r.failed:
		return r.err
	}
}

// Stats returns the Reader's counters so far.
func (r *Reader) Stats() Stats {
	return Stats{
		Packets:   r.packets.Load(),
		Lost:      r.lost.Load(),
		Overruns:  r.overruns.Load(),
		Malformed: r.malformed.Load(),
	}
}

// Close unbinds the groups and closes the sockets. After Close returns, fn
// is not called again.
func (r *Reader) Close() error {
	r.closeOnce.Do(func() {
		r.stop()
		// Cancelling ends go-nflog's reader goroutines: they see the context
		// or the closed socket, and stop. The socket is closed directly, not
		// with (*nflog.Nflog).Close: in v2.1.0 that races a WaitGroup.Wait
		// with an Add in the reader goroutine. Closing the socket makes the
		// kernel release its groups.
		r.cancel()
		var errs []error
		for i, s := range r.socks {
			if err := s.Con.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close nflog group %d: %w", r.groups[i], err))
			}
		}
		r.links.Close()
		if err := errors.Join(errs...); err != nil {
			r.closeErr = fmt.Errorf("close flow log in %s: %w", r.ns, err)
		}
	})
	return r.closeErr
}

// stop ends delivery: a call of fn in progress finishes first, and none
// starts afterwards.
func (r *Reader) stop() {
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
}

func (r *Reader) fail(err error) {
	r.failOnce.Do(func() {
		r.err = err
		close(r.failed)
	})
}

// hook is go-nflog's callback for group g: it returns nonzero to stop
// reading that socket.
func (r *Reader) hook(g uint16) nflog.HookFunc {
	return func(a nflog.Attribute) int {
		select {
		case <-r.started:
		case <-r.ctx.Done():
			return 1
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.stopped {
			return 1
		}
		if a.Seq != nil {
			r.lost.Add(uint64(*a.Seq - r.nextSeq[g])) // wraps like the kernel's counter
			r.nextSeq[g] = *a.Seq + 1
		}
		p := r.packet(g, a)
		if !p.SrcIP.IsValid() {
			r.malformed.Add(1)
		}
		r.packets.Add(1)
		r.fn(p)
		return 0
	}
}

// onError is go-nflog's error callback for group g: it returns 0 to go on
// reading.
func (r *Reader) onError(g uint16) nflog.ErrorFunc {
	return func(err error) int {
		if r.ctx.Err() != nil {
			return 1 // closing: the deadline or the closed socket
		}
		if errors.Is(err, unix.ENOBUFS) {
			r.overruns.Add(1)
			return 0
		}
		var t interface{ Timeout() bool }
		if errors.As(err, &t) && t.Timeout() {
			return 0
		}
		r.fail(fmt.Errorf("read nflog group %d in %s: %w", g, r.ns, err))
		return 1
	}
}

// packet builds the Packet of a log message of group g. Called with mu held.
func (r *Reader) packet(g uint16, a nflog.Attribute) Packet {
	p := Packet{Group: g, Time: time.Now()}
	if a.Timestamp != nil && !a.Timestamp.IsZero() {
		p.Time = *a.Timestamp
	}
	if a.Prefix != nil {
		p.Prefix = *a.Prefix
	}
	if a.Mark != nil {
		p.Mark = *a.Mark
	}
	if a.InDev != nil {
		p.InIfIndex = *a.InDev
		p.InIf = r.ifName(p.InIfIndex)
	}
	if a.OutDev != nil {
		p.OutIfIndex = *a.OutDev
		p.OutIf = r.ifName(p.OutIfIndex)
	}
	if a.Payload != nil {
		_ = p.decode(*a.Payload) // a failure leaves SrcIP invalid
	}
	return p
}

// ifName returns the name of interface index in the Reader's namespace, ""
// if there is none. Called with mu held.
func (r *Reader) ifName(index uint32) string {
	if index == 0 {
		return ""
	}
	now := time.Now()
	if n, ok := r.names[index]; ok && now.Sub(n.at) < nameTTL {
		return n.name
	}
	var name string
	if l, err := r.links.LinkByIndex(int(index)); err == nil {
		name = l.Attrs().Name
	}
	if len(r.names) > 4096 {
		clear(r.names)
	}
	r.names[index] = ifName{name: name, at: now}
	return name
}

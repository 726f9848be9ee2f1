package engine

import (
	"cmp"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/trellis-c2c/trellis/internal/wireguard"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/trellis-c2c/trellis/internal/netns"
)

// Up makes the device cfg describes, or adopts the one there: a kernel
// WireGuard link of that name, or the userspace engine this process runs
// for that namespace and name (an agent restarted in the same process
// keeps its device and its sessions). It sets the key and the port; the
// caller addresses the link and sets it up through netlink, as for any
// other link, and then sets the peers.
func Up(cfg wireguard.Config) (wireguard.Engine, error) {
	if cfg.Name == "" || cfg.NetNS == "" {
		return nil, errors.New("wireguard: device name and netns are required")
	}
	cfg.ListenPort = cmp.Or(cfg.ListenPort, wireguard.DefaultPort)
	if cfg.MTU == 0 {
		cfg.MTU = 1420
	}
	var e wireguard.Engine
	var err error
	switch cfg.Kind {
	case wireguard.KindUserspace:
		e, err = upUserspace(cfg)
	case wireguard.KindKernel:
		e, err = upKernel(cfg)
	case "":
		e, err = upKernel(cfg)
		if errors.Is(err, errNoKernel) {
			e, err = upUserspace(cfg)
		}
	default:
		return nil, fmt.Errorf("wireguard: kind %q is neither %q nor %q", cfg.Kind, wireguard.KindKernel, wireguard.KindUserspace)
	}
	if err != nil {
		return nil, err
	}
	if e.PublicKey() != cfg.PrivateKey.PublicKey() {
		if err := e.SetKey(cfg.PrivateKey); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// errNoKernel reports a kernel without WireGuard.
var errNoKernel = errors.New("the kernel has no WireGuard")

// nsID names a network namespace for as long as it lives: a path can be
// reused by a new namespace of the same name.
type nsID struct{ dev, ino uint64 }

func nsIdentity(path string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, fmt.Errorf("netns %s: %w", path, err)
	}
	return nsID{uint64(st.Dev), st.Ino}, nil
}

// ---- kernel ----

type kernelEngine struct {
	ns, name string
	mu       sync.Mutex
	port     int
	key      wireguard.Key
}

func (k *kernelEngine) Kind() string { return wireguard.KindKernel }

func (k *kernelEngine) PublicKey() wireguard.Key {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.key.PublicKey()
}

func (k *kernelEngine) ListenPort() int { return k.port }

// client runs fn with a wgctrl client whose netlink socket is in the
// cell's namespace.
func (k *kernelEngine) client(fn func(*wgctrl.Client) error) error {
	var c *wgctrl.Client
	if err := netns.Do(k.ns, func() (err error) { c, err = wgctrl.New(); return err }); err != nil {
		return fmt.Errorf("wgctrl in %s: %w", k.ns, err)
	}
	defer c.Close()
	return fn(c)
}

func upKernel(cfg wireguard.Config) (wireguard.Engine, error) {
	h, err := netns.Handle(cfg.NetNS)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	l, err := h.LinkByName(cfg.Name)
	switch {
	case err == nil && l.Type() == "wireguard":
		// Adopt it.
	case err == nil:
		if cfg.Kind == wireguard.KindKernel {
			return nil, fmt.Errorf("wireguard: %s in %s is a %s link", cfg.Name, cfg.NetNS, l.Type())
		}
		return nil, errNoKernel // a userspace engine's TUN (ours, or left behind)
	default:
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return nil, fmt.Errorf("wireguard: find %s in %s: %w", cfg.Name, cfg.NetNS, err)
		}
		err := h.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: cfg.Name, MTU: cfg.MTU}})
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EINVAL) {
			return nil, fmt.Errorf("wireguard: add %s in %s: %w (%w)", cfg.Name, cfg.NetNS, errNoKernel, err)
		}
		if err != nil {
			return nil, fmt.Errorf("wireguard: add %s in %s: %w", cfg.Name, cfg.NetNS, err)
		}
	}
	k := &kernelEngine{ns: cfg.NetNS, name: cfg.Name, port: cfg.ListenPort, key: cfg.PrivateKey}
	err = k.client(func(c *wgctrl.Client) error {
		key, port := cfg.PrivateKey, cfg.ListenPort
		return c.ConfigureDevice(cfg.Name, wgtypes.Config{PrivateKey: &key, ListenPort: &port})
	})
	if err != nil {
		return nil, fmt.Errorf("wireguard: configure %s in %s: %w", cfg.Name, cfg.NetNS, err)
	}
	return k, nil
}

func (k *kernelEngine) SetKey(key wireguard.Key) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	since := time.Now()
	err := k.client(func(c *wgctrl.Client) error {
		return c.ConfigureDevice(k.name, wgtypes.Config{PrivateKey: &key})
	})
	if err != nil {
		return fmt.Errorf("wireguard: set key of %s in %s: %w", k.name, k.ns, err)
	}
	k.key = key
	kickAfter(k, since, nil)
	return nil
}

func (k *kernelEngine) lastHandshakes() (map[wireguard.Key]time.Time, bool) {
	hs := map[wireguard.Key]time.Time{}
	err := k.client(func(c *wgctrl.Client) error {
		d, err := c.Device(k.name)
		if err != nil {
			return err
		}
		for _, p := range d.Peers {
			hs[p.PublicKey] = p.LastHandshakeTime
		}
		return nil
	})
	return hs, err == nil
}

func (k *kernelEngine) renew(key wireguard.Key, since time.Time) {
	k.client(func(c *wgctrl.Client) error {
		d, err := c.Device(k.name)
		if err != nil {
			return err
		}
		for _, p := range d.Peers {
			if p.PublicKey != key || !p.LastHandshakeTime.Before(since) {
				continue
			}
			pc := wgtypes.PeerConfig{PublicKey: key, Endpoint: p.Endpoint, ReplaceAllowedIPs: true, AllowedIPs: p.AllowedIPs}
			return c.ConfigureDevice(k.name, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: key, Remove: true}, pc}})
		}
		return nil
	})
}

func (k *kernelEngine) SetPeers(peers []wireguard.Peer) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.client(func(c *wgctrl.Client) error {
		d, err := c.Device(k.name)
		if err != nil {
			return fmt.Errorf("wireguard: read %s in %s: %w", k.name, k.ns, err)
		}
		have := map[wireguard.Key]wireguard.Peer{}
		for _, p := range d.Peers {
			hp := wireguard.Peer{PublicKey: p.PublicKey}
			if p.Endpoint != nil {
				hp.Endpoint = p.Endpoint.AddrPort()
				hp.Endpoint = netipAddrPort(hp.Endpoint)
			}
			for _, a := range p.AllowedIPs {
				if pf, ok := prefixOf(a); ok {
					hp.AllowedIPs = append(hp.AllowedIPs, pf)
				}
			}
			have[p.PublicKey] = hp
		}
		pcs, err := peerConfig(have, peers)
		if err != nil || len(pcs) == 0 {
			return err
		}
		since := time.Now()
		if err := c.ConfigureDevice(k.name, wgtypes.Config{Peers: pcs}); err != nil {
			return fmt.Errorf("wireguard: set peers of %s in %s: %w", k.name, k.ns, err)
		}
		if fresh := newKeys(have, peers); len(fresh) > 0 {
			kickAfter(k, since, fresh)
		}
		return nil
	})
}

func (k *kernelEngine) Close() error {
	h, err := netns.Handle(k.ns)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(k.name)
	if err != nil {
		return nil // gone already
	}
	return h.LinkDel(l)
}

// ---- userspace ----

// running are the userspace engines of this process, by namespace and
// device name: a device lives as long as the process, not as long as the
// agent that made it.
var (
	runningMu sync.Mutex
	running   = map[runKey]*userEngine{}
)

type runKey struct {
	ns   nsID
	name string
}

type userEngine struct {
	ns, name string
	id       runKey
	dev      *device.Device
	port     int

	mu     sync.Mutex
	key    wireguard.Key
	peers  map[wireguard.Key]wireguard.Peer
	closed bool
}

func upUserspace(cfg wireguard.Config) (wireguard.Engine, error) {
	id, err := nsIdentity(cfg.NetNS)
	if err != nil {
		return nil, err
	}
	rk := runKey{id, cfg.Name}
	runningMu.Lock()
	defer runningMu.Unlock()
	if u := running[rk]; u != nil {
		if u.port != cfg.ListenPort {
			if err := u.dev.IpcSet(fmt.Sprintf("listen_port=%d\n", cfg.ListenPort)); err != nil {
				return nil, fmt.Errorf("wireguard: set port of %s in %s: %w", cfg.Name, cfg.NetNS, err)
			}
			u.port = cfg.ListenPort
		}
		return u, nil
	}
	h, err := netns.Handle(cfg.NetNS)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	// The TUN is persistent: it outlives the process, so that an agent
	// restarted as a new process finds the device with its addresses and
	// routes, and the VTEP that sends through it, and attaches to it (the
	// packets of the moments between are dropped, and retransmitted).
	create := func() (td tun.Device, err error) {
		err = netns.Do(cfg.NetNS, func() error {
			if td, err = tun.CreateTUN(cfg.Name, cfg.MTU); err != nil {
				return err
			}
			return setPersist(td, true)
		})
		return td, err
	}
	var td tun.Device
	if l, err := h.LinkByName(cfg.Name); err == nil {
		if l.Type() == "tuntap" || l.Type() == "tun" {
			// Attach to the one left by an earlier process (or engine: a
			// closed descriptor may take a moment to let go).
			for i := 0; i < 20; i++ {
				if td, err = create(); !errors.Is(err, unix.EBUSY) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		if td == nil || err != nil {
			// Another kind of link, or a TUN that does not take us:
			// replace it.
			if err := h.LinkDel(l); err != nil {
				return nil, fmt.Errorf("wireguard: delete stale %s in %s: %w", cfg.Name, cfg.NetNS, err)
			}
		}
	}
	if td == nil {
		if td, err = create(); err != nil {
			return nil, fmt.Errorf("wireguard: create TUN %s in %s: %w", cfg.Name, cfg.NetNS, err)
		}
	}
	logger := &device.Logger{Verbosef: device.DiscardLogf, Errorf: device.DiscardLogf}
	if cfg.Log != nil {
		log := cfg.Log
		logger.Errorf = func(format string, args ...any) {
			log.Warn("wireguard-go: "+fmt.Sprintf(format, args...), "device", cfg.Name, "netns", cfg.NetNS)
		}
	}
	bind := &nsBind{Bind: conn.NewDefaultBind(), ns: cfg.NetNS}
	dev := device.NewDevice(&nsTUN{Device: td, ns: cfg.NetNS}, bind, logger)
	u := &userEngine{ns: cfg.NetNS, name: cfg.Name, id: rk, dev: dev, port: cfg.ListenPort, key: cfg.PrivateKey, peers: map[wireguard.Key]wireguard.Peer{}}
	ipc := fmt.Sprintf("private_key=%s\nlisten_port=%d\n", hex.EncodeToString(cfg.PrivateKey[:]), cfg.ListenPort)
	if err := dev.IpcSet(ipc); err != nil {
		dev.Close()
		return nil, fmt.Errorf("wireguard: configure %s in %s: %w", cfg.Name, cfg.NetNS, err)
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, fmt.Errorf("wireguard: start %s in %s: %w", cfg.Name, cfg.NetNS, err)
	}
	running[rk] = u
	return u, nil
}

func (u *userEngine) Kind() string { return wireguard.KindUserspace }

func (u *userEngine) PublicKey() wireguard.Key {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.key.PublicKey()
}

func (u *userEngine) ListenPort() int { return u.port }

func (u *userEngine) SetKey(key wireguard.Key) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	since := time.Now()
	if err := u.dev.IpcSet("private_key=" + hex.EncodeToString(key[:]) + "\n"); err != nil {
		return fmt.Errorf("wireguard: set key of %s in %s: %w", u.name, u.ns, err)
	}
	u.key = key
	kickAfter(u, since, nil)
	return nil
}

func (u *userEngine) SetPeers(peers []wireguard.Peer) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	pcs, err := peerConfig(u.peers, peers)
	if err != nil || len(pcs) == 0 {
		return err
	}
	since := time.Now()
	if err := u.dev.IpcSet(uapiPeers(pcs)); err != nil {
		// What the device holds is unknown now: start the next diff from
		// nothing, which replaces every peer's settings.
		u.peers = map[wireguard.Key]wireguard.Peer{}
		return fmt.Errorf("wireguard: set peers of %s in %s: %w", u.name, u.ns, err)
	}
	fresh := newKeys(u.peers, peers)
	u.peers = peerMap(peers)
	if len(fresh) > 0 {
		kickAfter(u, since, fresh)
	}
	return nil
}

func (u *userEngine) lastHandshakes() (map[wireguard.Key]time.Time, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, false
	}
	out, err := u.dev.IpcGet()
	if err != nil {
		return nil, false
	}
	hs := map[wireguard.Key]time.Time{}
	var cur wireguard.Key
	var secs int64
	for _, line := range strings.Split(out, "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "public_key":
			b, err := hex.DecodeString(v)
			if err != nil || len(b) != len(cur) {
				return nil, false
			}
			cur = wireguard.Key(b)
		case "last_handshake_time_sec":
			secs, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			ns, _ := strconv.ParseInt(v, 10, 64)
			hs[cur] = time.Time{}
			if secs != 0 || ns != 0 {
				hs[cur] = time.Unix(secs, ns)
			}
		}
	}
	return hs, true
}

func (u *userEngine) renew(k wireguard.Key, since time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	p, ok := u.peers[k]
	if !ok || u.closed {
		return
	}
	pcs, _ := peerConfig(nil, []wireguard.Peer{p})
	ipc := "public_key=" + hex.EncodeToString(k[:]) + "\nremove=true\n" + uapiPeers(pcs)
	if err := u.dev.IpcSet(ipc); err != nil {
		u.peers = map[wireguard.Key]wireguard.Peer{}
	}
}

func (u *userEngine) Close() error {
	runningMu.Lock()
	if running[u.id] == u {
		delete(running, u.id)
	}
	runningMu.Unlock()
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil
	}
	u.closed = true
	u.dev.Close()
	// The TUN is persistent (see upUserspace): delete it.
	h, err := netns.Handle(u.ns)
	if err != nil {
		return nil // the namespace is gone, and the device with it
	}
	defer h.Close()
	if l, err := h.LinkByName(u.name); err == nil {
		if err := h.LinkDel(l); err != nil {
			return fmt.Errorf("wireguard: delete %s in %s: %w", u.name, u.ns, err)
		}
	}
	return nil
}

// setPersist makes the TUN outlive its file descriptor, or not.
func setPersist(td tun.Device, on bool) error {
	nt, ok := td.(interface{ File() *os.File })
	if !ok {
		return errors.New("TUN without a file")
	}
	rc, err := nt.File().SyscallConn()
	if err != nil {
		return err
	}
	v := 0
	if on {
		v = 1
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) { ierr = unix.IoctlSetInt(int(fd), unix.TUNSETPERSIST, v) }); err != nil {
		return err
	}
	if ierr != nil {
		return fmt.Errorf("TUNSETPERSIST: %w", ierr)
	}
	return nil
}

// uapiPeers writes peer changes in wireguard-go's configuration protocol.
func uapiPeers(pcs []wgtypes.PeerConfig) string {
	var b strings.Builder
	for _, pc := range pcs {
		fmt.Fprintf(&b, "public_key=%s\n", hex.EncodeToString(pc.PublicKey[:]))
		if pc.Remove {
			b.WriteString("remove=true\n")
			continue
		}
		if pc.Endpoint != nil {
			fmt.Fprintf(&b, "endpoint=%s\n", pc.Endpoint)
		}
		b.WriteString("replace_allowed_ips=true\n")
		for _, a := range pc.AllowedIPs {
			fmt.Fprintf(&b, "allowed_ip=%s\n", a.String())
		}
	}
	return b.String()
}

// nsBind opens wireguard-go's UDP sockets in the cell's namespace,
// whichever goroutine asks (the device reopens them when its link comes
// up).
type nsBind struct {
	conn.Bind
	ns string
}

func (b *nsBind) Open(port uint16) (fns []conn.ReceiveFunc, actual uint16, err error) {
	err = netns.Do(b.ns, func() (err error) {
		fns, actual, err = b.Bind.Open(port)
		return err
	})
	return fns, actual, err
}

// nsTUN reads the TUN's MTU in the cell's namespace: wireguard-go asks by
// name through a socket it opens on whatever thread it runs.
type nsTUN struct {
	tun.Device
	ns string
}

func (t *nsTUN) MTU() (mtu int, err error) {
	err = netns.Do(t.ns, func() (err error) { mtu, err = t.Device.MTU(); return err })
	return mtu, err
}

// Down deletes the device name in the namespace at nsPath: the userspace
// engine this process runs there, or the link (a kernel device). It is not
// an error if there is none.
func Down(nsPath, name string) error {
	if id, err := nsIdentity(nsPath); err == nil {
		runningMu.Lock()
		u := running[runKey{id, name}]
		runningMu.Unlock()
		if u != nil {
			return u.Close()
		}
	}
	h, err := netns.Handle(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return nil
	}
	if err := h.LinkDel(l); err != nil {
		return fmt.Errorf("wireguard: delete %s in %s: %w", name, nsPath, err)
	}
	return nil
}

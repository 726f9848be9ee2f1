package agent

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/dataplane"
	"github.com/trellis-c2c/trellis/internal/wireguard"
)

// The cell's WireGuard key pair. It is made here and its private half
// never leaves the state directory (0600); the controller gets the public
// half, and every other cell gets that through its desired state. A
// rotation (CellState.KeyGeneration above the key's generation) makes a
// next pair and registers it; the dataplane switches to it once the
// controller's state names it as the cell's key — the state that gives
// the peers the new key too — so the window in which the two sides
// disagree is one state delivery.
const (
	wgKeyFile     = "wireguard.key"
	wgNextKeyFile = "wireguard-next.key"
)

// wgRetry is how soon a failed key registration is tried again.
const wgRetry = 2 * time.Second

// cellKeys keeps the cell's WireGuard keys and registers them.
type cellKeys struct {
	log      *slog.Logger
	dir      string
	port     int
	register func(context.Context, api.CellKey) error
	wake     chan struct{}

	mu         sync.Mutex
	cur        wireguard.KeyFile  // the key the dataplane uses
	next       *wireguard.KeyFile // during a rotation: the key registered next
	registered wireguard.Key      // the public key the controller has, as far as known
	seen       bool               // a desired state came in: the generation is known
}

func newCellKeys(log *slog.Logger, dir string, register func(context.Context, api.CellKey) error) (*cellKeys, error) {
	k := &cellKeys{log: log, dir: dir, port: wireguard.DefaultPort, register: register, wake: make(chan struct{}, 1)}
	var err error
	if k.cur, err = wireguard.LoadOrCreateKey(filepath.Join(dir, wgKeyFile)); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, wgNextKeyFile)); err == nil {
		n, err := wireguard.LoadOrCreateKey(filepath.Join(dir, wgNextKeyFile))
		if err != nil {
			return nil, err
		}
		k.next = &n
	}
	return k, nil
}

// update takes a desired state in: it finishes a rotation the state
// confirms, starts one it asks for, notes what the controller has, and
// returns the private key the dataplane is to use.
func (k *cellKeys) update(st api.CellState) wireguard.Key {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.seen = true
	own := st.Cell.WireGuardKey
	if own != "" {
		if pub, err := wireguard.ParseKey(own); err == nil {
			k.registered = pub
		}
	}
	if n := k.next; n != nil && k.registered == n.PrivateKey.PublicKey() {
		if err := wireguard.SaveKey(filepath.Join(k.dir, wgKeyFile), *n); err != nil {
			k.log.Error("save the rotated WireGuard key: keeping the old one", "err", err)
		} else {
			os.Remove(filepath.Join(k.dir, wgNextKeyFile))
			k.cur, k.next = *n, nil
			k.log.Info("WireGuard key rotated", "generation", k.cur.Generation, "public_key", k.cur.PrivateKey.PublicKey().String())
		}
	}
	if k.next == nil && st.KeyGeneration > k.cur.Generation {
		if k.registered != k.cur.PrivateKey.PublicKey() {
			// Never registered (a new cell): it answers this generation
			// as well as a new one would.
			k.cur.Generation = st.KeyGeneration
			if err := wireguard.SaveKey(filepath.Join(k.dir, wgKeyFile), k.cur); err != nil {
				k.log.Error("save WireGuard key", "err", err)
			}
		} else if n, err := wireguard.NewKey(st.KeyGeneration); err != nil {
			k.log.Error("make the next WireGuard key", "err", err)
		} else if err := wireguard.SaveKey(filepath.Join(k.dir, wgNextKeyFile), n); err != nil {
			k.log.Error("save the next WireGuard key", "err", err)
		} else {
			k.next = &n
			k.log.Info("WireGuard key rotation started", "generation", n.Generation)
		}
	}
	if _, due := k.dueLocked(); due {
		select {
		case k.wake <- struct{}{}:
		default:
		}
	}
	return k.cur.PrivateKey
}

// dueLocked is the registration the controller lacks, if any: the next key
// during a rotation, else the key in use.
func (k *cellKeys) dueLocked() (api.CellKey, bool) {
	kf := k.cur
	if k.next != nil {
		kf = *k.next
	}
	pub := kf.PrivateKey.PublicKey()
	return api.CellKey{PublicKey: pub.String(), ListenPort: k.port, Generation: kf.Generation}, k.seen && k.registered != pub
}

// loop registers keys with the controller as they become due, until ctx
// ends.
func (k *cellKeys) loop(ctx context.Context) {
	for {
		k.mu.Lock()
		ck, due := k.dueLocked()
		k.mu.Unlock()
		retry := time.Duration(0)
		if due {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := k.register(rctx, ck)
			cancel()
			switch {
			case err == nil:
				pub, _ := wireguard.ParseKey(ck.PublicKey)
				k.mu.Lock()
				k.registered = pub
				k.mu.Unlock()
				k.log.Info("WireGuard key registered", "generation", ck.Generation, "public_key", ck.PublicKey)
			case ctx.Err() != nil:
				return
			default:
				k.log.Warn("register WireGuard key", "generation", ck.Generation, "err", err, "retry_in", wgRetry)
				retry = wgRetry
			}
		}
		var timer <-chan time.Time
		if retry > 0 {
			timer = time.After(retry)
		}
		select {
		case <-ctx.Done():
			return
		case <-k.wake:
		case <-timer:
		}
	}
}

// wireGuardOverlay adds encryption to the overlay of st: the cell's key
// when the foundation encrypts, and every peer's key and port.
func (a *Agent) wireGuardOverlay(st api.CellState, ov *dataplane.Overlay) {
	key := a.keys.update(st)
	if st.Encryption != api.EncryptionWireGuard {
		return
	}
	ov.Cell.WireGuard = &dataplane.WireGuard{PrivateKey: key, ListenPort: a.keys.port}
	byUnderlay := map[string]api.Cell{}
	for _, p := range st.Peers {
		byUnderlay[p.UnderlayIP.String()+" "+p.Subnet.String()] = p
	}
	for i, p := range ov.Peers {
		c := byUnderlay[p.UnderlayIP.String()+" "+p.Subnet.String()]
		if c.WireGuardKey == "" {
			continue
		}
		pub, err := wireguard.ParseKey(c.WireGuardKey)
		if err != nil {
			a.log.Warn("skip a peer's WireGuard key", "peer", c.Name, "err", err)
			continue
		}
		ov.Peers[i].WireGuardKey, ov.Peers[i].WireGuardPort = pub, c.WireGuardPort
	}
}

// wireGuardEngine is the engine of the cell's WireGuard device, for the
// agent's status: "kernel", "userspace", or "" with encryption off.
func (a *Agent) wireGuardEngine() string {
	kind, _ := a.enforcer.dp.WireGuard()
	return kind
}

// setMTU sets the MTU new containers get, and reports whether it changed.
func (cs *containers) setMTU(mtu int) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.mtu == mtu {
		return false
	}
	cs.mtu = mtu
	return true
}

// syncMTU makes the containers' MTU the overlay's for st's encryption:
// the one new containers get, and that of every attached container.
func (a *Agent) syncMTU(st api.CellState) {
	mtu := dataplane.OverlayMTU(a.cell.MTU, st.Encryption == api.EncryptionWireGuard)
	if !a.containers.setMTU(mtu) {
		return
	}
	a.log.Info("container MTU changed", "mtu", mtu, "encryption", st.Encryption)
	for _, rec := range a.containers.list() {
		if rec.Deleting || !rec.Committed {
			continue
		}
		if err := dataplane.SetContainerMTU(a.nsPath, rec.NetNS, rec.IfName, rec.HostVeth, mtu); err != nil {
			a.log.Warn("set container MTU", "container", rec.ContainerID, "err", err)
		}
	}
}

package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/executor"
	"github.com/trellis-c2c/trellis/internal/identity"
	"github.com/trellis-c2c/trellis/internal/proxy"
)

// Where an instance finds its identity, as in Cloud Foundry.
const (
	// CredentialsDir holds instance.crt (leaf, then intermediate) and
	// instance.key inside an instance.
	CredentialsDir = "/etc/cf-instance-credentials"
	// SystemCertsDir holds the platform's trusted CA bundle inside an
	// instance (CF_SYSTEM_CERT_PATH).
	SystemCertsDir = "/etc/cf-system-certificates"
	// TLSPort is where the cell terminates TLS for every local instance.
	TLSPort = proxy.Port

	certFile   = "instance.crt"
	keyFile    = "instance.key"
	bundleFile = "trusted-ca.crt"
	// dataLink points at the directory of the current key and certificate:
	// swapping it replaces both at once (as Kubernetes' atomic writer does).
	dataLink = "..data"
)

// identities requests, renews and stores the identity certificate of every
// instance attached on the cell (the key is made here and never leaves),
// and serves each on TLSPort through one proxy for the whole cell.
type identities struct {
	log        *slog.Logger
	containers *containers
	state      func() (api.CellState, bool)
	certify    certifyFunc
	record     func(api.FlowEvent)
	dir        string // STATE/credentials/<instance>/
	sysDir     string // STATE/system-certs/
	alg        string
	proxy      *proxy.Server
	wake       chan struct{}

	mu    sync.Mutex
	creds map[string]*credential // by instance GUID
	// prepared are certificates issued for ADDs not committed yet, by
	// instance GUID: attach takes them.
	prepared map[string]preparedCert
	caGen    int64
	pool     *x509.CertPool

	renewals *prometheus.CounterVec
}

// credential is one instance's current certificate and what it was made for.
type credential struct {
	// busy serializes ensure for one instance (attach and the loop may
	// race): one request per renewal, never two.
	busy     sync.Mutex
	cert     *tls.Certificate
	caGen    int64
	fails    int
	retryAt  time.Time
	required bool   // client certificates required on TLSPort, as last set
	clients  string // the apps allowed to present a certificate, as last set
	caSet    int64
}

// preparedCert is a certificate prepare issued, with the CA generation it
// was issued under.
type preparedCert struct {
	cert  *tls.Certificate
	caGen int64
}

// certifyFunc asks the controller to certify an instance's key, in a
// request for the instance GUID: identities' one call to the controller.
type certifyFunc func(ctx context.Context, guid string, csrPEM []byte) (api.InstanceCertificate, error)

// identitiesConfig is what identities are made of.
type identitiesConfig struct {
	Log        *slog.Logger
	StateDir   string // the agent's: credentials/ and system-certs/ go there
	KeyType    string // of instance keys; "" is identity.KeyECDSAP256
	Registerer prometheus.Registerer
	// Containers are the instances attached on the cell: each is given a
	// certificate while it is committed and not being deleted.
	Containers *containers
	// State is the desired state last received, and whether it applied.
	State func() (api.CellState, bool)
	// Certify gets certificates from the controller.
	Certify certifyFunc
	// Record puts a handshake the TLS proxy refused into the flow log.
	Record func(api.FlowEvent)
}

func newIdentities(cfg identitiesConfig) (*identities, error) {
	id := &identities{log: cfg.Log, containers: cfg.Containers, state: cfg.State, certify: cfg.Certify, record: cfg.Record,
		dir: filepath.Join(cfg.StateDir, "credentials"), sysDir: filepath.Join(cfg.StateDir, "system-certs"),
		alg: cfg.KeyType, wake: make(chan struct{}, 1), creds: map[string]*credential{}, prepared: map[string]preparedCert{},
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_agent_instance_certificate_renewals_total",
			Help: "Identity certificate requests by result (issued, failed)."}, []string{"result"}),
	}
	if id.alg == "" {
		id.alg = identity.KeyECDSAP256
	}
	for _, d := range []string{id.dir, id.sysDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	cfg.Registerer.MustRegister(expiryCollector{id}, id.renewals)
	id.proxy = proxy.New(proxy.Config{Logger: cfg.Log.With("component", "tls-proxy"), Registerer: cfg.Registerer, OnRefused: id.refused})
	return id, nil
}

// credentialsDir is where instance's key and certificate are kept on the
// cell: a runtime bind-mounts it read-only at CredentialsDir.
func (id *identities) credentialsDir(instance string) string { return filepath.Join(id.dir, instance) }

// systemCertsDir is where the trusted CA bundle for the cell's instances is
// kept: a runtime bind-mounts it read-only at SystemCertsDir.
func (id *identities) systemCertsDir() string { return id.sysDir }

func (id *identities) poke() {
	select {
	case id.wake <- struct{}{}:
	default:
	}
}

// identitySleepMax is the longest the identities loop sleeps when nothing
// is due: a net under anything that changes without a poke, such as the
// first certificate attach issues outside the loop. It must stay below the
// shortest renewal lead: 7/8 of controller.MinInstanceCertValidity, 52 s.
const identitySleepMax = 30 * time.Second

// identitySleepMin is the shortest it sleeps (without a poke).
const identitySleepMin = 100 * time.Millisecond

// loop keeps every local instance's certificate current until ctx is done.
// It runs when the desired state changes (poke) and when the next
// certificate is due for renewal or a retry, not on a fixed tick: on a
// one-CPU cell a pass over every instance delays the proxy's requests,
// which share the agent's runtime with it.
func (id *identities) loop(ctx context.Context) {
	t := time.NewTimer(identitySleepMax)
	defer t.Stop()
	defer id.proxy.Close()
	for {
		next := id.reconcile(ctx)
		wait := identitySleepMax
		if !next.IsZero() {
			// Never sooner than identitySleepMin, whatever is due.
			wait = min(max(time.Until(next), identitySleepMin), identitySleepMax)
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-id.wake:
		case <-t.C:
		}
	}
}

// reconcile requests the certificates that are missing, due for renewal,
// or made for other routes or another CA; serves each local instance on
// TLSPort; and forgets instances that are gone. It returns when it is next
// due (zero: nothing is).
func (id *identities) reconcile(ctx context.Context) (next time.Time) {
	st, ready := id.state()
	if !ready {
		return time.Now().Add(time.Second)
	}
	id.updateCA(st.InstanceCA)
	live := map[string]record{}
	for _, rec := range id.containers.list() {
		if rec.Committed && !rec.Deleting {
			live[rec.Identity.InstanceGUID] = rec
		}
	}
	id.mu.Lock()
	var gone []string
	for guid := range id.creds {
		// live is older than creds: a commit since the list may have
		// attached guid, and its files must stay. attached looks again,
		// under id.mu, which a commit's attach takes after marking its
		// record committed.
		if _, ok := live[guid]; !ok && !id.attached(guid) {
			gone = append(gone, guid)
		}
	}
	id.mu.Unlock()
	for _, guid := range gone {
		id.detach(guid)
	}
	for _, rec := range live {
		if at := id.ensure(ctx, rec, st); !at.IsZero() && (next.IsZero() || at.Before(next)) {
			next = at
		}
	}
	return next
}

// attach issues rec's first certificate and serves it on TLSPort, before
// the runtime's ADD returns: the instance is served the moment it exists.
func (id *identities) attach(ctx context.Context, rec record) {
	if err := os.MkdirAll(id.credentialsDir(rec.Identity.InstanceGUID), 0o755); err != nil {
		id.log.Error("instance credentials", "instance", rec.Identity.InstanceGUID, "err", err)
		return
	}
	st, _ := id.state()
	id.updateCA(st.InstanceCA)
	id.ensure(ctx, rec, st)
}

// pendingKey is the key and request of an instance's first certificate,
// made before its registration, with the CA generation known then. Its key
// file is written while the registration is on its way (staged), so that
// only the certificate is left to write when the answer comes.
type pendingKey struct {
	keyPEM, csrPEM []byte
	caGen          int64

	staged   chan struct{} // closed when the staging below is done
	gen      string        // the generation directory holding the key
	stageErr error
}

// wait returns the generation the key was staged in, "" if its staging
// failed (the key is then written with the certificate).
func (k *pendingKey) wait() string {
	<-k.staged
	if k.stageErr != nil {
		return ""
	}
	return k.gen
}

// newKey makes the key and request of rec's first certificate, for its
// registration to carry: nil if the instance is served already (a
// repeated ADD is left to attach) or the key could not be made (attach
// tries again).
func (id *identities) newKey(rec record) *pendingKey {
	guid := rec.Identity.InstanceGUID
	st, _ := id.state()
	id.updateCA(st.InstanceCA)
	id.mu.Lock()
	_, served := id.creds[guid]
	caGen := id.caGen
	id.mu.Unlock()
	if served {
		return nil
	}
	keyPEM, csrPEM, err := identity.NewInstanceKeyAndCSR(id.alg, guid)
	if err != nil {
		id.log.Error("instance credentials", "instance", guid, "err", err)
		return nil
	}
	k := &pendingKey{keyPEM: keyPEM, csrPEM: csrPEM, caGen: caGen, staged: make(chan struct{})}
	go func() {
		defer close(k.staged)
		k.gen, k.stageErr = id.stage(guid, keyPEM)
	}()
	return k
}

// discard removes what key's staging wrote, for a registration that
// failed or a certificate that was refused: nothing of the instance's
// credentials is left where no certificate was written (attach starts
// again).
func (id *identities) discard(rec record, key *pendingKey) {
	gen := key.wait()
	if gen == "" {
		return
	}
	dir := id.credentialsDir(rec.Identity.InstanceGUID)
	if _, err := os.Readlink(filepath.Join(dir, dataLink)); err == nil {
		// A certificate of an earlier generation is in place.
		os.RemoveAll(filepath.Join(dir, gen))
		return
	}
	if err := os.RemoveAll(dir); err != nil {
		id.log.Warn("delete instance credentials", "instance", rec.Identity.InstanceGUID, "err", err)
	}
}

// prepare takes rec's first certificate from the answer to its
// registration, which carried key's request, and writes its key and
// certificate files while the container is still being wired; attach then
// serves it. A controller that did not sign at registration (older: no
// certificate and no refusal) is asked with POST .../certificate; one
// that refused is not asked again here. On failure attach tries again.
func (id *identities) prepare(ctx context.Context, rec record, key *pendingKey, ans api.Registered) {
	guid := rec.Identity.InstanceGUID
	if ans.Certificate == nil && ans.Refused != "" {
		id.discard(rec, key)
		id.log.Warn("issue instance certificate: will try again when it is attached", "instance", guid, "err", "refused at registration: "+ans.Refused)
		return
	}
	gen := key.wait()
	var cert *tls.Certificate
	var err error
	if ans.Certificate != nil {
		cert, err = id.store(guid, key.keyPEM, gen, *ans.Certificate)
	} else {
		cert, err = id.certifyKey(ctx, guid, key.keyPEM, key.csrPEM, gen)
	}
	if err != nil {
		id.discard(rec, key)
		id.log.Warn("issue instance certificate: will try again when it is attached", "instance", guid, "err", err)
		return
	}
	id.mu.Lock()
	id.prepared[guid] = preparedCert{cert, key.caGen}
	id.mu.Unlock()
	id.renewals.WithLabelValues("issued").Inc()
	id.log.Info("instance certificate issued", "instance", guid, "serial", cert.Leaf.SerialNumber.Text(16),
		"not_after", cert.Leaf.NotAfter.UTC(), "renew_at", renewAt(cert.Leaf).UTC())
}

// ensure makes rec's certificate current and its listener match, and
// returns when it is next due: the renewal, the retry of a failed one, or
// in a second if the listener could not be set.
func (id *identities) ensure(ctx context.Context, rec record, st api.CellState) (next time.Time) {
	guid := rec.Identity.InstanceGUID
	app := localApp(st, rec.Identity.AppGUID)
	hosts := hostSet(app.Hosts, "")
	now := time.Now()
	id.mu.Lock()
	c := id.creds[guid]
	if c == nil && !id.attached(guid) {
		// Detached since the caller looked (the loop's list of containers
		// is older than a DEL): nothing to issue or serve.
		id.mu.Unlock()
		return time.Time{}
	}
	if c == nil {
		c = &credential{}
		if pc, ok := id.prepared[guid]; ok {
			c.cert, c.caGen = pc.cert, pc.caGen
			delete(id.prepared, guid)
		} else if c.cert = id.load(guid); c.cert != nil {
			// A restarted agent keeps serving what it issued before (for
			// the CA it knows now; the routes are in the certificate).
			c.caGen = id.caGen
		}
		id.creds[guid] = c
	}
	id.mu.Unlock()
	c.busy.Lock()
	defer c.busy.Unlock()
	id.mu.Lock()
	if id.creds[guid] != c {
		id.mu.Unlock()
		return time.Time{} // detached meanwhile
	}
	due := c.cert == nil || !now.Before(renewAt(c.cert.Leaf)) || hostSet(c.cert.Leaf.DNSNames, guid) != hosts || c.caGen != id.caGen
	if due && now.Before(c.retryAt) {
		due = false
	}
	caGen := id.caGen
	id.mu.Unlock()
	if due {
		cert, err := id.issue(ctx, guid)
		id.mu.Lock()
		if err != nil {
			c.fails++
			c.retryAt = now.Add(min(time.Duration(1<<min(c.fails, 6))*time.Second, time.Minute))
			id.renewals.WithLabelValues("failed").Inc()
			left := "no certificate yet"
			if c.cert != nil {
				left = "serving the current one until it expires at " + c.cert.Leaf.NotAfter.UTC().Format(time.RFC3339)
			}
			id.log.Error("INSTANCE CERTIFICATE NOT RENEWED: "+left, "instance", guid, "err", err, "retry_in", c.retryAt.Sub(now).Round(time.Second))
		} else {
			c.cert, c.caGen, c.fails, c.retryAt = cert, caGen, 0, time.Time{}
			id.renewals.WithLabelValues("issued").Inc()
			id.log.Info("instance certificate issued", "instance", guid, "serial", cert.Leaf.SerialNumber.Text(16),
				"not_after", cert.Leaf.NotAfter.UTC(), "renew_at", renewAt(cert.Leaf).UTC(), "hosts", hosts)
		}
		id.mu.Unlock()
	}
	clients := strings.Join(app.TLSClients, ",")
	id.mu.Lock()
	cert, pool := c.cert, id.pool
	// A change of the allowed clients re-checks the open connections too:
	// a revoked app's connections are closed.
	changed := due || c.required != app.RequireClientCert || c.caSet != caGen || (app.RequireClientCert && c.clients != clients)
	c.required, c.caSet, c.clients = app.RequireClientCert, caGen, clients
	if cert != nil {
		next = renewAt(cert.Leaf)
	}
	// A failed request is retried at retryAt, also when the renewal it
	// failed was due earlier. (A past retryAt is one that nothing needs
	// any more: what was due came right again, as a route mapped back.)
	if c.retryAt.After(now) && (next.IsZero() || !next.After(now) || c.retryAt.Before(next)) {
		next = c.retryAt
	}
	id.mu.Unlock()
	// Without a certificate yet, Set still takes the port (handshakes are
	// refused until one comes), so that the app cannot bind it first.
	if !changed && id.proxy.Serving(guid) {
		return next
	}
	inst := proxy.Instance{ID: guid, NetNS: rec.NetNS, IP: rec.IP, AppPort: AppPort,
		RequireClientCert: app.RequireClientCert, ClientCAs: pool, Authorize: id.authorizer(rec.Identity.AppGUID)}
	if err := id.proxy.Set(inst, cert); err != nil {
		id.log.Error("serve instance on TLS port", "instance", guid, "port", TLSPort, "err", err)
		return time.Now().Add(time.Second)
	}
	return next
}

// expiryCollector reports, at each scrape, the seconds left of every local
// instance's certificate: exact when read, and no work between scrapes.
type expiryCollector struct{ id *identities }

var expiryDesc = prometheus.NewDesc("trellis_agent_instance_certificate_expiry_seconds",
	"Seconds until the identity certificate of a local instance expires (alarm well before 0).", []string{"instance"}, nil)

func (e expiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- expiryDesc }

func (e expiryCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	e.id.mu.Lock()
	defer e.id.mu.Unlock()
	for guid, c := range e.id.creds {
		if c.cert != nil {
			ch <- prometheus.MustNewConstMetric(expiryDesc, prometheus.GaugeValue, c.cert.Leaf.NotAfter.Sub(now).Seconds(), guid)
		}
	}
}

// hostSet is names but except, lowercased, sorted and joined: how the route
// names of an app and of a certificate (whose DNS names also hold the
// instance GUID) are compared.
func hostSet(names []string, except string) string {
	var hosts []string
	for _, n := range names {
		if n = strings.ToLower(n); n != except {
			hosts = append(hosts, n)
		}
	}
	slices.Sort(hosts)
	return strings.Join(slices.Compact(hosts), ",")
}

// renewAt is when a certificate is renewed: 30 minutes before it expires
// when it is valid longer than 4 hours, else at 7/8 of its validity (as
// Cloud Foundry's executor does).
func renewAt(leaf *x509.Certificate) time.Time {
	validity := leaf.NotAfter.Sub(leaf.NotBefore)
	if validity > 4*time.Hour {
		return leaf.NotAfter.Add(-30 * time.Minute)
	}
	return leaf.NotBefore.Add(validity / 8 * 7)
}

// issue makes a new key and asks the controller to certify it.
func (id *identities) issue(ctx context.Context, guid string) (*tls.Certificate, error) {
	keyPEM, csrPEM, err := identity.NewInstanceKeyAndCSR(id.alg, guid)
	if err != nil {
		return nil, err
	}
	return id.certifyKey(ctx, guid, keyPEM, csrPEM, "")
}

// certifyKey has the controller sign csrPEM, made with keyPEM, and
// writes both files (the key's already, if staged in generation gen).
func (id *identities) certifyKey(ctx context.Context, guid string, keyPEM, csrPEM []byte, gen string) (*tls.Certificate, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := id.certify(ctx, guid, csrPEM)
	if err != nil {
		return nil, fmt.Errorf("request certificate: %w", err)
	}
	return id.store(guid, keyPEM, gen, resp)
}

// store checks the certificate the controller signed for keyPEM and writes
// both files: the certificate into generation gen, where the key was
// staged, or, with gen "", both into a new one.
func (id *identities) store(guid string, keyPEM []byte, gen string, resp api.InstanceCertificate) (*tls.Certificate, error) {
	cert, err := tls.X509KeyPair([]byte(resp.Certificate), keyPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate from the controller: %w", err)
	}
	if now := time.Now(); now.After(cert.Leaf.NotAfter) {
		return nil, fmt.Errorf("certificate from the controller expired at %s", cert.Leaf.NotAfter)
	}
	if gen == "" {
		var err error
		if gen, err = id.stage(guid, keyPEM); err != nil {
			return nil, err
		}
	}
	if err := id.finish(guid, gen, []byte(resp.Certificate)); err != nil {
		return nil, err
	}
	return &cert, nil
}

// The instance's key and certificate are replaced at once: both go into a
// new generation directory, and one rename of the dataLink symlink switches
// to it (the files the instance reads are symlinks through dataLink). stage
// makes the generation and writes the key; finish writes the certificate
// and switches.

// stage makes a new generation directory of the instance's credentials
// with its key, and the symlinks to both files if there are none yet
// (they dangle until finish makes dataLink). It returns the generation.
func (id *identities) stage(guid string, keyPEM []byte) (string, error) {
	dir := id.credentialsDir(guid)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	gen := "..v" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if err := os.Mkdir(filepath.Join(dir, gen), 0o755); err != nil {
		return "", err
	}
	// The key is the instance's alone: its own user owns it (mode 0400),
	// as the executor runs the instance (root reads it for the proxy).
	key := filepath.Join(dir, gen, keyFile)
	if err := os.WriteFile(key, keyPEM, 0o400); err != nil {
		return "", err
	}
	if uid := executor.UserID(guid); os.Geteuid() == 0 {
		if err := os.Chown(key, uid, uid); err != nil {
			return "", fmt.Errorf("give the key of instance %s to its user: %w", guid, err)
		}
	}
	for _, f := range []string{certFile, keyFile} {
		if _, err := os.Lstat(filepath.Join(dir, f)); err != nil {
			if err := os.Symlink(filepath.Join(dataLink, f), filepath.Join(dir, f)); err != nil {
				return "", err
			}
		}
	}
	return gen, nil
}

// finish writes the certificate into generation gen, which stage made,
// and switches dataLink to it; the generation it replaces is deleted.
func (id *identities) finish(guid, gen string, certPEM []byte) error {
	dir := id.credentialsDir(guid)
	if err := os.WriteFile(filepath.Join(dir, gen, certFile), certPEM, 0o644); err != nil {
		return err
	}
	old, err := os.Readlink(filepath.Join(dir, dataLink))
	if err != nil {
		// The first: making the link is as atomic as renaming one.
		return os.Symlink(gen, filepath.Join(dir, dataLink))
	}
	tmp := filepath.Join(dir, "..data_tmp")
	os.Remove(tmp)
	if err := os.Symlink(gen, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, dataLink)); err != nil {
		return err
	}
	if old != gen && strings.HasPrefix(old, "..v") {
		os.RemoveAll(filepath.Join(dir, old))
	}
	return nil
}

// load reads the certificate a previous run wrote, if it is still valid.
func (id *identities) load(guid string) *tls.Certificate {
	dir := id.credentialsDir(guid)
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, certFile), filepath.Join(dir, keyFile))
	if err != nil || time.Now().After(cert.Leaf.NotAfter) {
		return nil
	}
	return &cert
}

// attached reports whether the container of instance guid is committed
// and not being deleted. The caller holds id.mu: a release marks its
// record before it detaches, so an ensure that found the record attached
// made its credential before detach looks for it.
func (id *identities) attached(guid string) bool {
	if id.containers == nil {
		return true
	}
	for _, rec := range id.containers.list() {
		if rec.Identity.InstanceGUID == guid {
			return rec.Committed && !rec.Deleting
		}
	}
	return false
}

// detach stops serving an instance and deletes its key, after an ensure
// running for it finished (which would otherwise write them again).
func (id *identities) detach(guid string) {
	id.mu.Lock()
	c := id.creds[guid]
	delete(id.creds, guid)
	delete(id.prepared, guid)
	id.mu.Unlock()
	if c != nil {
		c.busy.Lock()
		defer c.busy.Unlock()
	}
	id.proxy.Remove(guid)
	if err := os.RemoveAll(id.credentialsDir(guid)); err != nil {
		id.log.Warn("delete instance credentials", "instance", guid, "err", err)
	}
}

// updateCA writes the trusted bundle for the cell's instances when the
// instance CA changed.
func (id *identities) updateCA(ca api.InstanceCA) {
	id.mu.Lock()
	defer id.mu.Unlock()
	if ca.Bundle == "" || (ca.Generation == id.caGen && id.pool != nil) {
		return
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(ca.Bundle)) {
		id.log.Error("instance CA bundle from the controller has no certificate", "generation", ca.Generation)
		return
	}
	if err := identity.WriteFileAtomic(filepath.Join(id.sysDir, bundleFile), []byte(ca.Bundle), 0o644); err != nil {
		id.log.Error("write the trusted CA bundle", "err", err)
		return
	}
	if id.caGen != 0 {
		id.log.Info("instance CA changed: renewing every instance certificate", "generation", ca.Generation, "rotating", ca.Rotating)
	}
	id.caGen, id.pool = ca.Generation, pool
}

// authorizer checks, at each handshake on TLSPort of an app that requires
// client certificates, that a policy allows the peer's app to reach dest on
// tcp/TLSPort — from the latest desired state.
func (id *identities) authorizer(dest string) func(*x509.Certificate) error {
	return func(peer *x509.Certificate) error {
		src := identity.PeerOf(peer).App
		st, _ := id.state()
		if src == "" {
			return errors.New("client certificate names no app")
		}
		if slices.Contains(localApp(st, dest).TLSClients, src) {
			return nil
		}
		return fmt.Errorf("client certificate of app %s is not allowed by a policy to reach %s on tcp/%d",
			appName(st, src), appName(st, dest), TLSPort)
	}
}

// refused records a refused handshake in the flow log.
func (id *identities) refused(r proxy.Refusal) {
	st, _ := id.state()
	ev := api.FlowEvent{Time: time.Now().UTC(), Verdict: "denied", Protocol: "tcp", SrcIP: r.Peer.Addr().String(),
		SrcPort: int(r.Peer.Port()), DstPort: TLSPort, DstInstance: r.Instance, SrcApp: r.PeerApp, Reason: "tls: " + r.Reason}
	for _, ep := range st.Endpoints {
		switch {
		case ep.Instance == r.Instance:
			ev.DstIP, ev.DstApp, ev.DstAppName = ep.IP.String(), ep.AppGUID, ep.AppName
		case ep.IP == r.Peer.Addr():
			ev.SrcInstance = ep.Instance
			if ev.SrcApp == "" {
				ev.SrcApp = ep.AppGUID
			}
		}
	}
	ev.SrcAppName = appName(st, ev.SrcApp)
	id.record(ev)
}

// localApp is what st says of app on this cell.
func localApp(st api.CellState, app string) api.LocalApp {
	for _, la := range st.LocalApps {
		if la.GUID == app {
			return la
		}
	}
	return api.LocalApp{GUID: app}
}

// appName names an app from st, or returns its GUID.
func appName(st api.CellState, guid string) string {
	for _, ep := range st.Endpoints {
		if ep.AppGUID == guid && ep.AppName != "" {
			return ep.AppName
		}
	}
	for _, app := range st.Apps {
		if app.GUID == guid {
			return app.Name
		}
	}
	return guid
}

package agent_test

import (
	"context"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-c2c/trellis/internal/agent"
	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/controller"
	"github.com/trellis-c2c/trellis/internal/executor"
	"github.com/trellis-c2c/trellis/internal/netns"
)

// handshake shakes hands with to:61443 from the namespace at ns, trusting
// the bundle of the agent's instances, and returns the served leaf.
func handshake(t *testing.T, r *running, ns string, to netip.Addr, name string) (*x509.Certificate, error) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(r.cfg.StateDir, "system-certs", "trusted-ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b)
	var leaf *x509.Certificate
	err = netns.Do(ns, func() error {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", netip.AddrPortFrom(to, agent.TLSPort).String(),
			&tls.Config{RootCAs: pool, ServerName: name})
		if err != nil {
			return err
		}
		defer c.Close()
		leaf = c.ConnectionState().PeerCertificates[0]
		return nil
	})
	return leaf, err
}

// metric reads one sample of the agent's metrics: the first line that
// starts with prefix.
func metric(t *testing.T, r *running, prefix string) (float64, bool) {
	t.Helper()
	b, err := api.NewAgentClient(r.cfg.Socket).Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(prefix) + `\S* (\S+)$`).FindSubmatch(b)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	return v, err == nil
}

// TestInstanceIdentity follows one instance's identity on a cell: its key
// (RSA 3072 here) and certificate are on disk and served on 61443 the
// moment CNI ADD returns; with the controller down, renewal fails, the
// agent keeps serving the valid certificate and says so (log, metrics);
// with the controller back it renews; CNI DEL frees the port and deletes
// the key.
func TestInstanceIdentity(t *testing.T) {
	w := newWorld(t, "ident", 1)
	c := startController(t, w, controller.Config{StateDir: t.TempDir(), Listen: freePort(t), InstanceCertValidity: time.Minute})
	cfg := w.agentCfg(t, c, 1)
	cfg.InstanceKeyType = "rsa-3072"
	a := w.startAgent(t, cfg)
	p := installPlugin(t)
	list := cniList(t, a)
	app := createApp(t, c, "web").GUID
	srv := w.newContainer("srv", 1, app, "inst-srv")
	srvGUID := instGUID("inst-srv")
	cli := w.newContainer("cli", 1, app, "inst-cli")
	for _, ctr := range []*container{srv, cli} {
		if err := w.add(p, list, ctr, ctr.rt); err != nil {
			t.Fatalf("ADD %s: %v", ctr.id, err)
		}
	}

	// Served the moment ADD returned: no polling here.
	leaf, err := handshake(t, a, cli.ns, srv.ip, srvGUID)
	if err != nil {
		t.Fatalf("handshake with 61443 right after ADD: %v", err)
	}
	if leaf.Subject.CommonName != srvGUID || len(leaf.IPAddresses) != 1 || leaf.IPAddresses[0].String() != srv.ip.String() {
		t.Errorf("served certificate CN %q IPs %v, want %s and %s", leaf.Subject.CommonName, leaf.IPAddresses, srvGUID, srv.ip)
	}
	if pub, ok := leaf.PublicKey.(*rsa.PublicKey); !ok || pub.N.BitLen() != 3072 {
		t.Errorf("served key %T, want RSA 3072 (--instance-key-type rsa-3072)", leaf.PublicKey)
	}
	dir := filepath.Join(cfg.StateDir, "credentials", srvGUID)
	onDisk, err := tls.LoadX509KeyPair(filepath.Join(dir, "instance.crt"), filepath.Join(dir, "instance.key"))
	if err != nil || !onDisk.Leaf.Equal(leaf) {
		t.Errorf("credentials on disk: %v; the served certificate must be the one in %s", err, dir)
	}
	// The instance's own user alone may read its key.
	if fi, err := os.Stat(filepath.Join(dir, "instance.key")); err != nil || fi.Mode().Perm() != 0o400 ||
		fi.Sys().(*syscall.Stat_t).Uid != uint32(executor.UserID(srvGUID)) {
		t.Errorf("instance.key: %v %v, want mode 0400 owned by uid %d", fi.Mode(), err, executor.UserID(srvGUID))
	}
	if v, ok := metric(t, a, `trellis_agent_instance_certificate_expiry_seconds{instance="`+srvGUID+`"}`); !ok || v <= 0 || v > 70 {
		t.Errorf("expiry metric = %v %v, want the seconds left of a one-minute certificate", v, ok)
	}
	for _, name := range []string{"go_gc_duration_seconds_count", "process_resident_memory_bytes"} {
		if v, ok := metric(t, a, name); !ok || v < 0 {
			t.Errorf("metric %s = %v %v, want the runtime's and the process's figures", name, v, ok)
		}
	}

	// The controller goes away; renewal (at 7/8 of the minute) fails, and
	// the valid certificate keeps being served.
	c.stop()
	poll(t, 90*time.Second, "a failed renewal", func() (bool, error) {
		v, _ := metric(t, a, `trellis_agent_instance_certificate_renewals_total{result="failed"}`)
		return v > 0, nil
	})
	again, err := handshake(t, a, cli.ns, srv.ip, srvGUID)
	if err != nil || !again.Equal(leaf) {
		t.Errorf("61443 after a failed renewal: %v; want the valid certificate still served", err)
	}
	if v, ok := metric(t, a, `trellis_agent_instance_certificate_expiry_seconds{instance="`+srvGUID+`"}`); !ok || v <= 0 || v > 10 {
		t.Errorf("expiry metric after the failed renewal = %v %v, want the few seconds left", v, ok)
	}

	// Back: the next retry renews.
	c.start()
	poll(t, 60*time.Second, "a renewed certificate on 61443", func() (bool, error) {
		got, err := handshake(t, a, cli.ns, srv.ip, srvGUID)
		return err == nil && !got.Equal(leaf), nil
	})

	// A restarted agent serves 61443 again from the certificate on disk.
	if err := a.stop(); err != nil {
		t.Fatalf("agent.Run = %v after cancel, want nil", err)
	}
	restarted := cfg
	restarted.JoinToken, restarted.CACertFile, restarted.ControllerURLs = "", "", nil
	a = w.startAgent(t, restarted)
	poll(t, 10*time.Second, "61443 served again after the agent's restart", func() (bool, error) {
		_, err := handshake(t, a, cli.ns, srv.ip, srvGUID)
		return err == nil, nil
	})

	// DEL frees everything: the port, the key.
	if err := w.del(p, list, srv); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("credentials of a deleted container: %v, want none", err)
	}
	err = netns.Do(srv.ns, func() error {
		ln, err := net.Listen("tcp4", ":61443")
		if err == nil {
			ln.Close()
		}
		return err
	})
	if err != nil {
		t.Errorf("listen on 61443 in the deleted container's namespace: %v, want the port free", err)
	}
}

package agent

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/identity"
)

// fakeRegistry answers registrations as a controller would, by answer.
type fakeRegistry struct {
	mu     sync.Mutex
	regs   []api.InstanceRegistration
	answer func(reg api.InstanceRegistration) (api.Registered, error)
}

func (f *fakeRegistry) RegisterInstanceCSR(_ context.Context, _ string, reg api.InstanceRegistration) (api.Registered, error) {
	f.mu.Lock()
	f.regs = append(f.regs, reg)
	f.mu.Unlock()
	return f.answer(reg)
}

func (f *fakeRegistry) DeregisterInstance(context.Context, string) error { return nil }

// TestPreparationCertificate checks how an ADD's preparation gets the
// instance's first certificate: from the registration, which carries the
// CSR (one call to the controller); from POST .../certificate when the
// controller answered the registration without signing (an older one,
// 204 alone: the fallback); not at all, and no second request, when the
// controller refused the CSR at registration (attach tries again). When
// it got one, the key and certificate files are written before the
// preparation is done, for the key whose CSR was sent.
func TestPreparationCertificate(t *testing.T) {
	ca, err := identity.NewInstanceCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	const (
		guid  = "aa000000-0000-4000-8000-000000000001"
		app   = "ab000000-0000-4000-8000-000000000002"
		space = "ac000000-0000-4000-8000-000000000003"
		org   = "ad000000-0000-4000-8000-000000000004"
	)
	ip := netip.MustParseAddr("10.255.1.5")
	sign := func(csr string) (api.InstanceCertificate, error) {
		chain, leaf, err := ca.SignInstance([]byte(csr), identity.Instance{GUID: guid, AppGUID: app, SpaceGUID: space, OrgGUID: org, IP: ip},
			"trellis.internal", time.Hour, time.Now())
		if err != nil {
			return api.InstanceCertificate{}, err
		}
		return api.InstanceCertificate{Certificate: string(chain), NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter,
			CA: api.InstanceCA{Generation: 1, Bundle: string(ca.Bundle())}}, nil
	}
	for _, tt := range []struct {
		name     string
		answer   func(reg api.InstanceRegistration) (api.Registered, error)
		requests int  // of POST .../certificate
		issued   bool // files written, certificate prepared
	}{
		{"signed at registration", func(reg api.InstanceRegistration) (api.Registered, error) {
			ic, err := sign(reg.CSR)
			return api.Registered{Certificate: &ic}, err
		}, 0, true},
		{"older controller: 204", func(api.InstanceRegistration) (api.Registered, error) { return api.Registered{}, nil }, 1, true},
		{"refused at registration", func(api.InstanceRegistration) (api.Registered, error) {
			return api.Registered{Refused: "400 key too weak"}, nil
		}, 0, false},
		{"registration failed", func(api.InstanceRegistration) (api.Registered, error) {
			return api.Registered{}, errors.New("409 instance is on another cell")
		}, 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			log := slog.New(slog.NewTextHandler(io.Discard, nil))
			rec := record{ContainerID: "ctr1", IP: ip, Identity: api.Identity{InstanceGUID: guid, AppGUID: app}, Registering: true}
			cs := &containers{records: map[string]*record{rec.ContainerID: &rec}}
			var mu sync.Mutex
			var csrs []string
			id, err := newIdentities(identitiesConfig{Log: log, StateDir: t.TempDir(), Registerer: prometheus.NewRegistry(), Containers: cs,
				State: func() (api.CellState, bool) {
					return api.CellState{InstanceCA: api.InstanceCA{Generation: 1, Bundle: string(ca.Bundle())}}, true
				},
				Certify: func(_ context.Context, _ string, csrPEM []byte) (api.InstanceCertificate, error) {
					mu.Lock()
					csrs = append(csrs, string(csrPEM))
					mu.Unlock()
					return sign(string(csrPEM))
				}})
			if err != nil {
				t.Fatal(err)
			}
			defer id.proxy.Close()
			reg := &fakeRegistry{answer: tt.answer}
			s := &socketServer{log: log, containers: cs, registry: reg, certs: id, applyPolicy: func(context.Context) {}}
			cs.mu.Lock()
			p := s.prepare(rec)
			cs.mu.Unlock()
			<-p.done

			if len(reg.regs) != 1 || reg.regs[0].CSR == "" || reg.regs[0].IP != ip.String() || reg.regs[0].AppGUID != app {
				t.Fatalf("registrations %+v, want one, for %s, with a CSR", reg.regs, ip)
			}
			csr, err := identity.ParseInstanceCSR([]byte(reg.regs[0].CSR))
			if err != nil {
				t.Fatal(err)
			}
			if len(csrs) != tt.requests {
				t.Errorf("%d certificate requests after the registration, want %d", len(csrs), tt.requests)
			}
			for _, c := range csrs {
				if c != reg.regs[0].CSR {
					t.Error("the certificate request is not for the CSR the registration carried")
				}
			}
			id.mu.Lock()
			pc, prepared := id.prepared[guid]
			id.mu.Unlock()
			dir := id.credentialsDir(guid)
			kp, ferr := tls.LoadX509KeyPair(filepath.Join(dir, certFile), filepath.Join(dir, keyFile))
			if !tt.issued {
				if prepared || ferr == nil {
					t.Errorf("prepared %v, files %v: want neither", prepared, ferr)
				}
				// The key written while the registration was on its
				// way is gone with its directory.
				if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("the instance's credentials directory after no certificate: %v, want none", err)
				}
				return
			}
			switch {
			case !prepared:
				t.Error("no certificate prepared for attach")
			case ferr != nil:
				t.Errorf("credentials when the preparation was done: %v", ferr)
			case !kp.Leaf.Equal(pc.cert.Leaf) || kp.Leaf.Subject.CommonName != guid:
				t.Errorf("files hold %q, prepared %q, want the same certificate for %s", kp.Leaf.Subject.CommonName, pc.cert.Leaf.Subject.CommonName, guid)
			case !csr.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(kp.Leaf.PublicKey):
				t.Error("the certificate is not for the key whose CSR the registration carried")
			}
			if p.err != nil || p.certificate == 0 {
				t.Errorf("preparation err %v, certificate at %v", p.err, p.certificate)
			}
		})
	}
}

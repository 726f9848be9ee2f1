package identity

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestLoadOrCreateCA(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreateCA(dir, "test CA")
	if err != nil {
		t.Fatalf("LoadOrCreateCA(new) = %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, CAKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("CA key mode = %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	again, err := LoadOrCreateCA(dir, "test CA")
	if err != nil {
		t.Fatalf("LoadOrCreateCA(existing) = %v", err)
	}
	if !again.Cert.Equal(ca.Cert) {
		t.Error("reloaded CA differs from the one created")
	}

	cert, err := ca.ServerCertificate([]string{"localhost", "127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	for _, host := range []string{"localhost", "127.0.0.1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: host}); err != nil {
			t.Errorf("server certificate does not verify for %s: %v", host, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "evil.example"}); err == nil {
		t.Error("server certificate verifies for a name it was not issued for")
	}

	// Half a CA is refused, not silently replaced.
	os.Remove(filepath.Join(dir, CAKeyFile))
	if _, err := LoadOrCreateCA(dir, "test CA"); err == nil {
		t.Error("LoadOrCreateCA(cert without key) = nil error, want one")
	}
}

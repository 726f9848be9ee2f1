package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCredentialFiles: an instance's key and certificate are written into
// a generation directory (the key first, as while a registration is on its
// way; the certificate when it comes), and the files the instance reads
// switch to a new generation at once; the replaced generation is deleted.
func TestCredentialFiles(t *testing.T) {
	id := &identities{dir: t.TempDir()}
	const guid = "aa000000-0000-4000-8000-000000000001"
	dir := id.credentialsDir(guid)
	read := func(f string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatalf("read %s: %v", f, err)
		}
		return string(b)
	}
	gens := func() []string {
		t.Helper()
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), "..v") {
				out = append(out, e.Name())
			}
		}
		return out
	}
	for i, v := range []struct{ key, cert string }{{"key one", "cert one"}, {"key two", "cert two"}} {
		gen, err := id.stage(guid, []byte(v.key))
		if err != nil {
			t.Fatalf("stage %d: %v", i, err)
		}
		if i == 0 {
			// Staged, not finished: nothing to read yet.
			if _, err := os.ReadFile(filepath.Join(dir, keyFile)); err == nil {
				t.Error("the key is readable through its link before the certificate is written")
			}
		} else if got := read(keyFile); got != "key one" {
			t.Errorf("while the next is staged, the key read is %q, want the current one", got)
		}
		if err := id.finish(guid, gen, []byte(v.cert)); err != nil {
			t.Fatalf("finish %d: %v", i, err)
		}
		if k, c := read(keyFile), read(certFile); k != v.key || c != v.cert {
			t.Errorf("after write %d: key %q, certificate %q; want %q, %q", i, k, c, v.key, v.cert)
		}
		if g := gens(); len(g) != 1 || g[0] != gen {
			t.Errorf("after write %d: generations %v, want only %s", i, g, gen)
		}
		fi, err := os.Stat(filepath.Join(dir, keyFile))
		if err != nil || fi.Mode().Perm() != 0o400 {
			t.Errorf("key file: %v, %v; want mode 0400", fi, err)
		}
	}
}

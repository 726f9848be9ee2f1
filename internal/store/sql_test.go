package store

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestSQLiteFilesPrivate checks that the SQLite database and its -wal and
// -shm files, which hold the instance CA's keys, are readable by their
// owner only — whatever the umask, and for a database created before with
// wider permissions.
func TestSQLiteFilesPrivate(t *testing.T) {
	old := syscall.Umask(0o022) // the usual umask, which would give 0644
	defer syscall.Umask(old)
	for _, existing := range []bool{false, true} {
		dir := t.TempDir()
		path := filepath.Join(dir, "trellis.db")
		if existing {
			for _, p := range []string{path, path + "-wal", path + "-shm"} {
				if err := os.WriteFile(p, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		s, err := Open(t.Context(), path)
		if err != nil {
			t.Fatalf("Open(%s) = %v", path, err)
		}
		if _, err := s.CreateOrg(t.Context(), "written"); err != nil { // a write: the WAL grows
			t.Fatal(err)
		}
		for _, p := range []string{path, path + "-wal", path + "-shm"} {
			fi, err := os.Stat(p)
			if err != nil {
				t.Errorf("after a write (existing files %v): %v", existing, err)
				continue
			}
			if perm := fi.Mode().Perm(); perm != 0o600 {
				t.Errorf("mode of %s (existing files %v) = %v, want -rw-------", filepath.Base(p), existing, fi.Mode())
			}
		}
		s.Close()
	}
}

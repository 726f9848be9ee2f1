package agent

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/identity"
)

// The desired state in force is kept on disk as a snapshot (lastStateFile,
// the whole state as JSON) and a journal (stateJournalFile) of the deltas
// applied since, one JSON line each. Saving a change appends the change:
// writing the whole state after every change cost most of an agent's CPU
// per change (its JSON is the size of every endpoint of the foundation).
// The journal is folded into a new snapshot when it grows past the
// snapshot's size, so the bytes written per change stay proportional to
// the change, and a restart replays at most a snapshot's worth.
//
// The journal's first line names the snapshot it extends (its SHA-256): a
// snapshot replaced by anything else (a crash between the two writes of a
// compaction, or a file restored by hand) makes the journal not apply, and
// the snapshot alone is the state. Replay stops at the first line that
// does not parse or does not fit (a line torn by a crash): what was saved
// before it is kept.
const stateJournalFile = "state.journal"

// journalHeader is the journal's first line.
type journalHeader struct {
	Snapshot string `json:"snapshot"` // hex SHA-256 of the snapshot file
}

// stateFile keeps the desired state in force in a directory. It is not
// safe for concurrent use (the agent saves from its one apply loop).
type stateFile struct {
	dir string

	// Of the files as last written or read: the revision of the state they
	// hold, the snapshot's size, and the journal's (nil: the next save
	// writes a snapshot; a journal read at start is never appended to,
	// since its tail may be torn).
	rev          int64
	snapBytes    int
	journal      *os.File
	journalBytes int
	// snapshots and appends count the writes, for tests.
	snapshots, appends int
}

func newStateFile(dir string) *stateFile { return &stateFile{dir: dir, rev: -1} }

// load returns the state the files hold: the snapshot with the journal's
// deltas applied. ok is false when there is no readable snapshot.
func (s *stateFile) load() (st api.CellState, ok bool) {
	b, err := os.ReadFile(filepath.Join(s.dir, lastStateFile))
	if err != nil || json.Unmarshal(b, &st) != nil {
		return api.CellState{}, false
	}
	st = replay(st, snapshotSum(b), filepath.Join(s.dir, stateJournalFile))
	s.rev = st.Revision
	return st, true
}

// replay applies to st the deltas of the journal at path, if it extends the
// snapshot whose sum is sum, up to the first that does not fit.
func replay(st api.CellState, sum, path string) api.CellState {
	f, err := os.Open(path)
	if err != nil {
		return st
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<30)
	var h journalHeader
	if !sc.Scan() || json.Unmarshal(sc.Bytes(), &h) != nil || h.Snapshot != sum {
		return st
	}
	for sc.Scan() {
		var d api.CellDelta
		if json.Unmarshal(sc.Bytes(), &d) != nil {
			break
		}
		next, err := st.Apply(d)
		if err != nil {
			break
		}
		st = next
	}
	return st
}

func snapshotSum(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// save keeps st, which d (nil: unknown) took the saved state to. A delta
// based on the saved revision is appended to the journal; anything else
// (a whole state, the first save after start, a journal grown past the
// snapshot) writes a snapshot. Both are flushed to disk before save
// returns, as the agent's saved state always was.
func (s *stateFile) save(st api.CellState, d *api.CellDelta) error {
	if d != nil && s.journal != nil && d.Base == s.rev && d.Revision == st.Revision {
		if d.Empty() && d.Base == d.Revision {
			return nil
		}
		line, err := json.Marshal(d)
		if err != nil {
			return err
		}
		if s.journalBytes+len(line)+1 <= s.snapBytes {
			if err := s.append(append(line, '\n')); err == nil {
				s.rev = st.Revision
				return nil
			}
			// Start afresh with a snapshot.
		}
	}
	return s.snapshot(st)
}

// append writes line at the journal's end and flushes it to disk.
func (s *stateFile) append(line []byte) error {
	if _, err := s.journal.Write(line); err != nil {
		s.closeJournal()
		return err
	}
	if err := syscall.Fdatasync(int(s.journal.Fd())); err != nil {
		s.closeJournal()
		return err
	}
	s.journalBytes += len(line)
	s.appends++
	return nil
}

// snapshot writes st whole and starts an empty journal after it.
func (s *stateFile) snapshot(st api.CellState) error {
	s.closeJournal()
	s.rev = -1
	// Compact JSON: indenting a state of a thousand endpoints costs five
	// times the encoding.
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := identity.WriteFileAtomic(filepath.Join(s.dir, lastStateFile), b, 0o600); err != nil {
		return err
	}
	s.rev, s.snapBytes = st.Revision, len(b)
	s.snapshots++
	h, err := json.Marshal(journalHeader{Snapshot: snapshotSum(b)})
	if err != nil {
		return err
	}
	h = append(h, '\n')
	path := filepath.Join(s.dir, stateJournalFile)
	if err := identity.WriteFileAtomic(path, h, 0o600); err != nil {
		// The snapshot holds st; without a journal the next save writes
		// another.
		return fmt.Errorf("start the state journal: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("open the state journal: %w", err)
	}
	s.journal, s.journalBytes = f, len(h)
	return nil
}

func (s *stateFile) closeJournal() {
	if s.journal != nil {
		s.journal.Close()
		s.journal = nil
	}
}

// close releases the journal's file.
func (s *stateFile) close() { s.closeJournal() }

// SavedState returns the desired state an agent with the state directory
// dir keeps on disk (the one it applies at start when no controller
// answers), and whether there is one.
func SavedState(dir string) (api.CellState, bool) { return newStateFile(dir).load() }

package storetest

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Postgres is a PostgreSQL server of one test's own: a cluster made with
// initdb in a temporary directory, serving on loopback at a free port, run
// as the postgres user. A test may stop, kill and start it again — faults
// that must never touch the shared server of $TRELLIS_TEST_POSTGRES.
type Postgres struct {
	t    testing.TB
	bin  string // directory of initdb and postgres
	dir  string // cluster data directory (owned by postgres)
	port int
	cred *syscall.Credential
	cmd  *exec.Cmd
	done <-chan struct{} // closed when cmd exited
}

// StartPostgres makes and starts a private PostgreSQL server for t, stopped
// and removed when t ends. It needs root (to run the server as postgres)
// and PostgreSQL's server binaries; without them t is skipped, or fails
// when $TRELLIS_TEST_POSTGRES is set (then the machine is meant to run
// PostgreSQL tests).
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	bin := postgresBin()
	u, uerr := user.Lookup("postgres")
	if bin == "" || uerr != nil || os.Geteuid() != 0 {
		msg := fmt.Sprintf("a private PostgreSQL server needs root, a postgres user and PostgreSQL's binaries (bin %q, user: %v)", bin, uerr)
		if os.Getenv(EnvPostgres) != "" || os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	// Not t.TempDir: its parents are root's only, and the server runs as
	// postgres.
	dir, err := os.MkdirTemp("", "trellis-pg-")
	if err != nil {
		t.Fatal(err)
	}
	p := &Postgres{t: t, bin: bin, dir: dir, cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	t.Cleanup(func() {
		p.Stop()
		os.RemoveAll(dir)
	})
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", filepath.Join(dir, "data"), "-U", "postgres",
		"-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	initdb.Dir = dir
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	p.port = freePort(t)
	p.Start()
	return p
}

// postgresBin finds the newest PostgreSQL server binaries installed.
func postgresBin() string {
	ds, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(ds, func(i, j int) bool {
		a, _ := strconv.Atoi(filepath.Base(filepath.Dir(ds[i])))
		b, _ := strconv.Atoi(filepath.Base(filepath.Dir(ds[j])))
		return a > b
	})
	for _, d := range ds {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			return d
		}
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		return filepath.Dir(p)
	}
	return ""
}

func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// AdminURL is the URL of the server's postgres database as its superuser.
func (p *Postgres) AdminURL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.port)
}

// NewDatabase creates a database on the server and returns its URL.
func (p *Postgres) NewDatabase(name string) string {
	p.t.Helper()
	db, err := sql.Open("pgx", p.AdminURL())
	if err != nil {
		p.t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		p.t.Fatalf("create database %s: %v", name, err)
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", p.port, name)
}

// Start starts the server (again, after Stop or Kill, on the same port and
// data) and waits until it accepts connections.
func (p *Postgres) Start() {
	p.t.Helper()
	if p.cmd != nil {
		p.t.Fatal("postgres already running")
	}
	logf, err := os.OpenFile(filepath.Join(p.dir, "postgres.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(p.bin, "postgres"), "-D", filepath.Join(p.dir, "data"),
		"-p", strconv.Itoa(p.port), "-k", p.dir, "-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off", "-c", "max_connections=200", "-c", "shared_buffers=16MB")
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group (a ^C to the test is not its), and killed if
	// the test process dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	done, err := StartTied(cmd)
	if err != nil {
		p.t.Fatalf("start postgres: %v", err)
	}
	p.cmd, p.done = cmd, done
	deadline := time.Now().Add(time.Minute)
	for {
		db, err := sql.Open("pgx", p.AdminURL())
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err = db.PingContext(ctx)
			cancel()
			db.Close()
		}
		if err == nil {
			return
		}
		select {
		case <-p.done:
			p.cmd = nil
			p.t.Fatalf("postgres exited at start:\n%s", p.Log())
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("postgres not accepting connections after a minute: %v\n%s", err, p.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop shuts the server down as an operator would (fast shutdown: clients
// are disconnected, everything committed is kept) and waits for it to
// exit. It does nothing when the server is not running.
func (p *Postgres) Stop() { p.signal(syscall.SIGINT) }

// Kill kills the server (SIGKILL of the postmaster; its backends notice
// and exit): a crash, recovered from at the next Start.
func (p *Postgres) Kill() { p.signal(syscall.SIGKILL) }

func (p *Postgres) signal(sig syscall.Signal) {
	if p.cmd == nil {
		return
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		// Its own process group: the backends too.
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	if sig == syscall.SIGKILL {
		// Backends outlive a killed postmaster a moment; they hold the
		// shared memory a new postmaster must get.
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		time.Sleep(100 * time.Millisecond)
	}
	p.cmd = nil
}

// Log is the server's log so far.
func (p *Postgres) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "postgres.log"))
	return strings.TrimSpace(string(b))
}

// StartTied starts cmd, whose SysProcAttr sets Pdeathsig, so that it is
// killed if the test process dies first: Pdeathsig fires when the thread
// that started the child ends, so cmd is started and waited for on one
// locked thread, which lives while it runs. done closes when cmd exits.
func StartTied(cmd *exec.Cmd) (done <-chan struct{}, err error) {
	started, exited := make(chan error), make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := cmd.Start()
		started <- err
		if err == nil {
			cmd.Wait()
		}
		close(exited)
	}()
	return exited, <-started
}

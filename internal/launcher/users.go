package launcher

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io/fs"
	"os"
	"strings"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/identity"
)

// ensureAdminUser makes sure the foundation has an admin user whose
// password is in the file at path (0600): kept as it is when both are
// there, else made (a random password) and written, so that a restarted
// foundation keeps its password.
func ensureAdminUser(ctx context.Context, client *api.Client, path string) error {
	var pw string
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		pw = strings.TrimSpace(string(b))
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	users, err := client.Users(ctx)
	if err != nil {
		return err
	}
	for _, u := range users {
		if u.Name != AdminUser {
			continue
		}
		if pw != "" {
			return nil
		}
		pw = newPassword()
		if err := identity.WriteFileAtomic(path, []byte(pw+"\n"), 0o600); err != nil {
			return err
		}
		return client.SetUserPassword(ctx, u.GUID, pw)
	}
	if len(pw) < 8 {
		pw = newPassword()
	}
	if err := identity.WriteFileAtomic(path, []byte(pw+"\n"), 0o600); err != nil {
		return err
	}
	_, err = client.CreateUser(ctx, api.UserRequest{Name: AdminUser, Password: pw, Admin: true})
	return err
}

// newPassword is 144 random bits, URL-safe.
func newPassword() string {
	var b [18]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

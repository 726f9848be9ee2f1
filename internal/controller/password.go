package controller

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"

	"golang.org/x/crypto/argon2"
)

// Passwords are stored as argon2id hashes in PHC string form
// ($argon2id$v=19$m=...,t=...,p=...$salt$hash), which names its parameters,
// so that stronger parameters apply to new passwords without breaking old
// ones. The parameters are OWASP's minimum for argon2id (19 MiB, 2 passes).
const (
	argonMemory  = 19 * 1024 // KiB
	argonTime    = 2
	argonThreads = 1
	argonKeyLen  = 32
	argonSaltLen = 16
)

// Password length bounds, in bytes.
const (
	minPassword = 8
	maxPassword = 1024
)

// validatePassword checks a new password: 8 to 1024 bytes of valid UTF-8.
func validatePassword(pw string) error {
	switch {
	case len(pw) < minPassword:
		return fmt.Errorf("invalid password: %d bytes long, at least %d needed", len(pw), minPassword)
	case len(pw) > maxPassword:
		return fmt.Errorf("invalid password: %d bytes long, at most %d allowed", len(pw), maxPassword)
	case !utf8.ValidString(pw):
		return errors.New("invalid password: not valid UTF-8")
	}
	return nil
}

// HashPassword returns the argon2id hash of pw, with a fresh salt, in PHC
// string form.
func HashPassword(pw string) string {
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	key := argon2.IDKey([]byte(pw), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	enc := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		enc.EncodeToString(salt), enc.EncodeToString(key))
}

// Bounds on the parameters a stored hash may name, so that a corrupt row
// cannot make a login allocate gigabytes.
const (
	maxArgonMemory = 1 << 20 // KiB: 1 GiB
	maxArgonTime   = 16
)

// checkPassword reports whether pw matches the PHC string encoded. A
// malformed hash matches nothing.
func checkPassword(encoded, pw string) bool {
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" || parts[2] != fmt.Sprintf("v=%d", argon2.Version) {
		return false
	}
	var m, t uint32
	var p uint8
	if n, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); n != 3 || err != nil ||
		m == 0 || m > maxArgonMemory || t == 0 || t > maxArgonTime || p == 0 {
		return false
	}
	enc := base64.RawStdEncoding
	salt, err1 := enc.DecodeString(parts[4])
	want, err2 := enc.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(want) == 0 || len(want) > 64 {
		return false
	}
	got := argon2.IDKey([]byte(pw), salt, t, m, p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1
}

// dummyHash is checked against when a login names no user, so that a
// wrong name takes as long as a wrong password and does not tell which
// names exist.
var dummyHash = sync.OnceValue(func() string { return HashPassword("trellis: no such user") })

// maxHashing bounds the password hashes computed at once: each takes
// argonMemory (19 MiB), so a flood of logins must queue for a slot rather
// than take the controller's memory.
const maxHashing = 4

// hashSlots is a semaphore of maxHashing slots.
type hashSlots chan struct{}

// acquire waits for a slot until ctx is done; false if it is.
func (h hashSlots) acquire(ctx context.Context) bool {
	select {
	case h <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (h hashSlots) release() { <-h }

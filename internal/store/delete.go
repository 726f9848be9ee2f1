package store

import (
	"context"
	"fmt"
)

// DeleteSpace deletes an empty space and its routes (which, with no apps
// in the space, have no destinations). ErrNotFound if there is no such
// space; ErrConflict if apps live in it or tokens are scoped to it (delete
// or revoke those first: a token's spaces are what it may touch).
func (s *Store) DeleteSpace(ctx context.Context, guid string) error {
	err := s.write(ctx, func(r runner) (bool, error) {
		if err := deletableSpace(ctx, r, guid); err != nil {
			return false, err
		}
		if _, err := r.exec(ctx, "DELETE FROM routes WHERE space_guid = ?", guid); err != nil {
			return false, err
		}
		if _, err := r.exec(ctx, "DELETE FROM spaces WHERE guid = ?", guid); err != nil {
			return false, err
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("delete space: %w", err)
	}
	return nil
}

// deletableSpace checks that the space exists, holds no app and has no
// token scoped to it and no user of it.
func deletableSpace(ctx context.Context, r runner, guid string) error {
	ok, err := r.exists(ctx, "SELECT 1 FROM spaces WHERE guid = ?", guid)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("space %s: %w", guid, ErrNotFound)
	}
	if ok, err = r.exists(ctx, "SELECT 1 FROM apps WHERE space_guid = ?", guid); err != nil {
		return err
	} else if ok {
		return fmt.Errorf("space %s has apps: %w", guid, ErrConflict)
	}
	if ok, err = r.exists(ctx, "SELECT 1 FROM token_spaces WHERE space_guid = ?", guid); err != nil {
		return err
	} else if ok {
		return fmt.Errorf("space %s has tokens scoped to it: %w", guid, ErrConflict)
	}
	if ok, err = r.exists(ctx, "SELECT 1 FROM user_spaces WHERE space_guid = ?", guid); err != nil {
		return err
	} else if ok {
		return fmt.Errorf("space %s has users: %w", guid, ErrConflict)
	}
	return nil
}

// DeleteOrg deletes an org whose spaces are all deletable (see
// DeleteSpace), with them, in one transaction. ErrNotFound if there is no
// such org.
func (s *Store) DeleteOrg(ctx context.Context, guid string) error {
	err := s.write(ctx, func(r runner) (bool, error) {
		ok, err := r.exists(ctx, "SELECT 1 FROM orgs WHERE guid = ?", guid)
		if err != nil {
			return false, err
		}
		if !ok {
			return false, fmt.Errorf("organization %s: %w", guid, ErrNotFound)
		}
		spaces, err := r.stringSet(ctx, "SELECT guid FROM spaces WHERE org_guid = ?", guid)
		if err != nil {
			return false, err
		}
		for sp := range spaces {
			if err := deletableSpace(ctx, r, sp); err != nil {
				return false, err
			}
			if _, err := r.exec(ctx, "DELETE FROM routes WHERE space_guid = ?", sp); err != nil {
				return false, err
			}
		}
		if _, err := r.exec(ctx, "DELETE FROM spaces WHERE org_guid = ?", guid); err != nil {
			return false, err
		}
		if _, err := r.exec(ctx, "DELETE FROM orgs WHERE guid = ?", guid); err != nil {
			return false, err
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("delete organization: %w", err)
	}
	return nil
}

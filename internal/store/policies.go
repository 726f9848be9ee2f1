package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// CreatePolicies creates the policies that do not exist yet, all or none,
// giving a tag to every app of the batch that has none. It fails with
// ErrAppNotFound if an app is missing (or, with o.SpaceGUIDs, outside those
// spaces), ErrQuotaExceeded if a source app that gains a policy would exceed
// o.MaxPerSource, and ErrTagsExhausted if no tag is free; then nothing
// changes. Re-creating existing policies changes nothing, revision included.
func (s *Store) CreatePolicies(ctx context.Context, ps []Policy, o CreatePoliciesOptions) error {
	if len(ps) == 0 {
		return nil
	}
	apps := policyApps(ps)
	err := s.write(ctx, func(r runner) (bool, error) {
		if err := checkPolicyApps(ctx, r, apps, o.SpaceGUIDs); err != nil {
			return false, err
		}
		tags, err := allocateTags(ctx, r, apps, s.maxTag, now().Add(-s.tagQuarantine))
		if err != nil {
			return false, err
		}
		ins, err := r.prepare(ctx, `INSERT INTO policies (source_app, source_tag, dest_app, dest_tag, protocol, start_port, end_port)
			VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`)
		if err != nil {
			return false, err
		}
		defer ins.Close()
		grown := make(map[string]bool) // source apps that gained a policy
		for _, p := range ps {
			res, err := ins.ExecContext(ctx, p.SourceApp, tags[p.SourceApp], p.DestApp, tags[p.DestApp], p.Protocol, p.StartPort, p.EndPort)
			if err != nil {
				return false, err
			}
			n, err := res.RowsAffected()
			if err != nil {
				return false, err
			}
			if n > 0 {
				grown[p.SourceApp] = true
			}
		}
		if len(grown) == 0 {
			return false, nil
		}
		if o.MaxPerSource > 0 {
			cond, arg := r.in("source_app", keys(grown))
			var src string
			err := r.queryRow(ctx, "SELECT source_app FROM policies WHERE "+cond+
				" GROUP BY source_app HAVING COUNT(*) > ? ORDER BY source_app LIMIT 1", arg, o.MaxPerSource).Scan(&src)
			if err == nil {
				return false, fmt.Errorf("app %s would be the source of more than %d policies: %w", src, o.MaxPerSource, ErrQuotaExceeded)
			}
			if !errors.Is(err, sql.ErrNoRows) {
				return false, err
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("create policies: %w", err)
	}
	return nil
}

// DeletePolicies deletes those of ps that exist and returns how many it
// deleted; the others are skipped. With spaceGUIDs, only policies whose
// source and destination apps are both in those spaces are deleted. Apps
// left in no policy lose their tags.
func (s *Store) DeletePolicies(ctx context.Context, ps []Policy, spaceGUIDs []string) (int, error) {
	if len(ps) == 0 {
		return 0, nil
	}
	apps := policyApps(ps)
	var deleted int
	err := s.write(ctx, func(r runner) (bool, error) {
		var allowed map[string]bool
		if len(spaceGUIDs) > 0 {
			cond, arg := r.in("guid", apps)
			scond, sarg := r.in("space_guid", spaceGUIDs)
			var err error
			allowed, err = r.stringSet(ctx, "SELECT guid FROM apps WHERE "+cond+" AND "+scond, arg, sarg)
			if err != nil {
				return false, err
			}
		}
		del, err := r.prepare(ctx, `DELETE FROM policies
			WHERE source_app = ? AND dest_app = ? AND protocol = ? AND start_port = ? AND end_port = ?`)
		if err != nil {
			return false, err
		}
		defer del.Close()
		for _, p := range ps {
			if allowed != nil && !(allowed[p.SourceApp] && allowed[p.DestApp]) {
				continue
			}
			res, err := del.ExecContext(ctx, p.SourceApp, p.DestApp, p.Protocol, p.StartPort, p.EndPort)
			if err != nil {
				return false, err
			}
			n, err := res.RowsAffected()
			if err != nil {
				return false, err
			}
			deleted += int(n)
		}
		if deleted == 0 {
			return false, nil
		}
		return true, recycleTags(ctx, r, apps)
	})
	if err != nil {
		return 0, fmt.Errorf("delete policies: %w", err)
	}
	return deleted, nil
}

// Policies lists the policies that match f with both tags, in the order
// they were created.
func (s *Store) Policies(ctx context.Context, f PolicyFilter) ([]Policy, error) {
	return policies(ctx, s.r(), f)
}

func policies(ctx context.Context, r runner, f PolicyFilter) ([]Policy, error) {
	ps, _, err := policiesWithIDs(ctx, r, f, nil)
	return ps, err
}

// policiesWithIDs is policies, with each one's id (the order of creation),
// narrowed to ids if not nil.
func policiesWithIDs(ctx context.Context, r runner, f PolicyFilter, ids []int64) ([]Policy, []int64, error) {
	w := where{r: r}
	if ids != nil {
		cond, arg := r.inInts("p.id", ids)
		w.add(cond, arg)
	}
	if len(f.IDs) > 0 {
		src, srcArg := r.in("p.source_app", f.IDs)
		dst, dstArg := r.in("p.dest_app", f.IDs)
		w.add("("+src+" OR "+dst+")", srcArg, dstArg)
	}
	w.in("p.source_app", f.SourceIDs)
	w.in("p.dest_app", f.DestIDs)
	if len(f.SpaceGUIDs) > 0 {
		cond, arg := r.in("space_guid", f.SpaceGUIDs)
		w.add("p.source_app IN (SELECT guid FROM apps WHERE "+cond+")", arg)
		w.add("p.dest_app IN (SELECT guid FROM apps WHERE "+cond+")", arg)
	}
	// Counting first costs little and saves growing a slice of tens of
	// thousands of policies by doubling, which costs more than the count.
	var n int
	if err := r.queryRow(ctx, "SELECT COUNT(*) FROM policies p"+w.String(), w.args...).Scan(&n); err != nil {
		return nil, nil, fmt.Errorf("list policies: %w", err)
	}
	rows, err := r.query(ctx, `SELECT p.id, p.source_app, p.dest_app, p.protocol, p.start_port, p.end_port, p.source_tag, p.dest_tag
		FROM policies p`+w.String()+`
		ORDER BY p.id`, w.args...)
	if err != nil {
		return nil, nil, fmt.Errorf("list policies: %w", err)
	}
	defer rows.Close()
	out, outIDs := make([]Policy, 0, n), make([]int64, 0, n)
	for rows.Next() {
		var p Policy
		var id int64
		var srcTag, dstTag int64 // not uint16: database/sql would convert through strings
		if err := rows.Scan(&id, &p.SourceApp, &p.DestApp, &p.Protocol, &p.StartPort, &p.EndPort, &srcTag, &dstTag); err != nil {
			return nil, nil, fmt.Errorf("list policies: %w", err)
		}
		p.SourceTag, p.DestTag = uint16(srcTag), uint16(dstTag)
		out, outIDs = append(out, p), append(outIDs, id)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("list policies: %w", err)
	}
	return out, outIDs, nil
}

// Tags lists the assigned tags, ordered by tag.
func (s *Store) Tags(ctx context.Context) ([]Tag, error) {
	return tags(ctx, s.r())
}

func tags(ctx context.Context, r runner) ([]Tag, error) {
	return tagsIn(ctx, r, nil)
}

// tagsIn lists the assigned tags among only (all if nil), ordered by tag.
func tagsIn(ctx context.Context, r runner, only []int64) ([]Tag, error) {
	w := where{r: r}
	w.add("app_guid IS NOT NULL")
	if only != nil {
		cond, arg := r.inInts("tag", only)
		w.add(cond, arg)
	}
	rows, err := r.query(ctx, "SELECT app_guid, tag FROM tags"+w.String()+" ORDER BY tag", w.args...)
	if err != nil {
		return nil, fmt.Errorf("list tags: %w", err)
	}
	defer rows.Close()
	var out []Tag
	for rows.Next() {
		var t Tag
		if err := rows.Scan(&t.AppGUID, &t.Tag); err != nil {
			return nil, fmt.Errorf("list tags: %w", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list tags: %w", err)
	}
	return out, nil
}

// policyApps returns the apps that ps name, sources before destinations
// policy by policy, without duplicates.
func policyApps(ps []Policy) []string {
	apps := make([]string, 0, 2*len(ps))
	for _, p := range ps {
		apps = append(apps, p.SourceApp, p.DestApp)
	}
	return distinct(apps)
}

// checkPolicyApps fails with ErrAppNotFound unless every app exists and,
// when spaceGUIDs is set, is in one of those spaces.
func checkPolicyApps(ctx context.Context, r runner, apps, spaceGUIDs []string) error {
	cond, arg := r.in("guid", apps)
	rows, err := r.query(ctx, "SELECT guid, space_guid FROM apps WHERE "+cond, arg)
	if err != nil {
		return err
	}
	defer rows.Close()
	space := make(map[string]string, len(apps))
	for rows.Next() {
		var app, sp string
		if err := rows.Scan(&app, &sp); err != nil {
			return err
		}
		space[app] = sp
	}
	if err := rows.Err(); err != nil {
		return err
	}
	allowed := make(map[string]bool, len(spaceGUIDs))
	for _, sp := range spaceGUIDs {
		allowed[sp] = true
	}
	for _, a := range apps {
		sp, ok := space[a]
		if !ok || len(spaceGUIDs) > 0 && !allowed[sp] {
			return fmt.Errorf("app %s: %w", a, ErrAppNotFound)
		}
	}
	return nil
}

// allocateTags gives each of apps that has no tag the lowest free one that
// was not freed after freedBefore (the tag quarantine), in order, and
// returns the tags of all apps; ErrTagsExhausted if none is free. Callers
// run in a write transaction, so no other writer allocates at the same
// time.
func allocateTags(ctx context.Context, r runner, apps []string, maxTag int, freedBefore time.Time) (map[string]uint16, error) {
	cond, arg := r.in("app_guid", apps)
	rows, err := r.query(ctx, "SELECT app_guid, tag FROM tags WHERE "+cond, arg)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	tags := make(map[string]uint16, len(apps))
	for rows.Next() {
		var app string
		var tag uint16
		if err := rows.Scan(&app, &tag); err != nil {
			return nil, err
		}
		tags[app] = tag
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows.Close()
	if len(tags) == len(apps) {
		return tags, nil
	}
	alloc, err := r.prepare(ctx, `UPDATE tags SET app_guid = ?, freed_at = NULL
		WHERE tag = (SELECT MIN(tag) FROM tags WHERE app_guid IS NULL AND tag <= ? AND (freed_at IS NULL OR freed_at <= ?))
		RETURNING tag`)
	if err != nil {
		return nil, err
	}
	defer alloc.Close()
	for _, a := range apps {
		if _, ok := tags[a]; ok {
			continue
		}
		var tag uint16
		err := alloc.QueryRowContext(ctx, a, maxTag, micros(freedBefore)).Scan(&tag)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, ErrTagsExhausted
		}
		if err != nil {
			return nil, err
		}
		tags[a] = tag
	}
	return tags, nil
}

// freeTag frees the tag of app, if it has one; it is quarantined from now.
func freeTag(ctx context.Context, r runner, app string) error {
	_, err := r.exec(ctx, "UPDATE tags SET app_guid = NULL, freed_at = ? WHERE app_guid = ?", micros(now()), app)
	return err
}

// recycleTags frees the tags of those apps that are in no policy; they are
// quarantined from now.
func recycleTags(ctx context.Context, r runner, apps []string) error {
	if len(apps) == 0 {
		return nil
	}
	cond, arg := r.in("app_guid", apps)
	_, err := r.exec(ctx, "UPDATE tags SET app_guid = NULL, freed_at = ? WHERE "+cond+`
		AND NOT EXISTS (SELECT 1 FROM policies p WHERE p.source_app = tags.app_guid)
		AND NOT EXISTS (SELECT 1 FROM policies p WHERE p.dest_app = tags.app_guid)`, micros(now()), arg)
	return err
}

package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
)

// Lifecycles a security group binds to.
const (
	Running = "running"
	Staging = "staging"
)

// SecurityGroup is an application security group: its rules (as the API
// validated them), where it applies globally, and the spaces bound to it
// for each lifecycle (sorted).
type SecurityGroup struct {
	GUID, Name                   string
	Rules                        []api.SecurityGroupRule
	GlobalRunning, GlobalStaging bool
	RunningSpaces, StagingSpaces []string
	CreatedAt, UpdatedAt         time.Time
}

// SecurityGroupFilter narrows SecurityGroups; empty fields match all.
type SecurityGroupFilter struct {
	GUIDs, Names []string
	// RunningSpaces and StagingSpaces keep groups bound to one of these
	// spaces for that lifecycle.
	RunningSpaces, StagingSpaces []string
	// GlobalRunning and GlobalStaging, if set, keep groups that are (or
	// are not) globally enabled for that lifecycle.
	GlobalRunning, GlobalStaging *bool
}

// CreateSecurityGroup creates g (its GUID and times are set) with its
// space bindings. ErrConflict if the name is taken, ErrNotFound if a
// space is missing.
func (s *Store) CreateSecurityGroup(ctx context.Context, g SecurityGroup) (SecurityGroup, error) {
	t := now()
	g.GUID, g.CreatedAt, g.UpdatedAt = newGUID(), t, t
	rules, err := rulesJSON(g.Rules)
	if err != nil {
		return SecurityGroup{}, err
	}
	err = s.write(ctx, func(r runner) (bool, error) {
		n, err := r.execCount(ctx, "INSERT INTO security_groups (guid, name, rules, global_running, global_staging, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
			g.GUID, g.Name, rules, g.GlobalRunning, g.GlobalStaging, micros(t), micros(t))
		if err != nil {
			return false, err
		}
		if n == 0 {
			return false, fmt.Errorf("security group %q: %w", g.Name, ErrConflict)
		}
		for _, b := range []struct {
			life   string
			spaces []string
		}{{Running, g.RunningSpaces}, {Staging, g.StagingSpaces}} {
			if err := bindSpaces(ctx, r, g.GUID, b.life, b.spaces); err != nil {
				return false, err
			}
		}
		return true, nil
	})
	if err != nil {
		return SecurityGroup{}, fmt.Errorf("create security group: %w", err)
	}
	g.RunningSpaces, g.StagingSpaces = sortedDistinct(g.RunningSpaces), sortedDistinct(g.StagingSpaces)
	return g, nil
}

func sortedDistinct(v []string) []string {
	v = slices.Clone(v)
	slices.Sort(v)
	v = slices.Compact(v)
	if v == nil {
		v = []string{}
	}
	return v
}

func rulesJSON(rules []api.SecurityGroupRule) (string, error) {
	if rules == nil {
		rules = []api.SecurityGroupRule{}
	}
	b, err := json.Marshal(rules)
	if err != nil {
		return "", fmt.Errorf("encode rules: %w", err)
	}
	return string(b), nil
}

// bindSpaces binds spaces to group for lifecycle; binding twice is no change.
func bindSpaces(ctx context.Context, r runner, group, lifecycle string, spaces []string) error {
	for _, sp := range distinct(spaces) {
		ok, err := r.exists(ctx, "SELECT 1 FROM spaces WHERE guid = ?", sp)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("space %s: %w", sp, ErrNotFound)
		}
		if _, err := r.exec(ctx, "INSERT INTO security_group_spaces (group_guid, space_guid, lifecycle) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
			group, sp, lifecycle); err != nil {
			return err
		}
	}
	return nil
}

// SecurityGroupUpdate changes the fields that are set.
type SecurityGroupUpdate struct {
	Name                         *string
	Rules                        *[]api.SecurityGroupRule
	GlobalRunning, GlobalStaging *bool
}

// UpdateSecurityGroup changes a group. ErrNotFound if missing,
// ErrConflict if the new name is taken.
func (s *Store) UpdateSecurityGroup(ctx context.Context, guid string, u SecurityGroupUpdate) (SecurityGroup, error) {
	var rules string
	if u.Rules != nil {
		var err error
		if rules, err = rulesJSON(*u.Rules); err != nil {
			return SecurityGroup{}, err
		}
	}
	err := s.write(ctx, func(r runner) (bool, error) {
		gs, err := securityGroups(ctx, r, SecurityGroupFilter{GUIDs: []string{guid}})
		if err != nil {
			return false, err
		}
		if len(gs) == 0 {
			return false, fmt.Errorf("security group %s: %w", guid, ErrNotFound)
		}
		if u.Name != nil && *u.Name != gs[0].Name {
			taken, err := r.exists(ctx, "SELECT 1 FROM security_groups WHERE name = ?", *u.Name)
			if err != nil {
				return false, err
			}
			if taken {
				return false, fmt.Errorf("security group %q: %w", *u.Name, ErrConflict)
			}
			if _, err := r.exec(ctx, "UPDATE security_groups SET name = ? WHERE guid = ?", *u.Name, guid); err != nil {
				return false, err
			}
		}
		if u.Rules != nil {
			if _, err := r.exec(ctx, "UPDATE security_groups SET rules = ? WHERE guid = ?", rules, guid); err != nil {
				return false, err
			}
		}
		if u.GlobalRunning != nil {
			if _, err := r.exec(ctx, "UPDATE security_groups SET global_running = ? WHERE guid = ?", *u.GlobalRunning, guid); err != nil {
				return false, err
			}
		}
		if u.GlobalStaging != nil {
			if _, err := r.exec(ctx, "UPDATE security_groups SET global_staging = ? WHERE guid = ?", *u.GlobalStaging, guid); err != nil {
				return false, err
			}
		}
		_, err = r.exec(ctx, "UPDATE security_groups SET updated_at = ? WHERE guid = ?", micros(now()), guid)
		return true, err
	})
	if err != nil {
		return SecurityGroup{}, fmt.Errorf("update security group: %w", err)
	}
	return s.SecurityGroup(ctx, guid)
}

// SecurityGroup returns one group, or ErrNotFound.
func (s *Store) SecurityGroup(ctx context.Context, guid string) (SecurityGroup, error) {
	gs, err := securityGroups(ctx, s.r(), SecurityGroupFilter{GUIDs: []string{guid}})
	if err != nil {
		return SecurityGroup{}, err
	}
	if len(gs) == 0 {
		return SecurityGroup{}, fmt.Errorf("security group %s: %w", guid, ErrNotFound)
	}
	return gs[0], nil
}

// DeleteSecurityGroup deletes a group and its bindings. ErrNotFound if missing.
func (s *Store) DeleteSecurityGroup(ctx context.Context, guid string) error {
	err := s.write(ctx, func(r runner) (bool, error) {
		if _, err := r.exec(ctx, "DELETE FROM security_group_spaces WHERE group_guid = ?", guid); err != nil {
			return false, err
		}
		n, err := r.execCount(ctx, "DELETE FROM security_groups WHERE guid = ?", guid)
		if err != nil {
			return false, err
		}
		if n == 0 {
			return false, fmt.Errorf("security group %s: %w", guid, ErrNotFound)
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("delete security group: %w", err)
	}
	return nil
}

// BindSecurityGroup binds spaces to a group for lifecycle (Running or
// Staging). ErrNotFound if the group or a space is missing; binding a
// space already bound changes nothing.
func (s *Store) BindSecurityGroup(ctx context.Context, guid, lifecycle string, spaces []string) error {
	if lifecycle != Running && lifecycle != Staging {
		return fmt.Errorf("bind security group: lifecycle %q is not running or staging", lifecycle)
	}
	err := s.write(ctx, func(r runner) (bool, error) {
		ok, err := r.exists(ctx, "SELECT 1 FROM security_groups WHERE guid = ?", guid)
		if err != nil {
			return false, err
		}
		if !ok {
			return false, fmt.Errorf("security group %s: %w", guid, ErrNotFound)
		}
		if err := bindSpaces(ctx, r, guid, lifecycle, spaces); err != nil {
			return false, err
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("bind security group: %w", err)
	}
	return nil
}

// UnbindSecurityGroup removes a space's binding to a group for lifecycle.
// ErrNotFound if there is no such binding.
func (s *Store) UnbindSecurityGroup(ctx context.Context, guid, lifecycle, space string) error {
	err := s.write(ctx, func(r runner) (bool, error) {
		n, err := r.execCount(ctx, "DELETE FROM security_group_spaces WHERE group_guid = ? AND space_guid = ? AND lifecycle = ?", guid, space, lifecycle)
		if err != nil {
			return false, err
		}
		if n == 0 {
			return false, fmt.Errorf("security group %s bound to space %s for %s: %w", guid, space, lifecycle, ErrNotFound)
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("unbind security group: %w", err)
	}
	return nil
}

// SecurityGroups lists the groups that match f, ordered by name.
func (s *Store) SecurityGroups(ctx context.Context, f SecurityGroupFilter) ([]SecurityGroup, error) {
	return securityGroups(ctx, s.r(), f)
}

func securityGroups(ctx context.Context, r runner, f SecurityGroupFilter) ([]SecurityGroup, error) {
	w := where{r: r}
	w.in("guid", f.GUIDs)
	w.in("name", f.Names)
	if f.GlobalRunning != nil {
		w.add("global_running = ?", *f.GlobalRunning)
	}
	if f.GlobalStaging != nil {
		w.add("global_staging = ?", *f.GlobalStaging)
	}
	for _, b := range []struct {
		life   string
		spaces []string
	}{{Running, f.RunningSpaces}, {Staging, f.StagingSpaces}} {
		if len(b.spaces) == 0 {
			continue
		}
		in, arg := r.in("space_guid", b.spaces)
		w.add("guid IN (SELECT group_guid FROM security_group_spaces WHERE lifecycle = ? AND "+in+")", b.life, arg)
	}
	rows, err := r.query(ctx, "SELECT guid, name, rules, global_running, global_staging, created_at, updated_at FROM security_groups"+w.String()+" ORDER BY name, guid", w.args...)
	if err != nil {
		return nil, fmt.Errorf("list security groups: %w", err)
	}
	var out []SecurityGroup
	byGUID := map[string]int{}
	for rows.Next() {
		var g SecurityGroup
		var rules string
		var created, updated int64
		if err := rows.Scan(&g.GUID, &g.Name, &rules, &g.GlobalRunning, &g.GlobalStaging, &created, &updated); err != nil {
			rows.Close()
			return nil, fmt.Errorf("list security groups: %w", err)
		}
		if err := json.Unmarshal([]byte(rules), &g.Rules); err != nil {
			rows.Close()
			return nil, fmt.Errorf("security group %s: decode rules: %w", g.GUID, err)
		}
		g.CreatedAt, g.UpdatedAt = fromMicros(created), fromMicros(updated)
		g.RunningSpaces, g.StagingSpaces = []string{}, []string{}
		byGUID[g.GUID] = len(out)
		out = append(out, g)
	}
	if err := rows.Err(); err != nil {
		rows.Close()
		return nil, fmt.Errorf("list security groups: %w", err)
	}
	rows.Close()
	if len(out) == 0 {
		return out, nil
	}
	brows, err := r.query(ctx, "SELECT group_guid, space_guid, lifecycle FROM security_group_spaces ORDER BY group_guid, space_guid")
	if err != nil {
		return nil, fmt.Errorf("list security group spaces: %w", err)
	}
	defer brows.Close()
	for brows.Next() {
		var g, sp, life string
		if err := brows.Scan(&g, &sp, &life); err != nil {
			return nil, fmt.Errorf("list security group spaces: %w", err)
		}
		i, ok := byGUID[g]
		if !ok {
			continue
		}
		if life == Running {
			out[i].RunningSpaces = append(out[i].RunningSpaces, sp)
		} else {
			out[i].StagingSpaces = append(out[i].StagingSpaces, sp)
		}
	}
	if err := brows.Err(); err != nil {
		return nil, fmt.Errorf("list security group spaces: %w", err)
	}
	return out, nil
}

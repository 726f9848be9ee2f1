package api

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
)

// SecurityGroupFilter narrows SecurityGroups; empty fields match all.
type SecurityGroupFilter struct {
	Names, GUIDs                 []string
	RunningSpaces, StagingSpaces []string
	// GloballyEnabledRunning and GloballyEnabledStaging, if set, keep the
	// groups that are (or are not) globally enabled for that lifecycle.
	GloballyEnabledRunning, GloballyEnabledStaging *bool
}

// SecurityGroups lists application security groups.
func (c *Client) SecurityGroups(ctx context.Context, f SecurityGroupFilter) ([]SecurityGroup, error) {
	q := query("names", f.Names, "guids", f.GUIDs, "running_space_guids", f.RunningSpaces, "staging_space_guids", f.StagingSpaces)
	for key, v := range map[string]*bool{"globally_enabled_running": f.GloballyEnabledRunning, "globally_enabled_staging": f.GloballyEnabledStaging} {
		if v != nil {
			q.Set(key, map[bool]string{true: "true", false: "false"}[*v])
		}
	}
	var l List[SecurityGroup]
	err := c.do(ctx, http.MethodGet, "v3/security_groups", q, nil, &l)
	return l.Resources, err
}

// CreateSecurityGroup creates a group.
func (c *Client) CreateSecurityGroup(ctx context.Context, req SecurityGroupRequest) (SecurityGroup, error) {
	var g SecurityGroup
	err := c.do(ctx, http.MethodPost, "v3/security_groups", nil, req, &g)
	return g, err
}

// UpdateSecurityGroup changes the fields req sets.
func (c *Client) UpdateSecurityGroup(ctx context.Context, guid string, req SecurityGroupRequest) (SecurityGroup, error) {
	p, err := itemPath("v3/security_groups", guid)
	if err != nil {
		return SecurityGroup{}, err
	}
	var g SecurityGroup
	err = c.do(ctx, http.MethodPatch, p, nil, req, &g)
	return g, err
}

// DeleteSecurityGroup deletes a group.
func (c *Client) DeleteSecurityGroup(ctx context.Context, guid string) error {
	p, err := itemPath("v3/security_groups", guid)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, p, nil, nil, nil)
}

// BindSecurityGroup binds spaces to a group for lifecycle ("running" or
// "staging").
func (c *Client) BindSecurityGroup(ctx context.Context, guid, lifecycle string, spaces []string) error {
	p, err := itemPath("v3/security_groups", guid)
	if err != nil {
		return err
	}
	var body ToMany
	for _, sp := range spaces {
		body.Data = append(body.Data, Ref{GUID: sp})
	}
	return c.do(ctx, http.MethodPost, p+"/relationships/"+lifecycle+"_spaces", nil, body, nil)
}

// UnbindSecurityGroup removes a space's binding for lifecycle.
func (c *Client) UnbindSecurityGroup(ctx context.Context, guid, lifecycle, space string) error {
	p, err := itemPath("v3/security_groups", guid)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, p+"/relationships/"+lifecycle+"_spaces/"+url.PathEscape(space), nil, nil, nil)
}

// ExplainEgress says whether the app source may reach to (an IPv4
// address) on protocol and port (0 for icmp and all), and by which
// security group rule.
func (c *Client) ExplainEgress(ctx context.Context, source, to, protocol string, port int) (EgressExplanation, error) {
	q := url.Values{"source": {source}, "to": {to}, "protocol": {protocol}}
	if port != 0 {
		q.Set("port", strconv.Itoa(port))
	}
	var e EgressExplanation
	err := c.do(ctx, http.MethodGet, "/trellis/v1/explain", q, nil, &e)
	return e, err
}

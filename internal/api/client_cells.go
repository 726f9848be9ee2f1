package api

import (
	"context"
	"net/url"
	"strings"
)

// CreateJoinToken makes a one-time token a cell's agent joins with.
func (c *Client) CreateJoinToken(ctx context.Context, ttlSeconds int) (JoinToken, error) {
	var t JoinToken
	err := c.do(ctx, "POST", "/trellis/v1/join-tokens", nil, JoinTokenRequest{TTLSeconds: ttlSeconds}, &t)
	return t, err
}

// Cells lists the foundation's cells.
func (c *Client) Cells(ctx context.Context) ([]Cell, error) {
	var l List[Cell]
	err := c.do(ctx, "GET", "/trellis/v1/cells", nil, nil, &l)
	return l.Resources, err
}

// DeleteCell removes a cell and frees its lease.
func (c *Client) DeleteCell(ctx context.Context, guid string) error {
	return c.do(ctx, "DELETE", "/trellis/v1/cells/"+url.PathEscape(guid), nil, nil, nil)
}

// Instances lists the instances of apps (all visible apps if none given).
func (c *Client) Instances(ctx context.Context, appGUIDs ...string) ([]Instance, error) {
	q := url.Values{}
	if len(appGUIDs) > 0 {
		q.Set("app_guids", strings.Join(appGUIDs, ","))
	}
	var l List[Instance]
	err := c.do(ctx, "GET", "/trellis/v1/instances", q, nil, &l)
	return l.Resources, err
}

// UpdateApp sets what an app runs.
func (c *Client) UpdateApp(ctx context.Context, guid string, u AppUpdate) (App, error) {
	var a App
	err := c.do(ctx, "PATCH", "/v3/apps/"+url.PathEscape(guid), nil, u, &a)
	return a, err
}

// AppAction starts, stops or restarts an app.
func (c *Client) AppAction(ctx context.Context, guid, action string) (App, error) {
	var a App
	err := c.do(ctx, "POST", "/v3/apps/"+url.PathEscape(guid)+"/actions/"+url.PathEscape(action), nil, nil, &a)
	return a, err
}

// ScaleApp sets how many instances an app runs.
func (c *Client) ScaleApp(ctx context.Context, guid string, instances int) (App, error) {
	var a App
	err := c.do(ctx, "POST", "/v3/apps/"+url.PathEscape(guid)+"/processes/web/actions/scale", nil, ScaleRequest{Instances: instances}, &a)
	return a, err
}

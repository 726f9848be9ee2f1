package api

import (
	"context"
	"net/url"
	"strconv"
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

// Flows lists logged connection attempts: of apps (all visible if none),
// verdict "" or allowed or denied, after the flow ID after; wait > 0 long
// polls up to that many seconds for new ones.
func (c *Client) Flows(ctx context.Context, appGUIDs []string, verdict string, after int64, wait int) ([]FlowEvent, error) {
	q := url.Values{}
	if len(appGUIDs) > 0 {
		q.Set("app_guids", strings.Join(appGUIDs, ","))
	}
	if verdict != "" {
		q.Set("verdict", verdict)
	}
	if after > 0 {
		q.Set("after", strconv.FormatInt(after, 10))
	}
	if wait > 0 {
		q.Set("wait", strconv.Itoa(wait))
	}
	var l List[FlowEvent]
	err := c.do(ctx, "GET", "/trellis/v1/flows", q, nil, &l)
	return l.Resources, err
}

// Explain says whether source may reach destination on protocol/port.
func (c *Client) Explain(ctx context.Context, source, destination, protocol string, port int) (Explanation, error) {
	q := url.Values{"source": {source}, "destination": {destination}, "protocol": {protocol}, "port": {strconv.Itoa(port)}}
	var e Explanation
	err := c.do(ctx, "GET", "/trellis/v1/explain", q, nil, &e)
	return e, err
}

// SetEnforcement turns policy enforcement on or off for the foundation.
func (c *Client) SetEnforcement(ctx context.Context, on bool) error {
	return c.do(ctx, "PUT", "/trellis/v1/enforcement", nil, Enforcement{Enabled: on}, nil)
}

// Enforcement reports whether policies are enforced.
func (c *Client) Enforcement(ctx context.Context) (bool, error) {
	var e Enforcement
	err := c.do(ctx, "GET", "/trellis/v1/enforcement", nil, nil, &e)
	return e.Enabled, err
}

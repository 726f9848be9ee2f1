package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Health is the body of GET /health.
type Health struct {
	Status   string `json:"status"`
	Revision int64  `json:"revision"`
}

// TokenRequest is the body of POST /trellis/v1/tokens.
type TokenRequest struct {
	Name   string   `json:"name,omitempty"`
	Scope  string   `json:"scope"`
	Spaces []string `json:"space_guids,omitempty"`
	// TTLSeconds is how long the token works, in seconds; 0 means the
	// default, DefaultTokenTTL.
	TTLSeconds int64 `json:"ttl_seconds,omitempty"`
}

// Token lifetimes (POST /trellis/v1/tokens ttl_seconds): every token the
// API creates expires, after DefaultTokenTTL unless told otherwise and
// after MaxTokenTTL at most. The bootstrap admin token (admin.json) does not
// expire: it is replaced by rotating it.
const (
	DefaultTokenTTL = 30 * 24 * time.Hour
	MaxTokenTTL     = 365 * 24 * time.Hour
)

// Filters select what a list call returns; they become the query parameters
// of docs/api.md. Empty fields do not filter; several fields are ANDed; the
// values of one field are ORed.
type (
	OrgFilter    struct{ Names, GUIDs []string }
	SpaceFilter  struct{ Names, GUIDs, OrgGUIDs []string }
	AppFilter    struct{ Names, GUIDs, SpaceGUIDs []string }
	DomainFilter struct{ Names, GUIDs []string }
	RouteFilter  struct{ Hosts, DomainGUIDs, SpaceGUIDs, AppGUIDs, GUIDs []string }
	// PolicyFilter: IDs matches source OR destination; SourceIDs and DestIDs
	// match their side and are ANDed when both are given.
	PolicyFilter struct{ IDs, SourceIDs, DestIDs []string }
)

// HTTPError is a non-2xx answer of the controller or of an agent. Its Error
// is the server's own message — the "error" field of the networking API or
// the first errors[].detail of the v3 API — so that a CLI can print the
// server's words; an AgentClient's names the agent and the request first.
type HTTPError struct {
	Status  int    // HTTP status code
	Message string // the server's message, or the status text if it sent none
	Title   string // v3 error title such as "CF-ResourceNotFound"; empty for the networking API
}

func (e *HTTPError) Error() string { return e.Message }

// ErrUnreachable is matched (errors.Is) by the errors of a request that got
// no answer — the peer is down, or did not answer in time — and, from the
// controller, by a 5xx answer: the request may succeed later, unlike one
// refused with a 4xx, which is an *HTTPError only.
var ErrUnreachable = errors.New("unreachable")

// unreachableError is a request that got no answer (or, from the
// controller, a 5xx one): it matches both ErrUnreachable and its cause.
type unreachableError struct {
	err error
	msg string // what Error says; err's own text when empty
}

func (e *unreachableError) Error() string {
	if e.msg != "" {
		return e.msg
	}
	return e.err.Error()
}

func (e *unreachableError) Unwrap() []error { return []error{ErrUnreachable, e.err} }

// IsNotFound reports whether err is an HTTPError with status 404.
func IsNotFound(err error) bool {
	var he *HTTPError
	return errors.As(err, &he) && he.Status == http.StatusNotFound
}

// Client calls a trellis controller over HTTPS, trusting only the
// controller's CA. It authenticates every request with a bearer token (a
// user's, or a join token) or, made by NewCellClient, with a cell's client
// certificate. It is safe for concurrent use.
//
// A Client may know several controllers (of one foundation, sharing one
// database). It sends each request to the controller in use; when that one
// does not answer — a failure to connect or to get the answer, a timeout, a
// 5xx — it tries the next, in the order given and each once, after a short
// jittered pause; the one it tries is in use from then on, for the requests
// after too. A 4xx answer is the controller's word and is returned as it is. A
// POST, which may not be safe to send twice, moves on only when it surely
// was not handled: the connection could not be made, the request could not
// be written, or the answer was 503 — except the policy writes, which are
// idempotent and move on as a GET does.
type Client struct {
	bases []*url.URL // the controllers, set by setBases when resolved
	token string
	// names resolves controllers' host names (NewCellClientResolving).
	names *nameTargets
	http  *http.Client
	// retryBase and retryMax bound the pause before trying the next
	// controller: retryBase before the second, doubling, at most retryMax,
	// each between half and all of it.
	retryBase, retryMax time.Duration

	cur       atomic.Int64 // index in bases of the controller in use
	failovers atomic.Int64 // times the controller in use changed

	// Counts of the cell's state polls (StateStats).
	stateBytes, stateFulls, stateDeltas, stateRefused atomic.Int64
	// The revision and digest of the state CellStateFrom returned last:
	// the base of a delta.
	stateMu     sync.Mutex
	stateRev    int64
	stateDigest string
}

// clientTimeout bounds a whole request, answer included.
const clientTimeout = 30 * time.Second

// cellHandshakeTimeout and cellHeaderTimeout bound a cell's TLS handshake
// and the wait for an answer's head (see NewCellClient).
const (
	cellHandshakeTimeout = 3 * time.Second
	cellHeaderTimeout    = 10 * time.Second
)

// dialTimeout bounds a connection attempt, so that an unreachable
// controller (a host cut off, which drops packets) is left for the next
// well within a CNI ADD's time.
const dialTimeout = 3 * time.Second

// Pauses between trying one controller and the next (see Client).
const (
	failoverPause    = 100 * time.Millisecond
	maxFailoverPause = 2 * time.Second
)

// maxErrorBody bounds how much of an error answer is read.
const maxErrorBody = 64 << 10

// NewClient returns a Client for cfg. The connection trusts only the CA in
// cfg.CACert and speaks TLS 1.2 or later. It does not use HTTP(S)_PROXY: a
// controller is reached directly, as agents on the same network reach it.
// cfg.Token is a user's API token, or a join token for Join. The Client
// knows every controller of cfg.URLs.
func NewClient(cfg ClientConfig) (*Client, error) {
	return newClient(cfg.URLs(), cfg.CACert, cfg.Token, nil)
}

// NewCellClient returns a Client that authenticates as a cell, with the
// client certificate the controller's CA issued it at join (mutual TLS)
// instead of a token: for the /trellis/v1/cell/ calls, such as CellState
// and InstanceCertificate. It knows the controllers at apiURLs (one at
// least), the first in use first, and trusts only the CA in caPEM. Its
// requests are bounded by their contexts only, as a long poll of CellState
// is held for up to its wait.
func NewCellClient(apiURLs []string, caPEM string, cert tls.Certificate) (*Client, error) {
	if len(cert.Certificate) == 0 {
		return nil, errors.New("invalid cell certificate: empty")
	}
	return newClient(apiURLs, caPEM, "", &cert)
}

// newClient makes a Client that authenticates with token, or with cert
// when cert is not nil.
func newClient(apiURLs []string, caPEM, token string, cert *tls.Certificate) (*Client, error) {
	if len(apiURLs) == 0 {
		return nil, errors.New("invalid api_url: none given")
	}
	var bases []*url.URL
	for _, s := range apiURLs {
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("invalid api_url %q: %w", s, err)
		}
		if u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("invalid api_url %q: must be https://HOST[:PORT]", s)
		}
		bases = append(bases, u)
	}
	if token == "" && cert == nil {
		return nil, errors.New("invalid config: token is empty")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(caPEM)) {
		return nil, errors.New("invalid ca_cert: no PEM certificate found")
	}
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     90 * time.Second,
		MaxIdleConnsPerHost: 4,
	}
	hc := &http.Client{Transport: tr, Timeout: clientTimeout}
	if cert != nil {
		tr.TLSClientConfig.Certificates = []tls.Certificate{*cert}
		hc.Timeout = 0
		// No overall bound (a long poll is held), but bounds on each step,
		// so that a connection to a controller that went silent is dropped
		// within seconds: the handshake, the answer's head (a held poll
		// sends it when the hold starts), and, over HTTP/2, a ping when
		// nothing was heard for a while.
		tr.TLSHandshakeTimeout = cellHandshakeTimeout
		tr.ResponseHeaderTimeout = cellHeaderTimeout
		tr.HTTP2 = &http.HTTP2Config{SendPingTimeout: 2 * time.Second, PingTimeout: 2 * time.Second}
	}
	return &Client{bases: bases, token: token, http: hc, retryBase: failoverPause, retryMax: maxFailoverPause}, nil
}

// Controller is the URL of the controller in use: the one the next
// request goes to first.
func (c *Client) Controller() string {
	bases := c.targets()
	return bases[c.cur.Load()%int64(len(bases))].String()
}

// Controllers are the URLs of every controller the Client knows, in the
// order it tries them.
func (c *Client) Controllers() []string {
	bases := c.targets()
	out := make([]string, len(bases))
	for i, u := range bases {
		out[i] = u.String()
	}
	return out
}

// Failovers counts the times the Client moved to another controller
// because the one in use did not answer.
func (c *Client) Failovers() int64 { return c.failovers.Load() }

// CloseIdleConnections closes the connections kept for later requests, so
// that none outlives its user (a server shutting down would wait for it).
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

// Health asks GET /health whether the controller and its store answer.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	err := c.do(ctx, http.MethodGet, "health", nil, nil, &h)
	return h, err
}

// Orgs lists organizations.
func (c *Client) Orgs(ctx context.Context, f OrgFilter) ([]Organization, error) {
	q := query("names", f.Names, "guids", f.GUIDs)
	var l List[Organization]
	err := c.do(ctx, http.MethodGet, "v3/organizations", q, nil, &l)
	return l.Resources, err
}

// CreateOrg creates an organization.
func (c *Client) CreateOrg(ctx context.Context, name string) (Organization, error) {
	var o Organization
	err := c.do(ctx, http.MethodPost, "v3/organizations", nil, struct {
		Name string `json:"name"`
	}{name}, &o)
	return o, err
}

// Spaces lists spaces.
func (c *Client) Spaces(ctx context.Context, f SpaceFilter) ([]Space, error) {
	q := query("names", f.Names, "guids", f.GUIDs, "organization_guids", f.OrgGUIDs)
	var l List[Space]
	err := c.do(ctx, http.MethodGet, "v3/spaces", q, nil, &l)
	return l.Resources, err
}

// CreateSpace creates a space in an org.
func (c *Client) CreateSpace(ctx context.Context, orgGUID, name string) (Space, error) {
	var s Space
	err := c.do(ctx, http.MethodPost, "v3/spaces", nil, struct {
		Name          string             `json:"name"`
		Relationships SpaceRelationships `json:"relationships"`
	}{name, SpaceRelationships{Organization: ToOne{Data: Ref{GUID: orgGUID}}}}, &s)
	return s, err
}

// Apps lists apps.
func (c *Client) Apps(ctx context.Context, f AppFilter) ([]App, error) {
	q := query("names", f.Names, "guids", f.GUIDs, "space_guids", f.SpaceGUIDs)
	var l List[App]
	err := c.do(ctx, http.MethodGet, "v3/apps", q, nil, &l)
	return l.Resources, err
}

// App gets one app by GUID.
func (c *Client) App(ctx context.Context, guid string) (App, error) {
	var a App
	p, err := itemPath("v3/apps", guid)
	if err != nil {
		return a, err
	}
	err = c.do(ctx, http.MethodGet, p, nil, nil, &a)
	return a, err
}

// CreateApp creates an app in a space.
func (c *Client) CreateApp(ctx context.Context, spaceGUID, name string) (App, error) {
	var a App
	err := c.do(ctx, http.MethodPost, "v3/apps", nil, struct {
		Name          string           `json:"name"`
		Relationships AppRelationships `json:"relationships"`
	}{name, AppRelationships{Space: ToOne{Data: Ref{GUID: spaceGUID}}}}, &a)
	return a, err
}

// DeleteApp deletes an app, its route mappings, the routes left with no
// app, and every policy naming it.
func (c *Client) DeleteApp(ctx context.Context, guid string) error {
	p, err := itemPath("v3/apps", guid)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, p, nil, nil, nil)
}

// Domains lists domains.
func (c *Client) Domains(ctx context.Context, f DomainFilter) ([]Domain, error) {
	q := query("names", f.Names, "guids", f.GUIDs)
	var l List[Domain]
	err := c.do(ctx, http.MethodGet, "v3/domains", q, nil, &l)
	return l.Resources, err
}

// CreateDomain creates a domain.
func (c *Client) CreateDomain(ctx context.Context, name string, internal bool) (Domain, error) {
	var d Domain
	err := c.do(ctx, http.MethodPost, "v3/domains", nil, struct {
		Name     string `json:"name"`
		Internal bool   `json:"internal"`
	}{name, internal}, &d)
	return d, err
}

// Routes lists routes.
func (c *Client) Routes(ctx context.Context, f RouteFilter) ([]Route, error) {
	q := query("hosts", f.Hosts, "domain_guids", f.DomainGUIDs, "space_guids", f.SpaceGUIDs, "app_guids", f.AppGUIDs, "guids", f.GUIDs)
	var l List[Route]
	err := c.do(ctx, http.MethodGet, "v3/routes", q, nil, &l)
	return l.Resources, err
}

// Route gets one route by GUID.
func (c *Client) Route(ctx context.Context, guid string) (Route, error) {
	p, err := itemPath("v3/routes", guid)
	if err != nil {
		return Route{}, err
	}
	var r Route
	err = c.do(ctx, http.MethodGet, p, nil, nil, &r)
	return r, err
}

// CreateRoute creates the route HOST.DOMAIN in a space, with no
// destinations.
func (c *Client) CreateRoute(ctx context.Context, spaceGUID, domainGUID, host string) (Route, error) {
	var r Route
	err := c.do(ctx, http.MethodPost, "v3/routes", nil, struct {
		Host          string             `json:"host"`
		Relationships RouteRelationships `json:"relationships"`
	}{host, RouteRelationships{Domain: ToOne{Data: Ref{GUID: domainGUID}}, Space: ToOne{Data: Ref{GUID: spaceGUID}}}}, &r)
	return r, err
}

// DeleteRoute deletes a route and its mappings.
func (c *Client) DeleteRoute(ctx context.Context, guid string) error {
	p, err := itemPath("v3/routes", guid)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, p, nil, nil, nil)
}

// AddRouteDestinations maps apps to a route and returns all of the route's
// destinations afterwards.
func (c *Client) AddRouteDestinations(ctx context.Context, routeGUID string, appGUIDs ...string) ([]RouteDestination, error) {
	p, err := itemPath("v3/routes", routeGUID)
	if err != nil {
		return nil, err
	}
	in := RouteDestinations{Destinations: make([]RouteDestination, 0, len(appGUIDs))}
	for _, g := range appGUIDs {
		in.Destinations = append(in.Destinations, RouteDestination{App: Ref{GUID: g}})
	}
	var out RouteDestinations
	err = c.do(ctx, http.MethodPost, p+"/destinations", nil, in, &out)
	return out.Destinations, err
}

// RemoveRouteDestination unmaps an app from a route.
func (c *Client) RemoveRouteDestination(ctx context.Context, routeGUID, appGUID string) error {
	p, err := itemPath("v3/routes", routeGUID)
	if err != nil {
		return err
	}
	if p, err = itemPath(p+"/destinations", appGUID); err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, p, nil, nil, nil)
}

const policiesPath = "networking/v1/external/policies"

// Policies lists the policies that match f and that the caller may see.
func (c *Client) Policies(ctx context.Context, f PolicyFilter) ([]Policy, error) {
	q := query("id", f.IDs, "source_id", f.SourceIDs, "dest_id", f.DestIDs)
	var r PoliciesResponse
	err := c.do(ctx, http.MethodGet, policiesPath, q, nil, &r)
	return r.Policies, err
}

// CreatePolicies creates policies; existing ones are left as they are. The
// batch is all or nothing.
func (c *Client) CreatePolicies(ctx context.Context, ps []Policy) error {
	return c.do(ctx, http.MethodPost, policiesPath, nil, PoliciesRequest{Policies: ps}, nil)
}

// DeletePolicies deletes policies; unknown ones are skipped.
func (c *Client) DeletePolicies(ctx context.Context, ps []Policy) error {
	return c.do(ctx, http.MethodPost, policiesPath+"/delete", nil, PoliciesRequest{Policies: ps}, nil)
}

// Tags lists the policy tag of every app that takes part in a policy
// (admin only).
func (c *Client) Tags(ctx context.Context) ([]Tag, error) {
	var r TagsResponse
	err := c.do(ctx, http.MethodGet, "networking/v1/external/tags", nil, nil, &r)
	return r.Tags, err
}

// CreateToken creates an API token (admin only). The returned Token's Value
// is the only copy of the secret.
func (c *Client) CreateToken(ctx context.Context, r TokenRequest) (Token, error) {
	var t Token
	err := c.do(ctx, http.MethodPost, "trellis/v1/tokens", nil, r, &t)
	return t, err
}

// Tokens lists API tokens, never their values: every token for an admin,
// the caller's own token for others.
func (c *Client) Tokens(ctx context.Context) ([]Token, error) {
	var l List[Token]
	err := c.do(ctx, http.MethodGet, "trellis/v1/tokens", nil, nil, &l)
	return l.Resources, err
}

// RevokeToken deletes a token: it stops working on the next request, on
// every controller. An admin may revoke any token, others only their own.
func (c *Client) RevokeToken(ctx context.Context, guid string) error {
	p, err := itemPath("trellis/v1/tokens", guid)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, p, nil, nil, nil)
}

// RotateAdminToken replaces the foundation's bootstrap admin token (admin
// only): the old one stops working on the next request, on every
// controller. The returned Token's Value is the only copy of the new one.
func (c *Client) RotateAdminToken(ctx context.Context) (Token, error) {
	var t Token
	err := c.do(ctx, http.MethodPost, "trellis/v1/admin-token/rotation", nil, nil, &t)
	return t, err
}

// Raw sends one request to path (which may carry a query, "/v3/apps?names=a")
// with body, if not nil, as JSON, and returns the answer's status and body
// whatever the status: for tests and debugging, to see what the typed
// methods interpret. err is only a failure to send or to read. It moves to
// the next controller only when one does not answer at all.
func (c *Client) Raw(ctx context.Context, method, path string, body io.Reader) (status int, out []byte, err error) {
	ref, err := url.Parse(path)
	if err != nil {
		return 0, nil, fmt.Errorf("invalid path %q: %w", path, err)
	}
	var b []byte
	if body != nil {
		if b, err = io.ReadAll(body); err != nil {
			return 0, nil, err
		}
	}
	resp, err := c.send(ctx, method, ref.EscapedPath(), ref.RawQuery, b, body != nil, false)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err = io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

// send sends one request — body, if hasBody, as JSON — to the controller
// in use, and to the next ones as the Client's doc says when it gets no
// answer (with failover5xx, a 5xx answer counts as none). It returns the
// first answer, or an error matching ErrUnreachable that names what failed
// at each controller tried.
func (c *Client) send(ctx context.Context, method, path, rawQuery string, body []byte, hasBody, failover5xx bool) (*http.Response, error) {
	bases := c.targets()
	n := int64(len(bases))
	start := c.cur.Load() % n
	var errs []error
	var why []string
	for i := range n {
		if i > 0 {
			if !c.pause(ctx, i) {
				break
			}
		}
		k := (start + i) % n
		if i > 0 && c.cur.CompareAndSwap((k+n-1)%n, k) {
			// In use from now: a long poll held by k shows it at once.
			c.failovers.Add(1)
		}
		base := bases[k]
		u := base.JoinPath(path)
		u.RawQuery = rawQuery
		var r io.Reader
		if body != nil {
			r = bytes.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, u.String(), r)
		if err != nil {
			return nil, err
		}
		c.setHeaders(req, hasBody)
		if c.names != nil {
			req.Host = c.names.host(base.Host)
		}
		resp, err := c.http.Do(req)
		if err == nil && (!failover5xx || resp.StatusCode < 500) {
			return resp, nil
		}
		retry := false
		if err != nil { // a *url.Error: it names the method and URL
			why = append(why, err.Error())
			retry = method != http.MethodPost || idempotentPOST[path] || notSent(err)
		} else {
			err = decodeError(resp)
			resp.Body.Close()
			why = append(why, fmt.Sprintf("%s %s: %v", method, u.Redacted(), err))
			retry = method != http.MethodPost || idempotentPOST[path] || resp.StatusCode == http.StatusServiceUnavailable
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			// Out of time on this one (a controller that hangs): the next
			// request goes to the next controller.
			if errors.Is(ctx.Err(), context.DeadlineExceeded) && n > 1 && c.cur.CompareAndSwap(k, (k+1)%n) {
				c.failovers.Add(1)
			}
			break
		}
		if !retry {
			break
		}
	}
	c.reresolve(ctx)
	if len(errs) == 1 {
		return nil, &unreachableError{err: errs[0]}
	}
	return nil, &unreachableError{err: errors.Join(errs...), msg: "no controller answered: " + strings.Join(why, "; ")}
}

// pause waits pauseFor(i) before the try number i of a request, or returns
// false if ctx ends first.
func (c *Client) pause(ctx context.Context, i int64) bool {
	t := time.NewTimer(c.pauseFor(i))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// pauseFor is the jittered pause before the try number i (1 for the second
// controller) of a request: retryBase doubled i-1 times, at most retryMax,
// and between half and all of it, so that the cells of a controller that
// died do not all reach the next at once.
func (c *Client) pauseFor(i int64) time.Duration {
	d := c.retryMax
	if i-1 < 32 && c.retryBase<<(i-1) < d && c.retryBase<<(i-1) > 0 {
		d = c.retryBase << (i - 1)
	}
	return d/2 + rand.N(d/2+1)
}

// idempotentPOST are the POSTs that are safe to send twice, so that they
// move to the next controller as other methods do: creating a policy that
// exists, or deleting one that does not, changes nothing.
var idempotentPOST = map[string]bool{policiesPath: true, policiesPath + "/delete": true}

// notSent reports whether err means the request surely did not reach the
// controller whole, so that it cannot have been handled: a failure to
// connect, or to write the request (a kept-alive connection to a
// controller that died meanwhile fails so: broken pipe, reset).
func notSent(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && (oe.Op == "dial" || oe.Op == "write")
}

func (c *Client) setHeaders(req *http.Request, hasBody bool) {
	if c.token != "" { // a cell's Client authenticates with its certificate
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "trellis")
	if hasBody {
		req.Header.Set("Content-Type", "application/json")
	}
}

// query builds URL query parameters from name, values pairs, joining each
// field's values with commas and leaving out empty fields.
func query(pairs ...any) url.Values {
	q := url.Values{}
	for i := 0; i+1 < len(pairs); i += 2 {
		if vs := pairs[i+1].([]string); len(vs) > 0 {
			q.Set(pairs[i].(string), strings.Join(vs, ","))
		}
	}
	return q
}

// itemPath is collection/GUID, refusing an empty GUID, which would name
// the collection itself.
func itemPath(collection, guid string) (string, error) {
	if guid == "" {
		return "", fmt.Errorf("%s: empty guid", collection)
	}
	return collection + "/" + url.PathEscape(guid), nil
}

// do sends one request: in, when not nil, as a JSON body; a 2xx answer's
// body decoded into out when out is not nil; any other answer returned as
// an *HTTPError. A failure to send, or a 5xx answer, also matches
// ErrUnreachable (once no controller the Client knows answered).
func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: encode request: %w", method, path, err)
		}
		body = b
	}
	resp, err := c.send(ctx, method, path, q.Encode(), body, in != nil, true)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return decodeError(resp) // a 4xx: send returns no 5xx
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, resp.Request.URL.Path, err)
	}
	return nil
}

// decodeError turns a non-2xx answer into an *HTTPError, taking the
// message from either error shape of docs/api.md.
func decodeError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &HTTPError{Status: resp.StatusCode}
	var body struct {
		Error  string    `json:"error"`
		Errors []V3Error `json:"errors"`
	}
	if json.Unmarshal(b, &body) == nil {
		switch {
		case body.Error != "":
			e.Message = body.Error
		case len(body.Errors) > 0 && body.Errors[0].Detail != "":
			e.Message = body.Errors[0].Detail
			e.Title = body.Errors[0].Title
		}
	}
	if e.Message == "" {
		e.Message = fmt.Sprintf("%d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
		// A plain-text body (from a proxy, say): its first line, shortened.
		s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
		if s = strings.TrimSpace(s); s != "" && utf8.ValidString(s) && !strings.HasPrefix(s, "{") {
			if r := []rune(s); len(r) > 200 {
				s = string(r[:200]) + "..."
			}
			e.Message += ": " + s
		}
	}
	return e
}

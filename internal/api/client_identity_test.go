package api

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestClientIdentityRequests(t *testing.T) {
	ctx := context.Background()
	started := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	caJSON := `{"generation":3,"bundle":"PEM","rotating":true,"rotation_started":"2030-01-02T03:04:05Z","trust_domain":"trellis.internal","certificate_validity_seconds":86400,"intermediate":"trellis instance CA 1"}`
	ca := InstanceCA{Generation: 3, Bundle: "PEM", Rotating: true, RotationStarted: &started, TrustDomain: "trellis.internal", ValiditySeconds: 86400, IntermediateName: "trellis instance CA 1"}
	tests := []struct {
		name   string
		answer answer
		call   func(c *Client) (any, error)
		want   any
		req    request
	}{
		{
			name:   "instance CA",
			answer: answer{200, caJSON},
			call:   func(c *Client) (any, error) { return c.InstanceCA(ctx) },
			want:   ca,
			req:    request{Method: "GET", Path: "/trellis/v1/instance-ca"},
		},
		{
			name:   "rotate instance CA",
			answer: answer{200, caJSON},
			call: func(c *Client) (any, error) {
				return c.RotateInstanceCA(ctx, InstanceCARotation{Action: "finish", Force: true})
			},
			want: ca,
			req: request{Method: "POST", Path: "/trellis/v1/instance-ca/rotation", ContentType: "application/json",
				Body: `{"action":"finish","force":true}`},
		},
		{
			name:   "app TLS",
			answer: answer{200, `{"require_client_cert":true}`},
			call:   func(c *Client) (any, error) { return c.AppTLS(ctx, "a1") },
			want:   AppTLS{RequireClientCert: true},
			req:    request{Method: "GET", Path: "/trellis/v1/apps/a1/tls"},
		},
		{
			name:   "set app TLS",
			answer: answer{200, `{"require_client_cert":false}`},
			call:   func(c *Client) (any, error) { return c.SetAppTLS(ctx, "a1", AppTLS{}) },
			want:   AppTLS{},
			req: request{Method: "PUT", Path: "/trellis/v1/apps/a1/tls", ContentType: "application/json",
				Body: `{"require_client_cert":false}`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeController(t, map[string]answer{tt.req.Method + " " + tt.req.Path: tt.answer})
			got, err := tt.call(f.client(t))
			if err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("%s answer (-want +got):\n%s", tt.name, diff)
			}
			tt.req.Auth = "Bearer " + testToken
			if diff := cmp.Diff([]request{tt.req}, f.requests()); diff != "" {
				t.Errorf("%s request (-want +got):\n%s", tt.name, diff)
			}
		})
	}
}

package controller

import (
	"context"
	"log/slog"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-c2c/trellis/internal/store"
)

type httpMetrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

func newHTTPMetrics(reg prometheus.Registerer) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "trellis_http_requests_total",
			Help: "API requests by route pattern and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "trellis_http_request_duration_seconds",
			Help:    "API request latency by route pattern.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"route"}),
	}
	reg.MustRegister(m.requests, m.latency)
	return m
}

func (m *httpMetrics) observe(route string, code int, d time.Duration) {
	m.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
	m.latency.WithLabelValues(route).Observe(d.Seconds())
}

// storeCollector reports the store's size and revision at scrape time.
type storeCollector struct {
	store *store.Store
	log   *slog.Logger
}

var (
	objectsDesc  = prometheus.NewDesc("trellis_store_objects", "Stored objects by kind.", []string{"kind"}, nil)
	revisionDesc = prometheus.NewDesc("trellis_store_revision", "Current store-wide revision.", nil, nil)
)

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- objectsDesc
	ch <- revisionDesc
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := c.store.Counts(ctx)
	if err != nil {
		c.log.Warn("metrics: count store objects", "err", err)
		return
	}
	for kind, v := range map[string]int64{
		"orgs": n.Orgs, "spaces": n.Spaces, "apps": n.Apps, "domains": n.Domains,
		"routes": n.Routes, "policies": n.Policies, "tags": n.Tags, "tokens": n.Tokens,
	} {
		ch <- prometheus.MustNewConstMetric(objectsDesc, prometheus.GaugeValue, float64(v), kind)
	}
	if rev, err := c.store.Revision(ctx); err == nil {
		ch <- prometheus.MustNewConstMetric(revisionDesc, prometheus.GaugeValue, float64(rev))
	}
}

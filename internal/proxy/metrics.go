package proxy

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Connection outcomes after a successful handshake, the values of
// trellis_proxy_connections_total{result}.
const (
	connForwarded      = "forwarded"       // the app answered the dial
	connAppUnreachable = "app_unreachable" // it did not: closed with close_notify
	connIdle           = "idle"            // closed by IdleTimeout
	connRefusedBySet   = "refused_by_set"  // its client no longer passes the instance's settings
)

// metrics are the Server's Prometheus metrics:
//
//	trellis_proxy_handshakes_total{result}                handshakes by result (ok, busy, not_tls, unknown_name, ...)
//	trellis_proxy_handshake_duration_seconds              accept to finished, successful handshakes
//	trellis_proxy_handshakes_in_progress                  now, whole cell
//	trellis_proxy_connections_total{result}               after the handshake: forwarded, app_unreachable, idle, refused_by_set
//	trellis_proxy_connections_active{instance}            connections being forwarded
//	trellis_proxy_bytes_total{instance, direction}        plaintext bytes forwarded, to_app or from_app
//	trellis_proxy_instances                               instances served
//
// Per-instance series exist from the instance's first connection until
// Remove: an idle instance costs none.
type metrics struct {
	handshakes       *prometheus.CounterVec
	handshakeSeconds prometheus.Histogram
	inProgress       prometheus.Gauge
	connections      *prometheus.CounterVec
	active           *prometheus.GaugeVec
	bytes            *prometheus.CounterVec
	instances        prometheus.Gauge
}

// instanceMetrics are one instance's series.
type instanceMetrics struct {
	active         prometheus.Gauge
	toApp, fromApp prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_proxy_handshakes_total",
			Help: "TLS handshakes on port 61443 by result: ok, busy (beyond the limits), not_tls, unknown_name (SNI), " +
				"no_certificate (none valid now), client_refused, timeout, client_alert, aborted, failed."},
			[]string{"result"}),
		handshakeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "trellis_proxy_handshake_duration_seconds",
			Help:    "Time from accept to a finished TLS handshake on port 61443.",
			Buckets: []float64{100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.1, 0.5, 2.5}}),
		inProgress: prometheus.NewGauge(prometheus.GaugeOpts{Name: "trellis_proxy_handshakes_in_progress",
			Help: "TLS handshakes in progress on port 61443, whole cell."}),
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_proxy_connections_total",
			Help: "Connections after a successful handshake by outcome: forwarded, app_unreachable, idle (closed), refused_by_set."},
			[]string{"result"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "trellis_proxy_connections_active",
			Help: "Connections being forwarded to the app, by instance."}, []string{"instance"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "trellis_proxy_bytes_total",
			Help: "Plaintext bytes forwarded, by instance and direction (to_app, from_app)."}, []string{"instance", "direction"}),
		instances: prometheus.NewGauge(prometheus.GaugeOpts{Name: "trellis_proxy_instances",
			Help: "Instances served on port 61443."}),
	}
	if reg != nil {
		m.handshakes = register(reg, m.handshakes)
		m.handshakeSeconds = register(reg, m.handshakeSeconds)
		m.inProgress = register(reg, m.inProgress)
		m.connections = register(reg, m.connections)
		m.active = register(reg, m.active)
		m.bytes = register(reg, m.bytes)
		m.instances = register(reg, m.instances)
	}
	return m
}

// register registers c on reg, or returns the collector registered before
// under the same name, so that several servers in one process (the cells
// of `trellis up`) share their metrics.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if old, ok := are.ExistingCollector.(C); ok {
				return old
			}
		}
		panic(err)
	}
	return c
}

func (m *metrics) result(r string)     { m.handshakes.WithLabelValues(r).Inc() }
func (m *metrics) connection(r string) { m.connections.WithLabelValues(r).Inc() }

// instance makes the series of the instance id.
func (m *metrics) instance(id string) *instanceMetrics {
	return &instanceMetrics{
		active:  m.active.WithLabelValues(id),
		toApp:   m.bytes.WithLabelValues(id, "to_app"),
		fromApp: m.bytes.WithLabelValues(id, "from_app"),
	}
}

// forget deletes the series of the instance id.
func (m *metrics) forget(id string) {
	m.active.DeleteLabelValues(id)
	m.bytes.DeletePartialMatch(prometheus.Labels{"instance": id})
}

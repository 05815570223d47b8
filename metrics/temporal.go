package metrics

import (
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.temporal.io/sdk/client"
)

// TemporalBuckets are the histogram buckets (seconds) of the Temporal SDK's
// timers.
var TemporalBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// TemporalHandler is a client.MetricsHandler recording the Temporal SDK's
// metrics on this registry under the SDK's own names (temporal_request,
// temporal_request_latency_seconds, ...): counters and gauges keep the
// name, timers become histograms in seconds with a _seconds suffix. The
// SDK's tags become labels. Pass it as client.Options.MetricsHandler.
func (m *Metrics) TemporalHandler() client.MetricsHandler {
	if m == nil {
		return client.MetricsNopHandler
	}
	return &temporalHandler{c: m.temporal}
}

type seriesKind int

const (
	kindCounter seriesKind = iota
	kindGauge
	kindTimer
)

type series struct {
	name    string
	kind    seriesKind
	labels  []string
	values  []string
	value   float64
	count   uint64
	sum     float64
	buckets []uint64
}

// temporalCollector keeps the SDK's series and exposes them as const
// metrics at scrape time: the SDK uses different tag sets for the same
// metric name, which fixed-label vectors cannot hold.
type temporalCollector struct {
	mu     sync.Mutex
	series map[string]*series
}

func newTemporalCollector() *temporalCollector {
	return &temporalCollector{series: map[string]*series{}}
}

// Describe sends nothing: the collector is unchecked because its label
// sets are only known as the SDK emits.
func (c *temporalCollector) Describe(chan<- *prometheus.Desc) {}

func (c *temporalCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.series {
		help := "Temporal SDK metric " + s.name + "."
		desc := prometheus.NewDesc(s.name, help, s.labels, nil)
		var (
			m   prometheus.Metric
			err error
		)
		switch s.kind {
		case kindCounter:
			m, err = prometheus.NewConstMetric(desc, prometheus.CounterValue, s.value, s.values...)
		case kindGauge:
			m, err = prometheus.NewConstMetric(desc, prometheus.GaugeValue, s.value, s.values...)
		case kindTimer:
			b := make(map[float64]uint64, len(TemporalBuckets))
			var cum uint64
			for i, ub := range TemporalBuckets {
				cum += s.buckets[i]
				b[ub] = cum
			}
			m, err = prometheus.NewConstHistogram(desc, s.count, s.sum, b, s.values...)
		}
		if err == nil {
			ch <- m
		}
	}
}

func (c *temporalCollector) get(name string, kind seriesKind, tags map[string]string) *series {
	labels := slices.Sorted(maps.Keys(tags))
	values := make([]string, len(labels))
	var key strings.Builder
	key.WriteString(name)
	for i, l := range labels {
		values[i] = tags[l]
		key.WriteString("\xff" + l + "\xfe" + values[i])
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.series[key.String()]
	if !ok {
		s = &series{name: name, kind: kind, labels: labels, values: values}
		if kind == kindTimer {
			s.buckets = make([]uint64, len(TemporalBuckets))
		}
		c.series[key.String()] = s
	}
	return s
}

type temporalHandler struct {
	c    *temporalCollector
	tags map[string]string
}

// sanitize maps an SDK name or tag to a valid Prometheus name.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, s)
}

func (h *temporalHandler) WithTags(tags map[string]string) client.MetricsHandler {
	merged := make(map[string]string, len(h.tags)+len(tags))
	maps.Copy(merged, h.tags)
	for k, v := range tags {
		merged[sanitize(k)] = v
	}
	return &temporalHandler{c: h.c, tags: merged}
}

func (h *temporalHandler) Counter(name string) client.MetricsCounter {
	return counter{h.c, h.c.get(sanitize(name), kindCounter, h.tags)}
}

func (h *temporalHandler) Gauge(name string) client.MetricsGauge {
	return gauge{h.c, h.c.get(sanitize(name), kindGauge, h.tags)}
}

func (h *temporalHandler) Timer(name string) client.MetricsTimer {
	return timer{h.c, h.c.get(sanitize(name)+"_seconds", kindTimer, h.tags)}
}

type counter struct {
	c *temporalCollector
	s *series
}

func (x counter) Inc(n int64) {
	if n < 0 {
		return
	}
	x.c.mu.Lock()
	x.s.value += float64(n)
	x.c.mu.Unlock()
}

type gauge struct {
	c *temporalCollector
	s *series
}

func (x gauge) Update(v float64) {
	x.c.mu.Lock()
	x.s.value = v
	x.c.mu.Unlock()
}

type timer struct {
	c *temporalCollector
	s *series
}

func (x timer) Record(d time.Duration) {
	v := d.Seconds()
	x.c.mu.Lock()
	defer x.c.mu.Unlock()
	x.s.count++
	x.s.sum += v
	for i, ub := range TemporalBuckets {
		if v <= ub {
			x.s.buckets[i]++
			return
		}
	}
	// Values above the last bucket count only in +Inf (count).
}

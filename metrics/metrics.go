// Package metrics holds the orchestrator's Prometheus metrics: HTTP request
// metrics, domain metrics (tasks, Nushell runs, test environments) and an
// adapter that exposes the Temporal SDK's metrics. Everything lives on one
// dedicated registry (never the global default) served at /metrics.
package metrics

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/provisioning/orchestrator/driver/nushell"
	"github.com/provisioning/orchestrator/storage"
)

// Namespace prefixes every orchestrator metric.
const Namespace = "orchestrator"

// Metrics is the process's metrics registry and the metrics recorded on it.
// A nil *Metrics is valid and records nothing.
type Metrics struct {
	reg          *prometheus.Registry
	httpRequests *prometheus.CounterVec
	httpDuration *prometheus.HistogramVec
	taskDuration *prometheus.HistogramVec
	nushell      *prometheus.CounterVec
	temporal     *temporalCollector
}

// New builds a registry with the orchestrator's metrics, the Go runtime and
// process collectors.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "http", Name: "requests_total",
			Help: "HTTP requests by method, route template and status code.",
		}, []string{"method", "route", "status"}),
		httpDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "http", Name: "request_duration_seconds",
			Help:    "HTTP request latency by method, route template and status code.",
			Buckets: prometheus.DefBuckets,
		}, []string{"method", "route", "status"}),
		taskDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "task_duration_seconds",
			Help:    "Time from start to finish of tasks that reached a terminal status, by workflow type and status.",
			Buckets: []float64{0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200},
		}, []string{"workflow_type", "status"}),
		nushell: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "nushell_invocations_total",
			Help: "Nushell step attempts by outcome (success, failure, cancelled).",
		}, []string{"outcome"}),
		temporal: newTemporalCollector(),
	}
	m.reg.MustRegister(m.httpRequests, m.httpDuration, m.taskDuration, m.nushell, m.temporal,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, o := range []string{nushell.OutcomeSuccess, nushell.OutcomeFailure, nushell.OutcomeCancelled} {
		m.nushell.WithLabelValues(o)
	}
	return m
}

// Registry is the dedicated registry (for extra collectors and tests).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// ObserveHTTP records one finished request. route is the route template
// (e.g. /tasks/:id), never the raw path, so label values stay bounded.
func (m *Metrics) ObserveHTTP(method, route string, status int, took time.Duration) {
	if m == nil {
		return
	}
	s := strconv.Itoa(status)
	m.httpRequests.WithLabelValues(method, route, s).Inc()
	m.httpDuration.WithLabelValues(method, route, s).Observe(took.Seconds())
}

// ObserveTask records the run time of a task that reached a terminal
// status; tasks without both timestamps are skipped.
func (m *Metrics) ObserveTask(t storage.Task) {
	if m == nil || !t.Status.Terminal() || t.StartedAt == nil || t.CompletedAt == nil {
		return
	}
	d := t.CompletedAt.Sub(*t.StartedAt)
	if d < 0 {
		d = 0
	}
	m.taskDuration.WithLabelValues(t.WorkflowType, string(t.Status)).Observe(d.Seconds())
}

// NushellInvocation counts one Nushell attempt with its outcome.
func (m *Metrics) NushellInvocation(outcome string) {
	if m == nil {
		return
	}
	m.nushell.WithLabelValues(outcome).Inc()
}

// ScrapeSources are what the gauges computed at scrape time read.
type ScrapeSources struct {
	// Store is counted for tasks by status and live test environments.
	Store storage.Store
	// Containers counts the containers of managed test environments; nil
	// when Docker is not configured (the gauge is then absent).
	Containers func(context.Context) (int, error)
	// Timeout bounds one scrape's reads; default 5s.
	Timeout time.Duration
}

// RegisterScrape adds the gauges computed at scrape time from src.
func (m *Metrics) RegisterScrape(src ScrapeSources) error {
	if src.Timeout <= 0 {
		src.Timeout = 5 * time.Second
	}
	return m.reg.Register(&scrapeCollector{src: src})
}

var (
	tasksDesc = prometheus.NewDesc(Namespace+"_tasks",
		"Tasks in the store by status.", []string{"status"}, nil)
	envsDesc = prometheus.NewDesc(Namespace+"_test_environments_alive",
		"Test environments whose task is Running.", nil, nil)
	containersDesc = prometheus.NewDesc(Namespace+"_containers_managed",
		"Containers of managed test environments in the Docker engine.", nil, nil)
	scrapeErrDesc = prometheus.NewDesc(Namespace+"_scrape_errors",
		"Sources that could not be read during this scrape.", []string{"source"}, nil)
)

// testEnvironmentWorkflow is workflows.TestEnvironmentWorkflowName (not
// imported: workflows depends on activities, which depends on metrics).
const testEnvironmentWorkflow = "TestEnvironment"

type scrapeCollector struct{ src ScrapeSources }

func (c *scrapeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- tasksDesc
	ch <- envsDesc
	ch <- containersDesc
	ch <- scrapeErrDesc
}

func (c *scrapeCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.src.Timeout)
	defer cancel()
	storeErr := 0.0
	if c.src.Store != nil {
		for _, st := range []storage.TaskStatus{storage.StatusPending, storage.StatusRunning,
			storage.StatusCompleted, storage.StatusFailed, storage.StatusCancelled} {
			_, total, err := c.src.Store.List(ctx, storage.ListFilter{Status: st, Limit: 1})
			if err != nil {
				storeErr = 1
				continue
			}
			ch <- prometheus.MustNewConstMetric(tasksDesc, prometheus.GaugeValue, float64(total), string(st))
		}
		_, total, err := c.src.Store.List(ctx, storage.ListFilter{
			Status: storage.StatusRunning, WorkflowType: testEnvironmentWorkflow, Limit: 1})
		if err != nil {
			storeErr = 1
		} else {
			ch <- prometheus.MustNewConstMetric(envsDesc, prometheus.GaugeValue, float64(total))
		}
		ch <- prometheus.MustNewConstMetric(scrapeErrDesc, prometheus.GaugeValue, storeErr, "storage")
	}
	if c.src.Containers != nil {
		n, err := c.src.Containers(ctx)
		dockerErr := 0.0
		if err != nil {
			dockerErr = 1
		} else {
			ch <- prometheus.MustNewConstMetric(containersDesc, prometheus.GaugeValue, float64(n))
		}
		ch <- prometheus.MustNewConstMetric(scrapeErrDesc, prometheus.GaugeValue, dockerErr, "docker")
	}
}

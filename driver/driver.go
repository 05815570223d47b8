// Package driver names what the orchestrator needs of the systems it drives
// for test environments, so that the API, the janitor and the activities
// depend on small interfaces instead of the Docker client (the model is
// kind's providers/provider.go). The Docker Engine implementation is in
// driver/docker; the Nushell process supervisor in driver/nushell.
//
// Implementations are plain Go: no Temporal import. The activities package
// adapts them (heartbeats through WithHeartbeat, error classification
// through ImageError and SpecError, result shaping).
package driver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/provisioning/orchestrator/testenv"
)

// Environments is what the REST API and the janitor need of an engine:
// reachability, logs, and finding and removing what this service made.
type Environments interface {
	// Ping checks that the engine answers.
	Ping(ctx context.Context) error
	// Logs returns the last tail lines of a container's stdout and stderr,
	// each bounded in bytes too.
	Logs(ctx context.Context, containerID string, tail int) (stdout, stderr string, err error)
	// ListManagedEnvironments counts the objects this service labelled, per
	// environment id; instance, when non-empty, keeps only that deployment's.
	ListManagedEnvironments(ctx context.Context, instance string) (map[string]testenv.RemovedCounts, error)
	// RemoveEnvironment removes every object labelled with envID;
	// idempotent.
	RemoveEnvironment(ctx context.Context, envID string) (testenv.RemovedCounts, error)
}

// Engine is everything the test-environment activities do with an engine.
// Every method is idempotent where activities retry it.
type Engine interface {
	Environments
	// CreateEnvironment makes a plan's network and containers (checking
	// images first, so a missing image creates nothing), starts them when
	// start is set, and reports what exists. Errors an attempt cannot fix
	// are *ImageError or *SpecError.
	CreateEnvironment(ctx context.Context, p testenv.Plan, start bool) (testenv.EnvInfo, error)
	// StartEnvironment starts every container of an environment; a node
	// that does not keep running is a *SpecError.
	StartEnvironment(ctx context.Context, envID string) error
	// InspectNodes reports the containers' current state.
	InspectNodes(ctx context.Context, envID string) ([]testenv.NodeStatus, error)
	// RunTests runs each test in its node, one after another, and reports
	// every result; a failing test does not stop the run.
	// Taskserv checks (TestSpec.Taskserv) run the provisioning script
	// with opts.
	RunTests(ctx context.Context, tests []testenv.TestSpec, nodes []testenv.NodeStatus, opts RunOptions) (testenv.TestRun, error)
	// Converge installs one taskserv inside a node by running the user's
	// provisioning script there. A non-zero exit is a result (ExitCode),
	// not an error; errors are for installs that could not run at all.
	Converge(ctx context.Context, containerID string, spec testenv.ConvergeSpec, env []string) (ConvergeResult, error)
}

// RunOptions say how RunTests runs taskserv checks: the provisioning
// script's --infra and --settings, and its environment.
type RunOptions struct {
	Infra    string
	Settings string
	Env      []string
}

// ConvergeResult is one install's outcome: the script's run, and the change
// report it wrote to its result file (testenv.ResultFileEnv).
type ConvergeResult struct {
	testenv.TestResult
	// Report is nil when the script wrote no report.
	Report *testenv.ChangeReport
	// ReportError says why a report the script wrote was not usable.
	ReportError string
}

// HeartbeatInterval is how often drivers call the context's heartbeat while
// they wait on long operations (pulls, execs, removals): well below any
// sensible activity heartbeat timeout.
const HeartbeatInterval = 5 * time.Second

type heartbeatKey struct{}

// WithHeartbeat returns a context that makes driver methods call fn while
// they work on long operations, with a word on what they are doing (shown
// as the pending activity's heartbeat details). The activities pass
// func(d string) { activity.RecordHeartbeat(ctx, d) }, which keeps the
// drivers free of Temporal. A nil fn disables heartbeats.
func WithHeartbeat(ctx context.Context, fn func(detail string)) context.Context {
	return context.WithValue(ctx, heartbeatKey{}, fn)
}

// Heartbeater calls a context's heartbeat. It is not safe for concurrent
// use; make one per goroutine.
type Heartbeater struct {
	fn   func(string)
	last time.Time
}

// NewHeartbeater returns a Heartbeater for ctx's heartbeat (none: a no-op).
func NewHeartbeater(ctx context.Context) *Heartbeater {
	fn, _ := ctx.Value(heartbeatKey{}).(func(string))
	return &Heartbeater{fn: fn, last: time.Now()}
}

// Beat calls the heartbeat if HeartbeatInterval has passed since the last
// call: for loops that wait on a stream.
func (h *Heartbeater) Beat(detail string) {
	if time.Since(h.last) >= HeartbeatInterval {
		h.Now(detail)
	}
}

// Now calls the heartbeat at once: between the steps of a long operation.
func (h *Heartbeater) Now(detail string) {
	if h.fn != nil {
		h.last = time.Now()
		h.fn(detail)
	}
}

// KeepAlive calls the context's heartbeat every HeartbeatInterval from its
// own goroutine until stop is called: for engine calls that can block
// without any progress to beat on (a pull waiting on a slow registry).
// The heartbeat function must be safe for concurrent use (Temporal's
// activity.RecordHeartbeat is).
func KeepAlive(ctx context.Context, detail string) (stop func()) {
	return keepAlive(ctx, detail, HeartbeatInterval)
}

func keepAlive(ctx context.Context, detail string, every time.Duration) (stop func()) {
	fn, _ := ctx.Value(heartbeatKey{}).(func(string))
	if fn == nil {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				fn(detail)
			case <-done:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(done); <-finished })
	}
}

// ImageError reports that an image is neither present on the engine nor
// pullable. Retrying cannot fix it: someone has to build or load the image.
type ImageError struct {
	// Ref is the image reference as requested.
	Ref string
	// Err is why the pull failed.
	Err error
}

func (e *ImageError) Error() string {
	return fmt.Sprintf("image %s is not present locally and could not be pulled: %v; build or load it (docker import/load) first", e.Ref, e.Err)
}

func (e *ImageError) Unwrap() error { return e.Err }

// IsImageMissing reports whether err is (or wraps) an *ImageError: the image
// is missing and cannot be pulled, so the environment should fail without
// retrying.
func IsImageMissing(err error) bool {
	var ie *ImageError
	return errors.As(err, &ie)
}

// SpecError reports that a plan cannot be carried out as given (its subnet
// overlaps an existing network, a node exits right after its start):
// retrying the same plan cannot help.
type SpecError struct {
	// Msg says what is wrong, naming the request field where there is one.
	Msg string
	// Err is the underlying error, if any.
	Err error
}

func (e *SpecError) Error() string { return e.Msg }

func (e *SpecError) Unwrap() error { return e.Err }

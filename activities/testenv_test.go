package activities_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/driver"
	"github.com/provisioning/orchestrator/testenv"
)

// fakeEngine answers with canned errors and heartbeats through the
// context the adapter hands it, as the Docker driver does.
type fakeEngine struct {
	driver.Engine // methods not overridden panic: the test did not expect them
	err           error
}

func (f *fakeEngine) CreateEnvironment(ctx context.Context, p testenv.Plan, _ bool) (testenv.EnvInfo, error) {
	driver.NewHeartbeater(ctx).Now("create " + p.EnvID)
	return testenv.EnvInfo{Subnet: "10.213.0.0/24"}, f.err
}

func (f *fakeEngine) StartEnvironment(context.Context, string) error { return f.err }

func (f *fakeEngine) RunTests(ctx context.Context, tests []testenv.TestSpec, _ []testenv.NodeStatus) (testenv.TestRun, error) {
	hb := driver.NewHeartbeater(ctx)
	for _, t := range tests {
		hb.Now(t.Name)
	}
	return testenv.TestRun{Passed: true, Total: len(tests)}, f.err
}

func activityEnv(t *testing.T, eng driver.Engine) (*testsuite.TestActivityEnvironment, *activities.Activities, func() []string) {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	acts := &activities.Activities{Docker: eng}
	if eng == nil {
		acts.Docker = nil // an untyped nil, as the app wires a worker without an engine
	}
	env.RegisterActivity(acts)
	var mu sync.Mutex
	var beats []string
	env.SetOnActivityHeartbeatListener(func(_ *activity.Info, details converter.EncodedValues) {
		var d string
		if details.Get(&d) == nil {
			mu.Lock()
			beats = append(beats, d)
			mu.Unlock()
		}
	})
	return env, acts, func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), beats...) }
}

func requireAppError(t *testing.T, err error, typ string, nonRetryable bool) {
	t.Helper()
	var appErr *temporal.ApplicationError
	require.ErrorAs(t, err, &appErr)
	assert.Equal(t, typ, appErr.Type())
	assert.Equal(t, nonRetryable, appErr.NonRetryable())
}

func TestEngineErrorsAreClassified(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name         string
		err          error
		typ          string
		nonRetryable bool
	}{
		{"missing image", &driver.ImageError{Ref: "nope:1", Err: errors.New("pull denied")}, activities.ErrTypeImageMissing, true},
		{"wrapped missing image", errors.Join(errors.New("node a"), &driver.ImageError{Ref: "nope:1", Err: errors.New("x")}), activities.ErrTypeImageMissing, true},
		{"invalid spec", &driver.SpecError{Msg: "config.topology.network.subnet: overlaps"}, activities.ErrTypeInvalidSpec, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env, acts, _ := activityEnv(t, &fakeEngine{err: tc.err})
			_, err := env.ExecuteActivity(acts.CreateEnvironment, activities.CreateEnvInput{Plan: testenv.Plan{EnvID: "e1"}})
			requireAppError(t, err, tc.typ, tc.nonRetryable)
			assert.Contains(t, err.Error(), tc.err.Error())

			_, err = env.ExecuteActivity(acts.StartEnvironment, "e1")
			requireAppError(t, err, tc.typ, tc.nonRetryable)
		})
	}

	// Anything else (the engine hiccuped) stays retryable.
	env, acts, _ := activityEnv(t, &fakeEngine{err: errors.New("connection reset")})
	_, err := env.ExecuteActivity(acts.CreateEnvironment, activities.CreateEnvInput{Plan: testenv.Plan{EnvID: "e1"}})
	require.Error(t, err)
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) {
		assert.False(t, appErr.NonRetryable(), "a transient engine error must be retried")
	}
}

func TestNoEngineIsAClearPermanentError(t *testing.T) {
	t.Parallel()
	env, acts, _ := activityEnv(t, nil)
	_, err := env.ExecuteActivity(acts.RunTests, activities.RunTestsInput{EnvID: "e1"})
	requireAppError(t, err, activities.ErrTypeNoDocker, true)
	assert.Contains(t, err.Error(), "no Docker engine")
}

// The driver heartbeats through the context the adapter gives it: long
// engine calls (execs of tests that run for minutes) keep the activity
// alive in production, not only in tests that wrap the context themselves.
func TestDriverHeartbeatsReachTemporal(t *testing.T) {
	t.Parallel()
	env, acts, beats := activityEnv(t, &fakeEngine{})
	val, err := env.ExecuteActivity(acts.RunTests, activities.RunTestsInput{
		EnvID: "e1", Tests: []testenv.TestSpec{{Name: "hostname"}, {Name: "ping"}},
	})
	require.NoError(t, err)
	var run testenv.TestRun
	require.NoError(t, val.Get(&run))
	assert.Equal(t, 2, run.Total)
	// The SDK throttles heartbeats to the server: the first one goes at
	// once, later ones within the throttle interval are coalesced.
	require.NotEmpty(t, beats())
	assert.Equal(t, "hostname", beats()[0])

	env, acts, beats = activityEnv(t, &fakeEngine{})
	_, err = env.ExecuteActivity(acts.CreateEnvironment, activities.CreateEnvInput{Plan: testenv.Plan{EnvID: "e2"}})
	require.NoError(t, err)
	assert.Equal(t, []string{"create e2"}, beats())
}

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
	exit          int      // Converge's exit code
	env           []string // what Converge got
	report        *testenv.ChangeReport
	runOpts       driver.RunOptions // what RunTests got
}

func (f *fakeEngine) CreateEnvironment(ctx context.Context, p testenv.Plan, _ bool) (testenv.EnvInfo, error) {
	driver.NewHeartbeater(ctx).Now("create " + p.EnvID)
	return testenv.EnvInfo{Subnet: "10.213.0.0/24"}, f.err
}

func (f *fakeEngine) StartEnvironment(context.Context, string) error { return f.err }

func (f *fakeEngine) RunTests(ctx context.Context, tests []testenv.TestSpec, _ []testenv.NodeStatus, opts driver.RunOptions) (testenv.TestRun, error) {
	f.runOpts = opts
	hb := driver.NewHeartbeater(ctx)
	for _, t := range tests {
		hb.Now(t.Name)
	}
	return testenv.TestRun{Passed: true, Total: len(tests)}, f.err
}

func (f *fakeEngine) Converge(_ context.Context, _ string, spec testenv.ConvergeSpec, env []string) (driver.ConvergeResult, error) {
	if f.err != nil {
		return driver.ConvergeResult{}, f.err
	}
	f.env = env
	return driver.ConvergeResult{TestResult: testenv.TestResult{ExitCode: f.exit, Passed: f.exit == 0, Stdout: "installing " + spec.Taskserv + "\n",
		Stderr: "provisioning: something broke\n", DurationMS: 12}, Report: f.report}, nil
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

// A taskserv install's exit code is classified as a provisioning step's:
// 2, 3, 126, 127 permanent, others retried; the result (node, taskserv,
// exit code, output) travels as the failure's details, and the message
// names node and taskserv.
func TestConvergeTaskservClassifiesExitCodes(t *testing.T) {
	t.Parallel()
	in := activities.ConvergeInput{EnvID: "e1", ContainerID: "c1", Spec: testenv.ConvergeSpec{Node: "cp", Taskserv: "etcd", Infra: "i", Settings: "s"}}
	for _, tc := range []struct {
		exit      int
		typ       string
		permanent bool
	}{{1, activities.ErrTypeNushellExit, false}, {3, activities.ErrTypeNushellPermanent, true}, {127, activities.ErrTypeNushellPermanent, true}} {
		eng := &fakeEngine{exit: tc.exit}
		env, acts, _ := activityEnv(t, eng)
		acts.ConvergeEnv = []string{"PROVISIONING_DEMO_DELAY_MS=0"}
		_, err := env.ExecuteActivity(acts.ConvergeTaskserv, in)
		requireAppError(t, err, tc.typ, tc.permanent)
		assert.Contains(t, err.Error(), "taskserv etcd on node cp: exit code")
		assert.Contains(t, err.Error(), "provisioning: something broke")
		var appErr *temporal.ApplicationError
		require.ErrorAs(t, err, &appErr)
		var res testenv.TaskservResult
		require.NoError(t, appErr.Details(&res))
		assert.Equal(t, "failed", res.Status)
		require.NotNil(t, res.ExitCode)
		assert.Equal(t, tc.exit, *res.ExitCode)
		assert.Equal(t, "installing etcd\n", res.Output)
		assert.Contains(t, eng.env, "PROVISIONING_DEMO_DELAY_MS=0")
		assert.Contains(t, eng.env, "ORCHESTRATOR_STEP=cp/etcd")
	}

	env, acts, _ := activityEnv(t, &fakeEngine{})
	val, err := env.ExecuteActivity(acts.ConvergeTaskserv, in)
	require.NoError(t, err)
	var res testenv.TaskservResult
	require.NoError(t, val.Get(&res))
	assert.Equal(t, "completed", res.Status)
	assert.Equal(t, int32(1), res.Attempts)
	assert.Nil(t, res.Changed, "no report: changed is unknown, not false")

	// The script's change report reaches the result.
	env, acts, _ = activityEnv(t, &fakeEngine{report: &testenv.ChangeReport{Changed: true, Resources: []string{"/etc/etcd.conf"}}})
	val, err = env.ExecuteActivity(acts.ConvergeTaskserv, in)
	require.NoError(t, err)
	require.NoError(t, val.Get(&res))
	require.NotNil(t, res.Changed)
	assert.True(t, *res.Changed)
	assert.Equal(t, []string{"/etc/etcd.conf"}, res.Resources)
}

// Taskserv checks get the environment's infra and settings and the same
// node environment as installs.
func TestRunTestsPassesCheckOptions(t *testing.T) {
	t.Parallel()
	eng := &fakeEngine{}
	env, acts, _ := activityEnv(t, eng)
	acts.ConvergeEnv = []string{"PROVISIONING_DEMO_DELAY_MS=0"}
	_, err := env.ExecuteActivity(acts.RunTests, activities.RunTestsInput{EnvID: "e1", Infra: "lab", Settings: "./s.yaml",
		Tests: []testenv.TestSpec{{Name: "taskserv:redis", Node: "n1", Taskserv: "redis"}}})
	require.NoError(t, err)
	assert.Equal(t, "lab", eng.runOpts.Infra)
	assert.Equal(t, "./s.yaml", eng.runOpts.Settings)
	assert.Contains(t, eng.runOpts.Env, "PROVISIONING_DEMO_DELAY_MS=0")
	assert.Contains(t, eng.runOpts.Env, "ORCHESTRATOR_TASK_ID=e1")
}

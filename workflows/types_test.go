package workflows_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/workflows"
)

func validCommon() workflows.Common {
	return workflows.Common{TaskID: taskID1, Infra: "production", Settings: "./settings.yaml"}
}

// requireField asserts that err is a *FieldError for field.
func requireField(t *testing.T, err error, field string) {
	t.Helper()
	require.Error(t, err)
	var fe *workflows.FieldError
	require.True(t, errors.As(err, &fe), "want *FieldError, got %T: %v", err, err)
	assert.Equal(t, field, fe.Field, "error: %v", err)
	assert.True(t, strings.HasPrefix(err.Error(), field+": "), "message %q starts with the field", err.Error())
	assert.NotEmpty(t, fe.Message)
}

func TestValidateName(t *testing.T) {
	for _, v := range []string{
		"a", "web-01", "Web_01", "db.internal", "0", "a--b", strings.Repeat("x", 63),
	} {
		assert.NoError(t, workflows.ValidateName("server", v), "%q", v)
	}
	for _, v := range []string{
		"", "../x", "..", ".hidden", "-rf", "_x", "a/b", "a b", "a;b", "web-01; rm -rf /",
		"$(reboot)", "`id`", "a|b", "a\nb", "a\x00b", "é", strings.Repeat("x", 64),
	} {
		requireField(t, workflows.ValidateName("server", v), "server")
	}
}

func TestServerCreateInput_Validate(t *testing.T) {
	tooMany := make([]string, workflows.MaxServers+1)
	for i := range tooMany {
		tooMany[i] = fmt.Sprintf("s%d", i)
	}
	atMax := tooMany[:workflows.MaxServers]
	for _, tc := range []struct {
		name  string
		edit  func(*workflows.ServerCreateInput)
		field string // "" when valid
	}{
		{"valid", func(*workflows.ServerCreateInput) {}, ""},
		{"absolute settings", func(in *workflows.ServerCreateInput) { in.Settings = "/etc/provisioning/settings.k" }, ""},
		{"home settings", func(in *workflows.ServerCreateInput) { in.Settings = "~/infra/prod/settings.yaml" }, ""},
		{"settings with inner dash", func(in *workflows.ServerCreateInput) { in.Settings = "./my-settings.yaml" }, ""},
		{"63-char server", func(in *workflows.ServerCreateInput) { in.Servers = []string{strings.Repeat("s", 63)} }, ""},
		{"MaxServers servers", func(in *workflows.ServerCreateInput) { in.Servers = atMax }, ""},

		{"empty infra", func(in *workflows.ServerCreateInput) { in.Infra = "" }, "infra"},
		{"path traversal infra", func(in *workflows.ServerCreateInput) { in.Infra = "../x" }, "infra"},
		{"flag-like infra", func(in *workflows.ServerCreateInput) { in.Infra = "-rf" }, "infra"},
		{"64-char infra", func(in *workflows.ServerCreateInput) { in.Infra = strings.Repeat("i", 64) }, "infra"},
		{"infra is checked before settings", func(in *workflows.ServerCreateInput) { in.Infra, in.Settings = "", "" }, "infra"},

		{"empty settings", func(in *workflows.ServerCreateInput) { in.Settings = "" }, "settings"},
		{"settings with a space", func(in *workflows.ServerCreateInput) { in.Settings = "my settings.yaml" }, "settings"},
		{"settings with a semicolon", func(in *workflows.ServerCreateInput) { in.Settings = "s.yaml;reboot" }, "settings"},
		{"flag-like settings", func(in *workflows.ServerCreateInput) { in.Settings = "-rf" }, "settings"},
		{"settings with a quote", func(in *workflows.ServerCreateInput) { in.Settings = `s".yaml` }, "settings"},
		{"settings with command substitution", func(in *workflows.ServerCreateInput) { in.Settings = "$(id).yaml" }, "settings"},
		{"settings with a newline", func(in *workflows.ServerCreateInput) { in.Settings = "s.yaml\n--check" }, "settings"},
		{"settings longer than PATH_MAX", func(in *workflows.ServerCreateInput) { in.Settings = "/" + strings.Repeat("a", 4096) }, "settings"},

		// No servers means every server the settings define (the workflow lists them).
		{"no servers", func(in *workflows.ServerCreateInput) { in.Servers = nil }, ""},
		{"empty servers", func(in *workflows.ServerCreateInput) { in.Servers = []string{} }, ""},
		{"too many servers", func(in *workflows.ServerCreateInput) { in.Servers = tooMany }, "servers"},
		{"empty server", func(in *workflows.ServerCreateInput) { in.Servers = []string{"web-01", ""} }, "servers[1]"},
		{"server with shell metacharacters", func(in *workflows.ServerCreateInput) { in.Servers = []string{"web-01; rm -rf /"} }, "servers[0]"},
		{"path traversal server", func(in *workflows.ServerCreateInput) { in.Servers = []string{"web-01", "../x"} }, "servers[1]"},
		{"flag-like server", func(in *workflows.ServerCreateInput) { in.Servers = []string{"-rf"} }, "servers[0]"},
		{"64-char server", func(in *workflows.ServerCreateInput) { in.Servers = []string{strings.Repeat("s", 64)} }, "servers[0]"},
		{"duplicate server", func(in *workflows.ServerCreateInput) { in.Servers = []string{"web-01", "web-02", "web-01"} }, "servers[2]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := workflows.ServerCreateInput{Common: validCommon(), Servers: []string{"web-01", "web-02"}}
			tc.edit(&in)
			err := in.Validate()
			if tc.field == "" {
				assert.NoError(t, err)
				return
			}
			requireField(t, err, tc.field)
		})
	}
}

func TestServerCreateInput_DuplicateMessage(t *testing.T) {
	in := workflows.ServerCreateInput{Common: validCommon(), Servers: []string{"web-01", "web-01"}}
	err := in.Validate()
	requireField(t, err, "servers[1]")
	assert.Contains(t, err.Error(), `duplicate server "web-01"`)
}

func TestTaskservCreateInput_Validate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*workflows.TaskservCreateInput)
		field string
	}{
		{"valid without servers", func(*workflows.TaskservCreateInput) {}, ""},
		{"valid with servers", func(in *workflows.TaskservCreateInput) { in.Servers = []string{"cp-01", "worker-01"} }, ""},
		{"empty taskserv", func(in *workflows.TaskservCreateInput) { in.Taskserv = "" }, "taskserv"},
		{"taskserv path", func(in *workflows.TaskservCreateInput) { in.Taskserv = "../../bin/sh" }, "taskserv"},
		{"common fields first", func(in *workflows.TaskservCreateInput) { in.Infra, in.Taskserv = "", "" }, "infra"},
		{"bad server", func(in *workflows.TaskservCreateInput) { in.Servers = []string{"cp-01", "a b"} }, "servers[1]"},
		{"duplicate server", func(in *workflows.TaskservCreateInput) { in.Servers = []string{"cp-01", "cp-01"} }, "servers[1]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := workflows.TaskservCreateInput{Common: validCommon(), Taskserv: "kubernetes"}
			tc.edit(&in)
			err := in.Validate()
			if tc.field == "" {
				assert.NoError(t, err)
				return
			}
			requireField(t, err, tc.field)
		})
	}
}

func TestClusterCreateInput_Validate(t *testing.T) {
	for _, tc := range []struct {
		cluster string
		field   string
	}{
		{"k8s-main", ""},
		{"", "cluster"},
		{"-k8s", "cluster"},
		{"k8s/main", "cluster"},
		{strings.Repeat("c", 64), "cluster"},
	} {
		t.Run(fmt.Sprintf("%.20q", tc.cluster), func(t *testing.T) {
			in := workflows.ClusterCreateInput{Common: validCommon(), Cluster: tc.cluster}
			err := in.Validate()
			if tc.field == "" {
				assert.NoError(t, err)
				return
			}
			requireField(t, err, tc.field)
		})
	}
}

func TestArgs(t *testing.T) {
	c := workflows.Common{Infra: "prod", Settings: "./s.yaml"}
	check := c
	check.CheckMode, check.Wait = true, true

	assert.Equal(t, []string{"server", "create", "--infra", "prod", "--settings", "./s.yaml", "web-01"},
		workflows.ServerCreateInput{Common: c}.ServerArgs("web-01"))
	assert.Equal(t, []string{"server", "create", "--infra", "prod", "--settings", "./s.yaml", "--check", "--wait", "web-01"},
		workflows.ServerCreateInput{Common: check}.ServerArgs("web-01"))

	ts := workflows.TaskservCreateInput{Common: check, Taskserv: "containerd"}
	assert.Equal(t, []string{"taskserv", "create", "containerd", "--infra", "prod", "--settings", "./s.yaml", "--check", "--wait"}, ts.TaskservArgs(""))
	assert.Equal(t, []string{"taskserv", "create", "containerd", "--infra", "prod", "--settings", "./s.yaml", "--check", "--wait", "cp-01"}, ts.TaskservArgs("cp-01"))

	assert.Equal(t, []string{"cluster", "create", "k8s", "--infra", "prod", "--settings", "./s.yaml"},
		workflows.ClusterCreateInput{Common: c, Cluster: "k8s"}.ClusterArgs())

	// Calls do not share backing arrays.
	in := workflows.ServerCreateInput{Common: check}
	a, b := in.ServerArgs("a"), in.ServerArgs("b")
	assert.Equal(t, "a", a[len(a)-1])
	assert.Equal(t, "b", b[len(b)-1])
}

func TestExecPolicy_WithDefaults(t *testing.T) {
	want := workflows.ExecPolicy{
		Parallelism:        workflows.DefaultParallelism,
		MaxAttempts:        workflows.DefaultMaxAttempts,
		InitialInterval:    workflows.DefaultInitialInterval,
		BackoffCoefficient: workflows.DefaultBackoffCoefficient,
		MaxInterval:        workflows.DefaultMaxInterval,
		StepTimeout:        workflows.DefaultStepTimeout,
		HeartbeatTimeout:   workflows.DefaultHeartbeatTimeout,
	}
	// The documented defaults.
	assert.Equal(t, workflows.ExecPolicy{
		Parallelism: 4, MaxAttempts: 3, InitialInterval: time.Second, BackoffCoefficient: 2,
		MaxInterval: time.Minute, StepTimeout: time.Hour, HeartbeatTimeout: 30 * time.Second,
	}, want)

	assert.Equal(t, want, workflows.ExecPolicy{}.WithDefaults(), "zero value")
	assert.Equal(t, want, workflows.ExecPolicy{
		Parallelism: -1, MaxAttempts: -1, InitialInterval: -time.Second, BackoffCoefficient: 0.5,
		MaxInterval: -1, StepTimeout: -1, HeartbeatTimeout: -1,
	}.WithDefaults(), "negative and sub-1 values take the defaults")

	set := workflows.ExecPolicy{
		Parallelism: 16, MaxAttempts: 1, InitialInterval: 10 * time.Millisecond, BackoffCoefficient: 1,
		MaxInterval: time.Second, StepTimeout: 5 * time.Minute, HeartbeatTimeout: 5 * time.Second,
	}
	assert.Equal(t, set, set.WithDefaults(), "set values are kept (a coefficient of exactly 1 is valid)")

	partial := workflows.ExecPolicy{Parallelism: 2, StepTimeout: time.Minute}.WithDefaults()
	assert.Equal(t, 2, partial.Parallelism)
	assert.Equal(t, time.Minute, partial.StepTimeout)
	assert.Equal(t, int32(workflows.DefaultMaxAttempts), partial.MaxAttempts)
	assert.Equal(t, workflows.DefaultHeartbeatTimeout, partial.HeartbeatTimeout)
}

// The error types are part of the SDK surface and of recorded histories:
// operators filter on them and SDK callers switch on them, so their values
// must never change with a rename of the Go constants.
func TestErrorTypesAreStable(t *testing.T) {
	t.Parallel()
	for got, want := range map[string]string{
		workflows.ErrTypeInvalidInput:            "InvalidInput",
		workflows.ErrTypeProvisioningFailed:      "ProvisioningFailed",
		workflows.ErrTypeEnvironmentCreateFailed: "EnvironmentCreateFailed",
		workflows.ErrTypeConvergeFailed:          "ConvergeFailed",
		workflows.ErrTypeRunInProgress:           "RunInProgress",
		workflows.ErrTypeEnvNotReady:             "EnvironmentNotReady",
		workflows.ErrTypeInvalidRunSpec:          "InvalidRunRequest",
		activities.ErrTypeInvalidTaskID:          "InvalidTaskID",
		activities.ErrTypeNushellExit:            "NushellExit",
		activities.ErrTypeNushellPermanent:       "NushellPermanent",
		activities.ErrTypeNushellStart:           "NushellStart",
		activities.ErrTypeInvalidArgs:            "InvalidArgs",
		activities.ErrTypeImageMissing:           "ImageMissing",
		activities.ErrTypeInvalidSpec:            "InvalidSpec",
		activities.ErrTypeNoDocker:               "DockerUnavailable",
	} {
		assert.Equal(t, want, got)
	}
}

// The task name, command and args the API's Pending record and the
// workflow's projections show come from one place.
func TestTaskSpecs(t *testing.T) {
	t.Parallel()
	common := workflows.Common{Infra: "prod", Settings: "./s.yaml", CheckMode: true}
	for _, tc := range []struct {
		got  workflows.TaskSpec
		want workflows.TaskSpec
	}{
		{workflows.ServerCreateInput{Common: common, Servers: []string{"web-01", "web-02"}}.Task(),
			workflows.TaskSpec{Workflow: "ServerCreate", Name: "server create prod", Command: "server create",
				Args: []string{"--infra", "prod", "--settings", "./s.yaml", "--check", "web-01", "web-02"}, Targets: []string{"web-01", "web-02"}}},
		{workflows.TaskservCreateInput{Common: common, Taskserv: "kubernetes", Servers: []string{"web-01"}}.Task(),
			workflows.TaskSpec{Workflow: "TaskservCreate", Name: "taskserv create kubernetes", Command: "taskserv create",
				Args: []string{"kubernetes", "--infra", "prod", "--settings", "./s.yaml", "--check", "web-01"}, Targets: []string{"web-01"}}},
		{workflows.ClusterCreateInput{Common: common, Cluster: "k8s"}.Task(),
			workflows.TaskSpec{Workflow: "ClusterCreate", Name: "cluster create k8s", Command: "cluster create",
				Args: []string{"k8s", "--infra", "prod", "--settings", "./s.yaml", "--check"}, Targets: []string{"prod"}}},
	} {
		assert.Equal(t, tc.want, tc.got)
	}
}

func TestTaskSpecSummary(t *testing.T) {
	in := workflows.ServerCreateInput{Common: workflows.Common{Infra: "production"}, Servers: []string{"web-01", "web-02"}}
	assert.Equal(t, "server create production: web-01, web-02", in.Task().Summary())
	cl := workflows.ClusterCreateInput{Common: workflows.Common{Infra: "production"}, Cluster: "buildkit"}
	assert.Equal(t, "cluster create buildkit: production", cl.Task().Summary())
	many := make([]string, workflows.MaxServers)
	for i := range many {
		many[i] = fmt.Sprintf("server-%03d", i)
	}
	long := workflows.ServerCreateInput{Common: workflows.Common{Infra: "production"}, Servers: many}.Task().Summary()
	assert.Len(t, []rune(long), 200, "one line in the UI")
	assert.True(t, strings.HasSuffix(long, "…"))
	assert.Contains(t, in.Details(), "**priority** 3")
}

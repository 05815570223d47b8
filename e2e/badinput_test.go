package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/api/workflowservice/v1"
)

func TestBadInputIsRejectedAndStartsNothing(t *testing.T) {
	h := startApp(t)
	huge := `{"infra":"production","settings":"./s.yaml","servers":["` + strings.Repeat("a", 2<<20) + `"]}`
	cases := []struct {
		name, path, ctype, body string
		status                  int
		field                   string
	}{
		{"malformed JSON", "/workflows/servers/create", "application/json", `{"infra":`, 400, ""},
		{"not an object", "/workflows/servers/create", "application/json", `[1,2]`, 400, ""},
		{"two objects", "/workflows/servers/create", "application/json", `{"infra":"p","settings":"s","servers":["a"]}{}`, 400, ""},
		{"empty body", "/workflows/servers/create", "application/json", ``, 400, ""},
		{"unknown field", "/workflows/servers/create", "application/json", `{"infra":"p","settings":"s","servers":["a"],"sevrers":["b"]}`, 400, "sevrers"},
		{"wrong type servers", "/workflows/servers/create", "application/json", `{"infra":"p","settings":"s","servers":"web-01"}`, 400, "servers"},
		{"wrong type check_mode", "/workflows/servers/create", "application/json", `{"infra":"p","settings":"s","servers":["a"],"check_mode":"yes"}`, 400, "check_mode"},
		{"empty infra", "/workflows/servers/create", "application/json", `{"infra":"","settings":"s","servers":["a"]}`, 400, "infra"},
		{"missing infra", "/workflows/servers/create", "application/json", `{"settings":"s","servers":["a"]}`, 400, "infra"},
		{"missing settings", "/workflows/servers/create", "application/json", `{"infra":"p","servers":["a"]}`, 400, "settings"},
		{"settings with shell", "/workflows/servers/create", "application/json", `{"infra":"p","settings":"$(reboot)","servers":["a"]}`, 400, "settings"},
		{"settings as flag", "/workflows/servers/create", "application/json", `{"infra":"p","settings":"--help","servers":["a"]}`, 400, "settings"},
		{"missing servers", "/workflows/servers/create", "application/json", `{"infra":"p","settings":"s"}`, 400, "servers"},
		{"null servers", "/workflows/servers/create", "application/json", `{"infra":"p","settings":"s","servers":null}`, 400, "servers"},
		{"shell injection", "/workflows/servers/create", "application/json", `{"infra":"p","settings":"s","servers":["web-01; rm -rf /"]}`, 400, "servers[0]"},
		{"path traversal", "/workflows/servers/create", "application/json", `{"infra":"p","settings":"s","servers":["ok","../x"]}`, 400, "servers[1]"},
		{"duplicate server", "/workflows/servers/create", "application/json", `{"infra":"p","settings":"s","servers":["a","a"]}`, 400, "servers[1]"},
		{"infra traversal", "/workflows/servers/create", "application/json", `{"infra":"../../etc","settings":"s","servers":["a"]}`, 400, "infra"},
		{"oversized body", "/workflows/servers/create", "application/json", huge, 413, ""},
		{"form content type", "/workflows/servers/create", "application/x-www-form-urlencoded", `infra=p`, 415, ""},
		{"taskserv missing name", "/workflows/taskserv/create", "application/json", `{"infra":"p","settings":"s"}`, 400, "taskserv"},
		{"taskserv bad name", "/workflows/taskserv/create", "application/json", `{"infra":"p","settings":"s","taskserv":"k8s && curl x"}`, 400, "taskserv"},
		{"cluster missing", "/workflows/cluster/create", "application/json", `{"infra":"p","settings":"s"}`, 400, "cluster"},
		{"cluster unknown field", "/workflows/cluster/create", "application/json", `{"infra":"p","settings":"s","cluster":"c","servers":["a"]}`, 400, "servers"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, http.MethodPost, h.base+tc.path, tc.ctype, bytes.NewBufferString(tc.body))
			require.Equal(t, tc.status, r.status, "%s", r.raw)
			require.False(t, r.env.Success)
			if tc.field != "" {
				assert.Equal(t, tc.field, r.env.Error.Field, "%s", r.raw)
				assert.Contains(t, r.env.Error.Message, tc.field)
			}
		})
	}

	getCases := []struct {
		name, path string
		status     int
		field      string
	}{
		{"id not a uuid", "/tasks/not-a-uuid", 400, "id"},
		{"id traversal", "/tasks/..%2F..%2Fetc%2Fpasswd", 400, "id"},
		{"uppercase uuid", "/tasks/6E910FC7-8B45-4E5A-AABA-26961BC94911", 400, "id"},
		{"unknown id", "/tasks/6e910fc7-8b45-4e5a-aaba-26961bc94911", 404, ""},
		{"bad status", "/tasks?status=running", 400, "status"},
		{"limit zero", "/tasks?limit=0", 400, "limit"},
		{"limit too big", "/tasks?limit=1001", 400, "limit"},
		{"limit not a number", "/tasks?limit=ten", 400, "limit"},
		{"negative offset", "/tasks?offset=-1", 400, "offset"},
		{"unknown query", "/tasks?stauts=Failed", 400, "stauts"},
		{"unknown route", "/nope", 404, ""},
	}
	for _, tc := range getCases {
		t.Run(tc.name, func(t *testing.T) {
			r := h.get(tc.path)
			require.Equal(t, tc.status, r.status, "%s", r.raw)
			if tc.field != "" {
				assert.Equal(t, tc.field, r.env.Error.Field, "%s", r.raw)
			}
		})
	}

	r := do(t, http.MethodPost, h.base+"/tasks/zzz/cancel", "", nil)
	assert.Equal(t, http.StatusBadRequest, r.status)
	assert.Equal(t, "id", r.env.Error.Field)

	// Nothing was created anywhere: no task, no workflow, no provider state.
	list := h.get("/tasks")
	var tasks []json.RawMessage
	require.NoError(t, json.Unmarshal(list.env.Data, &tasks))
	assert.Empty(t, tasks)
	entries, err := os.ReadDir(filepath.Join(h.dataDir, "queue.rkvs", "tasks"))
	if err == nil {
		for _, e := range entries {
			assert.False(t, strings.HasSuffix(e.Name(), ".json"), "task file %s left behind", e.Name())
		}
	}
	assert.NoDirExists(t, h.stateDir)
	resp, err := h.app.Client().ListWorkflow(t.Context(), &workflowservice.ListWorkflowExecutionsRequest{})
	require.NoError(t, err)
	assert.Empty(t, resp.Executions, "a workflow was started for bad input")
}

func TestBadFlagsStopStartup(t *testing.T) {
	cases := map[string][]string{
		"--port":         {"--port", "70000"},
		"--storage-type": {"--storage-type", "floppy"},
		"--parallelism":  {"--parallelism", "0"},
		"unknown":        {"frobnicate"},
	}
	for want, args := range cases {
		t.Run(want, func(t *testing.T) {
			var stderr bytes.Buffer
			err := runApp(t, args, &stderr)
			require.Error(t, err)
			if want != "unknown" {
				assert.Contains(t, err.Error(), want)
			}
		})
	}
	t.Run("env", func(t *testing.T) {
		t.Setenv("ORCHESTRATOR_PORT", "eighty")
		err := runApp(t, nil, &bytes.Buffer{})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "ORCHESTRATOR_PORT")
	})
}

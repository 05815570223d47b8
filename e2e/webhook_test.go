package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/sdk"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/webhook"
	"github.com/provisioning/orchestrator/workflows"
)

// hookRequest is one request the receiver got.
type hookRequest struct {
	key      string
	verified error
	answered int
	event    webhook.Event
}

// hookReceiver is a loopback webhook receiver that answers 500 to its first
// request and 204 to the rest, checking every signature with secret.
type hookReceiver struct {
	srv    *httptest.Server
	secret []byte
	mu     sync.Mutex
	reqs   []hookRequest
}

func newHookReceiver(t *testing.T, secret []byte) *hookReceiver {
	r := &hookReceiver{secret: secret}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		hr := hookRequest{key: req.Header.Get(webhook.HeaderIdempotencyKey),
			verified: webhook.Verify(r.secret, req.Header.Get(webhook.HeaderTimestamp), req.Header.Get(webhook.HeaderSignature), body, time.Now(), 0)}
		if err := json.Unmarshal(body, &hr.event); err != nil {
			hr.verified = err
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		hr.answered = http.StatusNoContent
		if len(r.reqs) == 0 {
			hr.answered = http.StatusInternalServerError
		}
		r.reqs = append(r.reqs, hr)
		w.WriteHeader(hr.answered)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *hookReceiver) requests() []hookRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]hookRequest(nil), r.reqs...)
}

// delivered are the events of a task the receiver accepted, in order.
func (r *hookReceiver) delivered(taskID string) []webhook.Event {
	var out []webhook.Event
	for _, q := range r.requests() {
		if q.event.TaskID == taskID && q.answered < 300 {
			out = append(out, q.event)
		}
	}
	return out
}

// waitWorkflow waits until the task's workflow has ended: its webhook
// deliveries (which it drains before ending) are all done.
func (h *harness) waitWorkflow(id string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_ = h.app.Client().GetWorkflow(ctx, id, "").Get(ctx, nil)
	require.NoError(h.t, ctx.Err(), "workflow %s did not end", id)
}

func (h *harness) auditEntries(id string) []storage.AuditEntry {
	h.t.Helper()
	r := h.get("/tasks/" + id + "/audit")
	require.Equal(h.t, http.StatusOK, r.status, "%s", r.raw)
	var entries []storage.AuditEntry
	require.NoError(h.t, json.Unmarshal(r.env.Data, &entries))
	return entries
}

// A webhook receiver that fails once still gets exactly one delivery per
// state change, each signed, in order: Running and Completed for a task
// that succeeds, Running and Failed for one that fails. The failed attempt
// is retried with the same Idempotency-Key, and the audit trail records
// each delivery.
func TestWebhookDeliveredOncePerStatusChange(t *testing.T) {
	secret := []byte("e2e-webhook-secret-0123456789")
	keyFile := filepath.Join(t.TempDir(), "webhook.key")
	require.NoError(t, os.WriteFile(keyFile, append(secret, '\n'), 0o600))
	h := startAppWith(t, func(c *app.Config) { c.WebhookSecretFile = keyFile }, "PROVISIONING_DEMO_FAIL=bad-01:permanent")
	rcv := newHookReceiver(t, secret)
	hook := map[string]any{"url": rcv.srv.URL + "/hooks/orchestrator?token=abc"}

	ok := h.submit("/workflows/servers/create", map[string]any{
		"infra": "lab", "settings": "./s.yaml", "servers": []string{"web-01", "web-02"}, "webhook": hook})
	done, _ := waitTask(t, h.base, ok, 2*time.Minute, terminal)
	require.Equal(t, storage.StatusCompleted, done.Status, "%+v", done)
	h.waitWorkflow(ok)

	bad := h.submit("/workflows/taskserv/create", map[string]any{
		"infra": "lab", "settings": "./s.yaml", "taskserv": "bad-01", "servers": []string{}, "webhook": hook})
	failed, _ := waitTask(t, h.base, bad, 2*time.Minute, terminal)
	require.Equal(t, storage.StatusFailed, failed.Status, "%+v", failed)
	h.waitWorkflow(bad)

	reqs := rcv.requests()
	for i, q := range reqs {
		require.NoError(t, q.verified, "request %d (%s) carries a valid signature", i, q.key)
	}
	require.Len(t, reqs, 5, "4 changes and one retry: %+v", reqs)
	assert.Equal(t, http.StatusInternalServerError, reqs[0].answered)
	assert.Equal(t, reqs[0].key, reqs[1].key, "the retry has the same Idempotency-Key")
	assert.Equal(t, reqs[0].event, reqs[1].event, "and the same event")

	got := rcv.delivered(ok)
	require.Len(t, got, 2)
	assert.Equal(t, []storage.TaskStatus{storage.StatusRunning, storage.StatusCompleted}, []storage.TaskStatus{got[0].Status, got[1].Status})
	assert.Equal(t, []storage.TaskStatus{storage.StatusPending, storage.StatusRunning}, []storage.TaskStatus{got[0].PreviousStatus, got[1].PreviousStatus})
	assert.Equal(t, done.Version, got[1].Version, "Completed carries the version that stored it")
	assert.Equal(t, storage.Progress{Done: 2, Total: 2}, got[1].Progress)
	assert.Equal(t, "server create lab", got[1].Name)
	assert.Equal(t, reqs[0].key, got[0].IdempotencyKey())

	got = rcv.delivered(bad)
	require.Len(t, got, 2)
	assert.Equal(t, []storage.TaskStatus{storage.StatusRunning, storage.StatusFailed}, []storage.TaskStatus{got[0].Status, got[1].Status})
	require.NotNil(t, got[1].Error)
	assert.Contains(t, *got[1].Error, "bad-01")

	// Each delivery's outcome is in the task's audit trail.
	var outcomes []string
	for _, e := range h.auditEntries(ok) {
		if strings.HasPrefix(e.Action, "webhook_") {
			outcomes = append(outcomes, e.Action+" "+string(e.After))
			assert.NotContains(t, e.Detail, "token=abc", "the URL's query stays out of the audit trail")
		}
	}
	assert.Equal(t, []string{activities.ActionWebhookDelivered + " Running", activities.ActionWebhookDelivered + " Completed"}, outcomes)

	// The Nushell wrapper sends --webhook as the request's webhook.
	var viaNu nuTask
	r := runNuJSON(t, h.base, "cluster_create_workflow k8s lab --settings ./s.yaml --wait --webhook '"+rcv.srv.URL+"/nu' | to json",
		&viaNu, "workflows/create.nu")
	require.Equal(t, "Completed", viaNu.Status, r.stderr)
	h.waitWorkflow(viaNu.ID)
	got = rcv.delivered(viaNu.ID)
	require.Len(t, got, 2)
	assert.Equal(t, []storage.TaskStatus{storage.StatusRunning, storage.StatusCompleted}, []storage.TaskStatus{got[0].Status, got[1].Status})
	assert.Len(t, rcv.requests(), 7, "no retries once the receiver answers")

	// So does the Go SDK's WithWebhook (a bad URL is refused before any
	// start).
	c := &sdk.Client{Temporal: h.app.Client(), Policy: fastPolicy}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := c.StartClusterCreate(ctx, "lab", "./s.yaml", "k8s", sdk.WithWebhook("file:///etc/passwd"))
	var fe *workflows.FieldError
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, "webhook.url", fe.Field)
	run, err := c.StartClusterCreate(ctx, "lab", "./s.yaml", "k8s", sdk.WithWebhook(rcv.srv.URL+"/sdk"))
	require.NoError(t, err)
	h.waitWorkflow(run.ID())
	got = rcv.delivered(run.ID())
	require.Len(t, got, 2)
	assert.Equal(t, []storage.TaskStatus{storage.StatusRunning, storage.StatusCompleted}, []storage.TaskStatus{got[0].Status, got[1].Status})
}

// Without a webhook secret the service refuses a webhook (400 naming it)
// and creates nothing.
func TestWebhookRefusedWithoutSecret(t *testing.T) {
	h := startApp(t)
	r := h.postJSON("/workflows/cluster/create", map[string]any{
		"infra": "lab", "settings": "./s.yaml", "cluster": "k8s", "webhook": map[string]any{"url": "https://hooks.example.com/x"}})
	require.Equal(t, http.StatusBadRequest, r.status, "%s", r.raw)
	assert.Equal(t, "webhook", r.env.Error.Field)
	assert.Contains(t, r.env.Error.Message, "--webhook-secret-file")
	list := h.get("/tasks")
	var tasks []storage.Task
	require.NoError(t, json.Unmarshal(list.env.Data, &tasks))
	assert.Empty(t, tasks)
}

// A batch's webhook gets the batch's status changes and those of each
// operation's task, once each, signed; a schedule's webhook gets its
// runs' (refused, naming action.webhook, without a secret).
func TestWebhookBatchAndSchedule(t *testing.T) {
	secret := []byte("e2e-webhook-secret-batch-0123456789")
	keyFile := filepath.Join(t.TempDir(), "webhook.key")
	require.NoError(t, os.WriteFile(keyFile, secret, 0o600))
	h := startAppWith(t, func(c *app.Config) { c.WebhookSecretFile = keyFile }, "PROVISIONING_DEMO_DELAY_MS=50")
	rcv := newHookReceiver(t, secret)

	id := h.submit("/workflows/batch", map[string]any{"infra": "lab", "settings": "./s.yaml", "webhook": map[string]any{"url": rcv.srv.URL + "/batch"},
		"operations": []map[string]any{
			{"id": "web", "type": "server", "servers": []string{"web-01"}},
			{"id": "k8s", "type": "taskserv", "taskserv": "kubernetes", "servers": []string{"web-01"}, "depends_on": []string{"web"}},
		}})
	task, _ := waitTask(t, h.base, id, 2*time.Minute, terminal)
	require.Equal(t, storage.StatusCompleted, task.Status, deref(task.Error))
	h.waitWorkflow(id)
	for _, q := range rcv.requests() {
		require.NoError(t, q.verified, q.key)
	}
	want := []storage.TaskStatus{storage.StatusRunning, storage.StatusCompleted}
	for _, tid := range []string{id, task.Batch.Operations[0].TaskID, task.Batch.Operations[1].TaskID} {
		h.waitWorkflow(tid)
		got := rcv.delivered(tid)
		var st []storage.TaskStatus
		for _, e := range got {
			st = append(st, e.Status)
		}
		assert.Equal(t, want, st, "task %s", tid)
	}
	assert.Equal(t, workflows.BatchWorkflowName, rcv.delivered(id)[1].WorkflowType)

	r := h.postJSON("/schedules", map[string]any{"id": "hooked", "cron": []string{"0 2 * * *"}, "paused": true,
		"action": map[string]any{"type": "cluster", "infra": "lab", "settings": "./s.yaml", "cluster": "k8s",
			"webhook": map[string]any{"url": rcv.srv.URL + "/schedule"}}})
	require.Equal(t, http.StatusCreated, r.status, "%s", r.raw)
	require.Equal(t, http.StatusAccepted, h.postJSON("/schedules/hooked/trigger", nil).status)
	var runTask string
	eventually(t, time.Minute, "the scheduled run's Completed delivery", func() bool {
		v, _ := h.schedule("hooked")
		if len(v.RecentRuns) == 0 {
			return false
		}
		runTask = v.RecentRuns[0].TaskID
		got := rcv.delivered(runTask)
		return len(got) == 2 && got[1].Status == storage.StatusCompleted
	})
	assert.Equal(t, storage.StatusRunning, rcv.delivered(runTask)[0].Status)

	plain := startApp(t)
	r = plain.postJSON("/schedules", map[string]any{"id": "nohook", "interval": "1h",
		"action": map[string]any{"type": "cluster", "infra": "lab", "settings": "./s.yaml", "cluster": "k8s",
			"webhook": map[string]any{"url": "https://hooks.example.com/x"}}})
	require.Equal(t, http.StatusBadRequest, r.status, "%s", r.raw)
	assert.Equal(t, "action.webhook", r.env.Error.Field)
	r = plain.postJSON("/workflows/batch", map[string]any{"infra": "lab", "settings": "./s.yaml", "webhook": map[string]any{"url": "ftp://x"},
		"operations": []map[string]any{{"id": "web", "type": "server", "servers": []string{"web-01"}}}})
	require.Equal(t, http.StatusBadRequest, r.status, "%s", r.raw)
	assert.Contains(t, r.env.Error.Field, "webhook")
}

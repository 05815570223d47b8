package workflows_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/webhook"
	"github.com/provisioning/orchestrator/workflows"
)

const hookURL = "https://hooks.example.com/orchestrator?token=t"

// hookAttempt is one DeliverWebhook attempt as the mock saw it.
type hookAttempt struct {
	d       activities.WebhookDelivery
	attempt int32
	at      time.Time // workflow clock when the attempt returned
	err     error
}

// hookRecorder mocks DeliverWebhook with answer (nil delivers) and
// records every attempt.
type hookRecorder struct {
	mu       sync.Mutex
	attempts []hookAttempt
}

func (r *hookRecorder) all() []hookAttempt {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]hookAttempt(nil), r.attempts...)
}

// delivered are the attempts that succeeded, in order.
func (r *hookRecorder) delivered() []webhook.Event {
	var out []webhook.Event
	for _, a := range r.all() {
		if a.err == nil {
			out = append(out, a.d.Event)
		}
	}
	return out
}

func mockHook(h *harness, after time.Duration, answer func(d activities.WebhookDelivery, attempt int32) error) *hookRecorder {
	r := &hookRecorder{}
	c := h.env.OnActivity(h.acts.DeliverWebhook, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, d activities.WebhookDelivery) (activities.WebhookResult, error) {
			attempt := activity.GetInfo(ctx).Attempt
			var err error
			if answer != nil {
				err = answer(d, attempt)
			}
			r.mu.Lock()
			r.attempts = append(r.attempts, hookAttempt{d: d, attempt: attempt, at: h.env.Now(), err: err})
			r.mu.Unlock()
			if err != nil {
				return activities.WebhookResult{}, err
			}
			return activities.WebhookResult{Status: 200, Attempt: attempt}, nil
		}).Maybe()
	if after > 0 {
		c.After(after)
	}
	return r
}

func hookStatuses(es []webhook.Event) []string {
	var out []string
	for _, e := range es {
		out = append(out, string(e.PreviousStatus)+"→"+string(e.Status))
	}
	return out
}

func withHook(in workflows.ServerCreateInput) workflows.ServerCreateInput {
	in.Webhook = &workflows.Webhook{URL: hookURL}
	return in
}

func TestWebhook_OneDeliveryPerStatusChangeInOrder(t *testing.T) {
	h := newHarness(t)
	h.mockRun(stepIs("web-01"), time.Second, succeed).Once()
	h.mockRun(stepIs("web-02"), 2*time.Second, succeed).Once()
	hooks := mockHook(h, 0, nil)
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, withHook(serverInput(taskID1, "web-01", "web-02")))
	h.result()

	got := hooks.delivered()
	require.Len(t, hooks.all(), 2, "one attempt per change: progress projections send nothing")
	assert.Equal(t, []string{"Pending→Running", "Running→Completed"}, hookStatuses(got))
	ps := h.store.projections(taskID1)
	// Running is the first projection, Completed the last: the events carry
	// the versions that first showed them, the idempotency keys.
	assert.Equal(t, ps[0].Version, got[0].Version)
	assert.Equal(t, ps[len(ps)-1].Version, got[1].Version)
	assert.Equal(t, taskID1+":"+"1", got[0].IdempotencyKey())
	for _, e := range got {
		assert.Equal(t, webhook.EventStatusChanged, e.Event)
		assert.Equal(t, taskID1, e.TaskID)
		assert.Equal(t, workflows.ServerCreateWorkflowName, e.WorkflowType)
		assert.Equal(t, "server create production", e.Name)
	}
	assert.Equal(t, storage.Progress{Done: 2, Total: 2}, got[1].Progress)
	assert.Nil(t, got[1].Error)
	for _, a := range hooks.all() {
		assert.Equal(t, hookURL, a.d.URL)
	}
}

func TestWebhook_RetriedAttemptCarriesTheSameEvent(t *testing.T) {
	h := newHarness(t)
	h.mockRun(nil, time.Second, succeed)
	// The receiver fails its first request only.
	first := true
	hooks := mockHook(h, 0, func(activities.WebhookDelivery, int32) error {
		if first {
			first = false
			return temporal.NewApplicationError("receiver answered 500", activities.ErrTypeWebhookUnavailable)
		}
		return nil
	})
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, withHook(serverInput(taskID1, "web-01")))
	h.result()

	all := hooks.all()
	require.Len(t, all, 3)
	assert.Equal(t, []int32{1, 2, 1}, []int32{all[0].attempt, all[1].attempt, all[2].attempt})
	assert.Equal(t, all[0].d, all[1].d, "the retry sends the same event (same idempotency key)")
	assert.Equal(t, []string{"Pending→Running", "Running→Completed"}, hookStatuses(hooks.delivered()))
	// The retry waited the policy's first interval.
	assert.Equal(t, workflows.WebhookInitialInterval, all[1].at.Sub(all[0].at))
}

func TestWebhook_SlowReceiverHoldsNothingBackAndKeepsOrder(t *testing.T) {
	h := newHarness(t)
	h.mockRun(stepIs("web-01"), time.Second, succeed).Once()
	h.mockRun(stepIs("web-02"), 2*time.Second, succeed).Once()
	// Every delivery takes 10 minutes (of the workflow clock).
	hooks := mockHook(h, 10*time.Minute, nil)
	var starts []time.Time
	var startedEvents []webhook.Event
	h.env.SetOnActivityStartedListener(func(info *activity.Info, _ context.Context, args converter.EncodedValues) {
		if info.ActivityType.Name != "DeliverWebhook" {
			return
		}
		var d activities.WebhookDelivery
		require.NoError(t, args.Get(&d))
		starts = append(starts, h.env.Now())
		startedEvents = append(startedEvents, d.Event)
	})
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, withHook(serverInput(taskID1, "web-01", "web-02")))
	task := h.result()

	// The steps ran and the task was stored Completed on time...
	require.NotNil(t, task.CompletedAt)
	assert.Equal(t, t0.Add(2*time.Second), *task.CompletedAt)
	assert.Equal(t, storage.StatusCompleted, h.lastProjection(taskID1).Status)
	// ...while the deliveries went one at a time, in order, the workflow
	// waiting for the last.
	require.Len(t, starts, 2)
	assert.Equal(t, []string{"Pending→Running", "Running→Completed"}, hookStatuses(startedEvents))
	assert.False(t, starts[1].Before(starts[0].Add(10*time.Minute)), "Completed started at %v, before Running was delivered", starts[1])
	assert.Equal(t, []string{"Pending→Running", "Running→Completed"}, hookStatuses(hooks.delivered()))
}

func TestWebhook_CancelledTaskStillReportsCancelled(t *testing.T) {
	h := newHarness(t)
	h.mockRun(nil, time.Hour, succeed).Maybe()
	hooks := mockHook(h, 5*time.Second, nil)
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, time.Second)
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, withHook(serverInput(taskID1, "web-01")))
	err := h.workflowErr()
	assert.True(t, temporal.IsCanceledError(err), "want a canceled error, got %v", err)
	// Running was being delivered when the cancel came: it finished, and
	// Cancelled followed before the workflow ended.
	assert.Equal(t, []string{"Pending→Running", "Running→Cancelled"}, hookStatuses(hooks.delivered()))
}

func TestWebhook_FailedTaskAndGivenUpDelivery(t *testing.T) {
	h := newHarness(t)
	h.mockRun(nil, time.Second, failWith(activities.ErrTypeNushellPermanent, true, 2, "no such plan\n"))
	// The receiver refuses the first change for good (a 4xx): the next
	// change is still delivered.
	hooks := mockHook(h, 0, func(d activities.WebhookDelivery, _ int32) error {
		if d.Event.Status == storage.StatusRunning {
			return temporal.NewNonRetryableApplicationError("receiver answered 404", activities.ErrTypeWebhookRejected, nil)
		}
		return nil
	})
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, withHook(serverInput(taskID1, "web-01")))
	h.workflowErr()

	all := hooks.all()
	require.Len(t, all, 2, "a rejected delivery is not retried")
	got := hooks.delivered()
	assert.Equal(t, []string{"Running→Failed"}, hookStatuses(got))
	require.NotNil(t, got[0].Error)
	assert.Contains(t, *got[0].Error, "no such plan")
}

func TestWebhook_InvalidInputReportsFailedFromPending(t *testing.T) {
	h := newHarness(t)
	hooks := mockHook(h, 0, nil)
	in := withHook(serverInput(taskID1, "web-01; rm -rf /"))
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, in)
	h.workflowErr()
	assert.Equal(t, []string{"Pending→Failed"}, hookStatuses(hooks.delivered()))
}

func TestWebhook_NoneWithoutAWebhook(t *testing.T) {
	h := newHarness(t)
	h.mockRun(nil, time.Second, succeed)
	hooks := mockHook(h, 0, nil)
	h.env.ExecuteWorkflow(workflows.ServerCreateWorkflowName, serverInput(taskID1, "web-01"))
	h.result()
	assert.Empty(t, hooks.all())
}

func TestValidateWebhook(t *testing.T) {
	assert.NoError(t, workflows.ValidateWebhook("webhook", nil))
	assert.NoError(t, workflows.ValidateWebhook("webhook", &workflows.Webhook{URL: hookURL}))
	err := workflows.ValidateWebhook("webhook", &workflows.Webhook{URL: "ftp://x"})
	var fe *workflows.FieldError
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, "webhook.url", fe.Field)
	in := withHook(serverInput(taskID1, "web-01"))
	in.Webhook.URL = "https://user:pw@example.com/"
	require.ErrorAs(t, in.Validate(), &fe)
	assert.Equal(t, "webhook.url", fe.Field)
}

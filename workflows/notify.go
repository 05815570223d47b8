package workflows

import (
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/internal/tailbuf"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/webhook"
)

// Webhook delivery policy: each status change is one DeliverWebhook
// activity, retried with backoff while the receiver is down or answers
// 408, 429 or 5xx: 1 s doubling to 1 min between 10 attempts of at most
// webhook.AttemptTimeout each, about 6 minutes in all.
const (
	WebhookAttempts        = 10
	WebhookInitialInterval = time.Second
	WebhookMaxInterval     = time.Minute
	// WebhookAttemptTimeout bounds one attempt as Temporal sees it; the
	// HTTP exchange itself is bounded by webhook.AttemptTimeout.
	WebhookAttemptTimeout = 30 * time.Second
)

// notifier delivers one task's status changes to its webhook, in order,
// without holding up the work: a coroutine (on a disconnected context, so a
// cancelled task still reports Cancelled) delivers a queue one change at a
// time while the workflow goes on. A nil *notifier (no webhook) does
// nothing and records nothing, so workflows call it unconditionally and
// their histories without a webhook stay as they were.
//
// Use: n := newNotifier(ctx, in.Webhook) once at the start; n.observe(task)
// after every projection that stored task (it queues a delivery only when
// the status differs from the last one observed, Pending at first); and
// n.drain(ctx) before the workflow returns.
type notifier struct {
	url string
	// queue holds the changes not yet delivered (or given up on); the
	// head is being delivered.
	queue []activities.WebhookDelivery
	last  storage.TaskStatus
}

// newNotifier starts the delivery coroutine of a task whose webhook is
// hook; nil when hook is nil.
func newNotifier(ctx workflow.Context, hook *Webhook) *notifier {
	if hook == nil {
		return nil
	}
	n := &notifier{url: hook.URL, last: storage.StatusPending}
	dctx, _ := workflow.NewDisconnectedContext(ctx)
	workflow.Go(dctx, n.deliver)
	return n
}

// webhookCtx applies DeliverWebhook's options.
func webhookCtx(ctx workflow.Context) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: WebhookAttemptTimeout,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:    WebhookInitialInterval,
			BackoffCoefficient: 2,
			MaximumInterval:    WebhookMaxInterval,
			MaximumAttempts:    WebhookAttempts,
			NonRetryableErrorTypes: []string{
				activities.ErrTypeWebhookRejected, activities.ErrTypeWebhookNoSecret,
			},
		},
	})
}

// deliver works through the queue until the workflow ends. A change that
// could not be delivered is given up (the activity records it in the audit
// trail) and the next one goes on: a receiver that was down still learns
// how the task ended.
func (n *notifier) deliver(ctx workflow.Context) {
	actx := webhookCtx(ctx)
	for {
		if err := workflow.Await(ctx, func() bool { return len(n.queue) > 0 }); err != nil {
			return
		}
		err := workflow.ExecuteActivity(actx, a.DeliverWebhook, n.queue[0]).Get(ctx, nil)
		if err != nil {
			workflow.GetLogger(ctx).Warn("webhook delivery given up", "version", n.queue[0].Event.Version,
				"status", n.queue[0].Event.Status, "error", err)
		}
		n.queue = n.queue[1:]
	}
}

// observe queues a delivery of t if its status differs from the last one
// observed. Call it after t was projected (its Version is the stored one,
// which makes the delivery's idempotency key).
func (n *notifier) observe(t storage.Task) {
	if n == nil || t.Status == n.last {
		return
	}
	var errText *string
	if t.Error != nil {
		e := tailbuf.String(*t.Error, webhook.MaxErrorBytes)
		errText = &e
	}
	n.queue = append(n.queue, activities.WebhookDelivery{URL: n.url, Event: webhook.Event{
		Event:          webhook.EventStatusChanged,
		TaskID:         t.ID,
		Version:        t.Version,
		Status:         t.Status,
		PreviousStatus: n.last,
		WorkflowType:   t.WorkflowType,
		Name:           t.Name,
		Progress:       t.Progress,
		Error:          errText,
		UpdatedAt:      t.UpdatedAt,
	}})
	n.last = t.Status
}

// drain waits until every queued change was delivered or given up. It
// waits on a disconnected context: a cancelled workflow still delivers
// its Cancelled.
func (n *notifier) drain(ctx workflow.Context) {
	if n == nil {
		return
	}
	dctx, _ := workflow.NewDisconnectedContext(ctx)
	_ = workflow.Await(dctx, func() bool { return len(n.queue) == 0 })
}

package activities

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/webhook"
)

// Error types of DeliverWebhook.
const (
	// ErrTypeWebhookUnavailable: no answer, or 408, 429 or 5xx; retried.
	ErrTypeWebhookUnavailable = "WebhookUnavailable"
	// ErrTypeWebhookRejected: the receiver answered another non-2xx status
	// (or the URL is unusable); never retried.
	ErrTypeWebhookRejected = "WebhookRejected"
	// ErrTypeWebhookNoSecret: this worker has no --webhook-secret-file;
	// never retried (nothing unsigned is ever sent).
	ErrTypeWebhookNoSecret = "WebhookNoSecret"
)

// Audit actions of a task's webhook deliveries: one entry per status
// change, its ID "<task id>/webhook/v<version>".
const (
	ActionWebhookDelivered = "webhook_delivered"
	ActionWebhookFailed    = "webhook_failed"
)

// WebhookDelivery is DeliverWebhook's input: where to, and what.
type WebhookDelivery struct {
	URL   string        `json:"url"`
	Event webhook.Event `json:"event"`
}

// WebhookResult is a delivery that succeeded: the receiver's status and
// the attempt that got it.
type WebhookResult struct {
	Status  int   `json:"status"`
	Attempt int32 `json:"attempt"`
}

// DeliverWebhook makes one attempt to POST a task's status change to its
// webhook, signed with the worker's WebhookSecret (package webhook). 2xx
// delivers; no answer, 408, 429 and 5xx are ErrTypeWebhookUnavailable
// (retried by the activity's policy, with the same Idempotency-Key); any
// other status is ErrTypeWebhookRejected. The outcome, once final
// (delivered, or failed on the last attempt), is recorded in the task's
// audit trail as ActionWebhookDelivered or ActionWebhookFailed, best
// effort: a store outage must not cause a second delivery.
func (a *Activities) DeliverWebhook(ctx context.Context, d WebhookDelivery) (WebhookResult, error) {
	info := activity.GetInfo(ctx)
	log := a.logger().With("task_id", d.Event.TaskID, "version", d.Event.Version, "status", d.Event.Status, "attempt", info.Attempt)
	fail := func(typ string, permanent bool, msg string) (WebhookResult, error) {
		if !willRetry(info, typ, permanent) {
			log.Warn("webhook delivery failed for good", "error", msg)
			a.recordWebhook(ctx, d, ActionWebhookFailed, fmt.Sprintf("%s gave up after %d attempts: %s", receiver(d.URL), info.Attempt, msg))
		} else {
			log.Info("webhook delivery attempt failed; retrying", "error", msg)
		}
		return WebhookResult{}, temporal.NewApplicationErrorWithOptions(msg, typ, temporal.ApplicationErrorOptions{NonRetryable: permanent})
	}
	if len(a.WebhookSecret) == 0 {
		return fail(ErrTypeWebhookNoSecret, true, "this worker has no webhook secret: start it with --webhook-secret-file (ORCHESTRATOR_WEBHOOK_SECRET_FILE)")
	}
	if err := webhook.ValidateURL(d.URL); err != nil {
		return fail(ErrTypeWebhookRejected, true, "webhook.url "+err.Error())
	}
	status, err := webhook.Deliver(ctx, a.WebhookClient, d.URL, a.WebhookSecret, d.Event, time.Now())
	if err == nil {
		log.Info("webhook delivered", "http_status", status)
		a.recordWebhook(ctx, d, ActionWebhookDelivered, fmt.Sprintf("%s answered %d on attempt %d", receiver(d.URL), status, info.Attempt))
		return WebhookResult{Status: status, Attempt: info.Attempt}, nil
	}
	if ctx.Err() != nil {
		return WebhookResult{}, ctx.Err()
	}
	var we *webhook.Error
	if errors.As(err, &we) && we.Body != "" {
		// Only the log has what the receiver said.
		log.Info("webhook receiver's answer", "http_status", we.Status, "body", we.Body)
	}
	if errors.As(err, &we) && !we.Retryable {
		return fail(ErrTypeWebhookRejected, true, err.Error())
	}
	return fail(ErrTypeWebhookUnavailable, false, err.Error())
}

// receiver names a webhook in the audit trail by scheme and host only: its
// path and query may hold a token (many chat webhooks do).
func receiver(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "the webhook"
	}
	return "POST " + u.Scheme + "://" + u.Host
}

// recordWebhook appends the delivery's outcome to the task's audit trail,
// bounded and best effort (a failure is logged).
func (a *Activities) recordWebhook(ctx context.Context, d WebhookDelivery, action, detail string) {
	if a.Store == nil {
		return
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err := a.Store.AppendAudit(storage.WithActor(actx, ProjectionActor), storage.AuditEntry{
		ID:      fmt.Sprintf("%s/webhook/v%d", d.Event.TaskID, d.Event.Version),
		TaskID:  d.Event.TaskID,
		Time:    time.Now().UTC().Truncate(time.Microsecond),
		Action:  action,
		Before:  d.Event.PreviousStatus,
		After:   d.Event.Status,
		Version: d.Event.Version,
		Detail:  detail,
	})
	if err != nil {
		a.logger().Warn("could not record the webhook outcome in the audit trail", "task_id", d.Event.TaskID, "action", action, "error", err)
	}
}

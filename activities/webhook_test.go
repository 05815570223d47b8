package activities_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/provisioning/orchestrator/activities"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/webhook"
)

func webhookEnv(t *testing.T, secret string) (*testsuite.TestActivityEnvironment, *activities.Activities, storage.Store, string) {
	t.Helper()
	st, id := fsStoreWithTask(t)
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	acts := &activities.Activities{Store: st, WebhookSecret: []byte(secret)}
	env.RegisterActivity(acts)
	return env, acts, st, id
}

func delivery(id, url string) activities.WebhookDelivery {
	return activities.WebhookDelivery{URL: url, Event: webhook.Event{Event: webhook.EventStatusChanged, TaskID: id, Version: 2,
		Status: storage.StatusRunning, PreviousStatus: storage.StatusPending, UpdatedAt: time.Now().UTC()}}
}

func webhookAudit(t *testing.T, st storage.Store, id string) []storage.AuditEntry {
	t.Helper()
	all, err := st.ListAudit(context.Background(), storage.AuditFilter{TaskID: id})
	require.NoError(t, err)
	var out []storage.AuditEntry
	for _, e := range all {
		if e.Action == activities.ActionWebhookDelivered || e.Action == activities.ActionWebhookFailed {
			out = append(out, e)
		}
	}
	return out
}

func appErr(t *testing.T, err error) *temporal.ApplicationError {
	t.Helper()
	var ae *temporal.ApplicationError
	require.True(t, errors.As(err, &ae), "want an ApplicationError, got %v", err)
	return ae
}

// A delivered change is signed with the worker's secret and recorded once
// in the audit trail, without the URL's path or query (they may hold a
// token).
func TestDeliverWebhook_Delivered(t *testing.T) {
	env, acts, st, id := webhookEnv(t, "k")
	var verified atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		verified.Store(webhook.Verify([]byte("k"), r.Header.Get(webhook.HeaderTimestamp), r.Header.Get(webhook.HeaderSignature), body, time.Now(), 0) == nil)
	}))
	defer srv.Close()
	val, err := env.ExecuteActivity(acts.DeliverWebhook, delivery(id, srv.URL+"/hook?token=SECRET"))
	require.NoError(t, err)
	var res activities.WebhookResult
	require.NoError(t, val.Get(&res))
	assert.Equal(t, http.StatusOK, res.Status)
	assert.True(t, verified.Load(), "the receiver verified the signature")

	audit := webhookAudit(t, st, id)
	require.Len(t, audit, 1)
	assert.Equal(t, activities.ActionWebhookDelivered, audit[0].Action)
	assert.Equal(t, id+"/webhook/v2", audit[0].ID)
	assert.Equal(t, storage.StatusPending, audit[0].Before)
	assert.Equal(t, storage.StatusRunning, audit[0].After)
	assert.Contains(t, audit[0].Detail, "answered 200")
	assert.NotContains(t, audit[0].Detail, "SECRET")
	assert.NotContains(t, audit[0].Detail, "/hook")
}

// 500 is retryable and not yet a final outcome; 400 and a redirect fail
// for good (the redirect is not followed) and are recorded.
func TestDeliverWebhook_Classification(t *testing.T) {
	var elsewhere atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { elsewhere.Add(1) }))
	defer target.Close()
	for _, tc := range []struct {
		status    int
		typ       string
		permanent bool
	}{
		{http.StatusInternalServerError, activities.ErrTypeWebhookUnavailable, false},
		{http.StatusTooManyRequests, activities.ErrTypeWebhookUnavailable, false},
		{http.StatusBadRequest, activities.ErrTypeWebhookRejected, true},
		{http.StatusFound, activities.ErrTypeWebhookRejected, true},
	} {
		env, acts, st, id := webhookEnv(t, "k")
		var hits atomic.Int32
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			http.Redirect(w, r, target.URL, tc.status) // sets Location; only 3xx use it
		}))
		_, err := env.ExecuteActivity(acts.DeliverWebhook, delivery(id, srv.URL))
		srv.Close()
		ae := appErr(t, err)
		assert.Equal(t, tc.typ, ae.Type(), "%d", tc.status)
		assert.Equal(t, tc.permanent, ae.NonRetryable(), "%d", tc.status)
		assert.Equal(t, int32(1), hits.Load(), "%d: one request per attempt", tc.status)
		audit := webhookAudit(t, st, id)
		if tc.permanent {
			require.Len(t, audit, 1, "%d", tc.status)
			assert.Equal(t, activities.ActionWebhookFailed, audit[0].Action)
			assert.Contains(t, audit[0].Detail, "gave up after 1 attempts")
		} else {
			assert.Empty(t, audit, "%d: a retried attempt is no outcome yet", tc.status)
		}
	}
	assert.Zero(t, elsewhere.Load(), "a redirect is never followed")
}

// Without a secret nothing is sent, unsigned or otherwise.
func TestDeliverWebhook_NoSecret(t *testing.T) {
	env, acts, st, id := webhookEnv(t, "")
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	defer srv.Close()
	_, err := env.ExecuteActivity(acts.DeliverWebhook, delivery(id, srv.URL))
	ae := appErr(t, err)
	assert.Equal(t, activities.ErrTypeWebhookNoSecret, ae.Type())
	assert.True(t, ae.NonRetryable())
	assert.Contains(t, ae.Error(), "--webhook-secret-file")
	assert.Zero(t, hits.Load())
	require.Len(t, webhookAudit(t, st, id), 1)
}

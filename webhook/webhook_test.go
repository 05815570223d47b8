package webhook_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/webhook"
)

var secret = []byte("s3cret")

func TestSign_IsTheDocumentedHMAC(t *testing.T) {
	body := []byte(`{"event":"task.status_changed"}`)
	// The recipe in the README, by hand.
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("1700000000." + string(body)))
	want := "sha256=" + hex.EncodeToString(m.Sum(nil))
	assert.Equal(t, want, webhook.Sign(secret, 1700000000, body))
}

func TestVerify(t *testing.T) {
	now := time.Unix(1700000000, 0)
	body := []byte(`{"task_id":"x"}`)
	sig := webhook.Sign(secret, now.Unix(), body)
	ts := strconv.FormatInt(now.Unix(), 10)
	require.NoError(t, webhook.Verify(secret, ts, sig, body, now.Add(time.Minute), 0))

	assert.ErrorContains(t, webhook.Verify([]byte("other"), ts, sig, body, now, 0), "signature does not match")
	assert.ErrorContains(t, webhook.Verify(secret, ts, sig, []byte(`{"task_id":"y"}`), now, 0), "signature does not match", "a changed body")
	assert.ErrorContains(t, webhook.Verify(secret, "1700000001", sig, body, now, 0), "signature does not match", "a changed timestamp")
	assert.ErrorContains(t, webhook.Verify(secret, ts, sig, body, now.Add(6*time.Minute), 0), "away from now", "a replay")
	assert.NoError(t, webhook.Verify(secret, ts, sig, body, now.Add(6*time.Minute), 10*time.Minute))
	assert.ErrorContains(t, webhook.Verify(secret, "soon", sig, body, now, 0), "unix seconds")
}

func TestValidateURL(t *testing.T) {
	for _, ok := range []string{
		"https://hooks.example.com/orchestrator",
		"http://127.0.0.1:9000/hook?token=abc",
		"https://[::1]:8443/",
		"HTTPS://Hooks.Example.com/a/b?c=d&e=%20",
		"http://hooks.example.com",
	} {
		assert.NoError(t, webhook.ValidateURL(ok), ok)
	}
	for raw, why := range map[string]string{
		"":                           "is required",
		"hooks.example.com/x":        "absolute http",
		"/relative":                  "absolute http",
		"ftp://example.com/":         "absolute http",
		"file:///etc/passwd":         "absolute http",
		"javascript:alert(1)":        "absolute http",
		"https:///nohost":            "host",
		"https://:8080/":             "host",
		"https://u:p@example.com/":   "user:password",
		"https://token@example.com/": "user:password",
		"https://example.com/#frag":  "fragment",
		"https://example.com:99999/": "port",
		"https://exa mple.com/":      "whitespace",
		"https://example.com/\nX: y": "whitespace",
		"https://" + strings.Repeat("a", webhook.MaxURLBytes) + ".com/": "at most",
	} {
		err := webhook.ValidateURL(raw)
		if assert.Error(t, err, "%q", raw) {
			assert.Contains(t, err.Error(), why, "%q", raw)
		}
	}
}

func event() webhook.Event {
	e := "boom"
	return webhook.Event{Event: webhook.EventStatusChanged, TaskID: "0b6f3a5e-2f7c-4c1e-9d1a-6a1f0e6c2b01", Version: 3,
		Status: storage.StatusFailed, PreviousStatus: storage.StatusRunning, WorkflowType: "ServerCreate",
		Name: "server create production", Progress: storage.Progress{Done: 1, Total: 1}, Error: &e,
		UpdatedAt: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func TestDeliver_SignedRequest(t *testing.T) {
	var got *http.Request
	var body []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r
		body, _ = io.ReadAll(r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	now := time.Now()
	status, err := webhook.Deliver(context.Background(), nil, srv.URL+"/hook", secret, event(), now)
	require.NoError(t, err)
	assert.Equal(t, http.StatusNoContent, status)
	assert.Equal(t, http.MethodPost, got.Method)
	assert.Equal(t, "/hook", got.URL.Path)
	assert.Equal(t, "application/json", got.Header.Get("Content-Type"))
	assert.Equal(t, "0b6f3a5e-2f7c-4c1e-9d1a-6a1f0e6c2b01:3", got.Header.Get(webhook.HeaderIdempotencyKey))
	require.NoError(t, webhook.Verify(secret, got.Header.Get(webhook.HeaderTimestamp), got.Header.Get(webhook.HeaderSignature), body, now, 0))
	assert.JSONEq(t, `{"event":"task.status_changed","task_id":"0b6f3a5e-2f7c-4c1e-9d1a-6a1f0e6c2b01","version":3,
		"status":"Failed","previous_status":"Running","workflow_type":"ServerCreate","name":"server create production",
		"progress":{"done":1,"total":1},"error":"boom","updated_at":"2030-01-02T03:04:05Z"}`, string(body))
}

func TestDeliver_Classification(t *testing.T) {
	for _, tc := range []struct {
		status    int
		retryable bool
	}{
		{500, true}, {502, true}, {503, true}, {408, true}, {429, true},
		{400, false}, {401, false}, {404, false}, {410, false}, {422, false},
		{301, false}, {302, false}, {307, false},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			if tc.status >= 300 && tc.status < 400 {
				w.Header().Set("Location", "http://127.0.0.1:1/elsewhere")
			}
			w.WriteHeader(tc.status)
			_, _ = w.Write([]byte(strings.Repeat("x", 10000)))
		}))
		status, err := webhook.Deliver(context.Background(), nil, srv.URL, secret, event(), time.Now())
		srv.Close()
		assert.Equal(t, tc.status, status)
		var we *webhook.Error
		require.True(t, errors.As(err, &we), "%d: %v", tc.status, err)
		assert.Equal(t, tc.retryable, we.Retryable, "%d", tc.status)
		assert.NotContains(t, we.Error(), "xxx", "the answer stays out of the message")
		assert.Len(t, we.Body, 256, "and is read only briefly")
	}
}

func TestDeliver_NoAnswerIsRetryable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	_, err := webhook.Deliver(context.Background(), nil, url+"/x?token=SECRET", secret, event(), time.Now())
	var we *webhook.Error
	require.ErrorAs(t, err, &we)
	assert.True(t, we.Retryable)
	assert.Zero(t, we.Status)
	assert.Contains(t, we.Error(), "no answer")
	assert.NotContains(t, we.Error(), "SECRET", "the URL stays out of the message")
}

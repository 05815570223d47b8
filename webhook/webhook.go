// Package webhook is the orchestrator's task notifications on the wire:
// the event a receiver gets, how it is signed and verified, the URL rules,
// and one HTTP delivery attempt. It imports no Temporal: the activities
// package adapts Deliver (retries, audit), and a receiver written in Go
// verifies with Verify.
//
// A delivery is a POST of an Event as JSON with these headers:
//
//	Content-Type: application/json
//	Idempotency-Key: <task id>:<version>      (the same on every retry)
//	X-Orchestrator-Timestamp: <unix seconds of this attempt>
//	X-Orchestrator-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>
//
// A receiver recomputes the HMAC over the timestamp header, a dot and the
// raw body with the service's secret, compares it in constant time,
// rejects timestamps too far from its clock (replays), and drops a
// repeated Idempotency-Key (retries after a lost answer).
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/provisioning/orchestrator/storage"
)

// Header names of a delivery.
const (
	HeaderIdempotencyKey = "Idempotency-Key"
	HeaderTimestamp      = "X-Orchestrator-Timestamp"
	HeaderSignature      = "X-Orchestrator-Signature"
	// SignaturePrefix precedes the hex HMAC in HeaderSignature.
	SignaturePrefix = "sha256="
)

// EventStatusChanged is Event.Event of a task status change, the only
// event so far.
const EventStatusChanged = "task.status_changed"

// MaxURLBytes bounds a webhook URL.
const MaxURLBytes = 2048

// MaxErrorBytes bounds Event.Error: the task's error can be 256 KiB, and a
// notification only needs its end (GET /tasks/{id} has the rest).
const MaxErrorBytes = 4 << 10

// DefaultTolerance is how far from the receiver's clock Verify accepts a
// timestamp.
const DefaultTolerance = 5 * time.Minute

// Event is the JSON body of a delivery: one status change of one task.
type Event struct {
	// Event is EventStatusChanged.
	Event string `json:"event"`
	// TaskID and Version name the change: the task's version that
	// first showed Status. Together they are the idempotency key.
	TaskID  string `json:"task_id"`
	Version int64  `json:"version"`
	// Status is the new status; PreviousStatus the one the receiver was
	// last told about (Pending for a task's first event).
	Status         storage.TaskStatus `json:"status"`
	PreviousStatus storage.TaskStatus `json:"previous_status"`
	WorkflowType   string             `json:"workflow_type"`
	Name           string             `json:"name"`
	Progress       storage.Progress   `json:"progress"`
	// Error is the end (MaxErrorBytes) of the task's error, or null.
	Error     *string   `json:"error"`
	UpdatedAt time.Time `json:"updated_at"`
}

// IdempotencyKey is HeaderIdempotencyKey's value: "<task id>:<version>".
func (e Event) IdempotencyKey() string {
	return e.TaskID + ":" + strconv.FormatInt(e.Version, 10)
}

// Sign is HeaderSignature's value for a body sent at timestamp (unix
// seconds): "sha256=" + hex HMAC-SHA256(secret, timestamp + "." + body).
func Sign(secret []byte, timestamp int64, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(strconv.FormatInt(timestamp, 10)))
	m.Write([]byte("."))
	m.Write(body)
	return SignaturePrefix + hex.EncodeToString(m.Sum(nil))
}

// Verify checks a delivery's signature and timestamp headers against the
// raw body: the signature must match (compared in constant time) and the
// timestamp be within tolerance of now (0 means DefaultTolerance).
func Verify(secret []byte, timestampHeader, signatureHeader string, body []byte, now time.Time, tolerance time.Duration) error {
	ts, err := strconv.ParseInt(timestampHeader, 10, 64)
	if err != nil {
		return fmt.Errorf("webhook: %s %q is not unix seconds", HeaderTimestamp, timestampHeader)
	}
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	if d := now.Sub(time.Unix(ts, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("webhook: timestamp %d is %s away from now (tolerance %s)", ts, d.Round(time.Second), tolerance)
	}
	if !hmac.Equal([]byte(signatureHeader), []byte(Sign(secret, ts, body))) {
		return errors.New("webhook: signature does not match")
	}
	return nil
}

// ValidateURL checks a webhook URL: absolute http or https with a host, at
// most MaxURLBytes, without user:password (credentials would be stored in
// workflow history; the signature authenticates the service instead),
// without a fragment, whitespace or control characters, and with an ASCII
// host (punycode for international names). The message says what is
// wrong, for a 400.
//
// It is plain string code, not net/url: workflows validate their input
// with it, and net/url's IPv6 parsing is not deterministic code as
// workflowcheck sees it. Deliver parses the URL for real.
func ValidateURL(raw string) error {
	if raw == "" {
		return errors.New("is required: an http:// or https:// URL")
	}
	if len(raw) > MaxURLBytes {
		return fmt.Errorf("is %d bytes; at most %d", len(raw), MaxURLBytes)
	}
	for i := 0; i < len(raw); i++ {
		if raw[i] <= ' ' || raw[i] == 0x7f {
			return errors.New("must not contain whitespace or control characters")
		}
	}
	lower := strings.ToLower(raw)
	var rest string
	switch {
	case strings.HasPrefix(lower, "https://"):
		rest = raw[len("https://"):]
	case strings.HasPrefix(lower, "http://"):
		rest = raw[len("http://"):]
	default:
		return errors.New("must be an absolute http:// or https:// URL")
	}
	if strings.Contains(raw, "#") {
		return errors.New("must not have a #fragment")
	}
	authority := rest
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		authority = rest[:i]
	}
	if strings.Contains(authority, "@") {
		return errors.New("must not carry user:password (the receiver checks the signature instead)")
	}
	host, port, hasPort := authority, "", false
	hostChars := "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_"
	if strings.HasPrefix(authority, "[") {
		end := strings.Index(authority, "]")
		if end < 0 {
			return errors.New("has an unterminated [IPv6] host")
		}
		host, hostChars = authority[1:end], "0123456789abcdefABCDEF:."
		switch after := authority[end+1:]; {
		case after == "":
		case strings.HasPrefix(after, ":"):
			port, hasPort = after[1:], true
		default:
			return errors.New("has text after its [IPv6] host")
		}
	} else if i := strings.LastIndex(authority, ":"); i >= 0 {
		host, port, hasPort = authority[:i], authority[i+1:], true
	}
	if host == "" {
		return errors.New("must name a host")
	}
	if strings.Trim(host, hostChars) != "" {
		return fmt.Errorf("host %q has characters a host name cannot have (use punycode for international names)", host)
	}
	if hasPort {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strings.Trim(port, "0123456789") != "" {
			return fmt.Errorf("port %q is not a TCP port", port)
		}
	}
	return nil
}

// AttemptTimeout bounds one delivery attempt (connect, send, answer).
const AttemptTimeout = 10 * time.Second

// maxResponseBytes is how much of a receiver's answer is read (to reuse
// the connection and quote it in an error); the rest is dropped.
const maxResponseBytes = 256

// Client is the HTTP client of deliveries: bounded attempts, and a
// redirect is an answer, not followed (a 3xx fails for good: the
// signature was made for the receiver the user named).
var Client = &http.Client{
	Timeout: AttemptTimeout,
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// Error is a failed attempt: the receiver's status (0 when there was no
// answer), whether a later attempt may succeed, and why. Body is the start
// of the receiver's answer, kept apart from Msg: it is for the worker's
// log, not for anything a requester reads back (a URL pointing inside the
// network must not turn into a way to read what answers there).
type Error struct {
	Status    int
	Retryable bool
	Msg       string
	Body      string
}

func (e *Error) Error() string { return e.Msg }

// Retryable reports whether an answer with this status may succeed later:
// 408, 429 and 5xx; other statuses (4xx, 3xx) will not change by retrying.
func Retryable(status int) bool {
	return status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500
}

// Deliver makes one attempt: POSTs e to rawURL, signed with secret at now,
// with client (nil means Client). It returns the receiver's status; a
// non-2xx answer or no answer is an *Error saying whether to retry.
func Deliver(ctx context.Context, client *http.Client, rawURL string, secret []byte, e Event, now time.Time) (int, error) {
	if client == nil {
		client = Client
	}
	body, err := json.Marshal(e)
	if err != nil {
		return 0, &Error{Msg: "encode event: " + err.Error()}
	}
	ts := now.Unix()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rawURL, bytes.NewReader(body))
	if err != nil {
		return 0, &Error{Msg: "bad webhook URL: " + err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "provisioning-orchestrator-webhook")
	req.Header.Set(HeaderIdempotencyKey, e.IdempotencyKey())
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(ts, 10))
	req.Header.Set(HeaderSignature, Sign(secret, ts, body))
	res, err := client.Do(req)
	if err != nil {
		// Connection refused, DNS, timeout: the receiver may be back later.
		// The message leaves the URL out (its query may hold a token).
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return 0, &Error{Retryable: true, Msg: "no answer: " + err.Error()}
	}
	defer res.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(res.Body, maxResponseBytes))
	if res.StatusCode >= 200 && res.StatusCode < 300 {
		return res.StatusCode, nil
	}
	msg := fmt.Sprintf("receiver answered %d", res.StatusCode)
	if res.StatusCode >= 300 && res.StatusCode < 400 {
		msg += " (redirects are not followed: configure the final URL)"
	}
	return res.StatusCode, &Error{Status: res.StatusCode, Retryable: Retryable(res.StatusCode), Msg: msg,
		Body: strings.TrimSpace(strings.ToValidUTF8(string(snippet), ""))}
}

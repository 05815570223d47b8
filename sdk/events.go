package sdk

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/provisioning/orchestrator/storage"
)

// StreamEvent is one Server-Sent Event of the REST API's event streams
// (GET /tasks/{id}/events, GET /events): its SSE id (pass it back as
// lastEventID to resume), its type, and the decoded event.
type StreamEvent struct {
	ID   string
	Type string
	storage.Event
}

// EventStream reads an event stream; Next returns its events in order.
// Close it when done (it is closed for you when Next returns an error).
type EventStream struct {
	body io.ReadCloser
	r    *bufio.Reader
	last string
}

// WatchOptions configure WatchTask and WatchAll.
type WatchOptions struct {
	// HTTPClient defaults to http.DefaultClient. Its Timeout must be 0
	// (or longer than the stream): a stream lasts as long as its task.
	HTTPClient *http.Client
	// Token is sent as a bearer token when not empty.
	Token string
	// LastEventID resumes after that event (sent as Last-Event-ID).
	LastEventID string
}

// WatchTask opens the live event stream of a task on the REST API at
// baseURL (e.g. "http://127.0.0.1:8080"). The stream ends (Next returns
// io.EOF) after the task's terminal transition (at once when resumed
// after it: the API answers 204). An unknown task or a bad
// request is an error naming the API's answer.
func WatchTask(ctx context.Context, baseURL, taskID string, o WatchOptions) (*EventStream, error) {
	return watch(ctx, strings.TrimSuffix(baseURL, "/")+"/tasks/"+url.PathEscape(taskID)+"/events", o)
}

// WatchAll opens the stream of every task's events from now on, filtered
// by infra and workflow type when not empty. It does not end by itself:
// cancel ctx or Close it.
func WatchAll(ctx context.Context, baseURL, infra, workflowType string, o WatchOptions) (*EventStream, error) {
	q := url.Values{}
	if infra != "" {
		q.Set("infra", infra)
	}
	if workflowType != "" {
		q.Set("workflow_type", workflowType)
	}
	u := strings.TrimSuffix(baseURL, "/") + "/events"
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return watch(ctx, u, o)
}

func watch(ctx context.Context, u string, o WatchOptions) (*EventStream, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	if o.Token != "" {
		req.Header.Set("Authorization", "Bearer "+o.Token)
	}
	if o.LastEventID != "" {
		req.Header.Set("Last-Event-ID", o.LastEventID)
	}
	c := o.HTTPClient
	if c == nil {
		c = http.DefaultClient
	}
	res, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	if res.StatusCode == http.StatusNoContent {
		// Resumed after the end (the task's terminal transition).
		_ = res.Body.Close()
		return &EventStream{body: io.NopCloser(strings.NewReader("")), r: bufio.NewReader(strings.NewReader("")), last: o.LastEventID}, nil
	}
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/event-stream") {
		defer res.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
		return nil, fmt.Errorf("GET %s: HTTP %d: %s", u, res.StatusCode, strings.TrimSpace(string(body)))
	}
	return &EventStream{body: res.Body, r: bufio.NewReaderSize(res.Body, 64<<10), last: o.LastEventID}, nil
}

// LastEventID is the id of the last event Next returned (or the one the
// stream was opened with): where to resume after a disconnect.
func (s *EventStream) LastEventID() string { return s.last }

// Next returns the next event, skipping comments (keep-alives). It returns
// io.EOF when the server ended the stream, or the read error (the
// connection broke, ctx ended).
func (s *EventStream) Next() (StreamEvent, error) {
	var ev StreamEvent
	var data strings.Builder
	hasData := false
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			_ = s.Close()
			if errors.Is(err, io.EOF) && line == "" {
				return StreamEvent{}, io.EOF
			}
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return StreamEvent{}, err
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			if !hasData {
				ev = StreamEvent{}
				continue // a comment or retry-only frame
			}
			if err := json.Unmarshal([]byte(data.String()), &ev.Event); err != nil {
				return StreamEvent{}, fmt.Errorf("event %s: %w", ev.ID, err)
			}
			if ev.ID != "" {
				s.last = ev.ID
			}
			return ev, nil
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "id":
			ev.ID = value
		case "event":
			ev.Type = value
		case "data":
			if hasData {
				data.WriteByte('\n')
			}
			data.WriteString(value)
			hasData = true
		}
	}
}

// Close ends the stream.
func (s *EventStream) Close() error { return s.body.Close() }

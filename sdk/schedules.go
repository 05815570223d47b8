package sdk

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/provisioning/orchestrator/workflows"
)

// API calls the orchestrator's REST API for what only the service does:
// schedules (POST /schedules and friends), whose changes the service
// audits. The zero HTTPClient means http.DefaultClient.
//
//	api := sdk.API{BaseURL: "http://127.0.0.1:8080", Token: os.Getenv("ORCHESTRATOR_TOKEN")}
//	s, err := api.CreateSchedule(ctx, workflows.ScheduleRequest{ID: "nightly-drift", Cron: []string{"0 2 * * *"},
//		Action: &workflows.ScheduleAction{Type: "server", Infra: "production", Settings: "./settings.yaml", Servers: []string{}, CheckMode: true}})
type API struct {
	// BaseURL of the REST API, e.g. "http://127.0.0.1:8080". Required.
	BaseURL string
	// Token is sent as a bearer token when not empty.
	Token string
	// HTTPClient defaults to http.DefaultClient.
	HTTPClient *http.Client
}

// APIError is the REST API's answer to a request it refused: the HTTP
// status, the error code, the field it names (bad input) and the message.
type APIError struct {
	Status  int
	Code    string
	Field   string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("orchestrator API: HTTP %d %s: %s", e.Status, e.Code, e.Message)
}

// call sends one request (body as JSON when not nil) and decodes the
// envelope's data into out (when not nil). A refusal is an *APIError.
func (a API) call(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(a.BaseURL, "/")+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if a.Token != "" {
		req.Header.Set("Authorization", "Bearer "+a.Token)
	}
	hc := a.HTTPClient
	if hc == nil {
		hc = http.DefaultClient
	}
	res, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("orchestrator API %s %s: %w", method, path, err)
	}
	defer res.Body.Close()
	var env struct {
		Success bool            `json:"success"`
		Data    json.RawMessage `json:"data"`
		Error   *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
			Field   string `json:"field"`
		} `json:"error"`
	}
	if err := json.NewDecoder(io.LimitReader(res.Body, 64<<20)).Decode(&env); err != nil {
		return fmt.Errorf("orchestrator API %s %s: HTTP %d, not an API answer: %w", method, path, res.StatusCode, err)
	}
	if !env.Success {
		e := &APIError{Status: res.StatusCode, Message: http.StatusText(res.StatusCode)}
		if env.Error != nil {
			e.Code, e.Field, e.Message = env.Error.Code, env.Error.Field, env.Error.Message
		}
		return e
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(env.Data, out)
}

func schedulePath(id string, rest ...string) string {
	return "/schedules/" + url.PathEscape(id) + strings.Join(rest, "")
}

// CreateSchedule creates a schedule (POST /schedules): every run is a
// normal task. A duplicate id is an *APIError with Status 409, bad input
// one with Status 400 naming the Field.
func (a API) CreateSchedule(ctx context.Context, req workflows.ScheduleRequest) (workflows.ScheduleView, error) {
	var v workflows.ScheduleView
	err := a.call(ctx, http.MethodPost, "/schedules", req, &v)
	return v, err
}

// ListSchedules lists the service's schedules by id (GET /schedules;
// eventually consistent: a schedule just created may take a moment).
func (a API) ListSchedules(ctx context.Context) ([]workflows.ScheduleView, error) {
	var v []workflows.ScheduleView
	err := a.call(ctx, http.MethodGet, "/schedules", nil, &v)
	return v, err
}

// GetSchedule describes a schedule, with its recent runs' task ids
// (GET /schedules/{id}); an unknown one is an *APIError with Status 404.
func (a API) GetSchedule(ctx context.Context, id string) (workflows.ScheduleView, error) {
	var v workflows.ScheduleView
	err := a.call(ctx, http.MethodGet, schedulePath(id), nil, &v)
	return v, err
}

// PauseSchedule pauses a schedule, with an optional note.
func (a API) PauseSchedule(ctx context.Context, id, note string) (workflows.ScheduleView, error) {
	var v workflows.ScheduleView
	err := a.call(ctx, http.MethodPost, schedulePath(id, "/pause"), workflows.ScheduleNoteRequest{Note: note}, &v)
	return v, err
}

// UnpauseSchedule unpauses a schedule, with an optional note.
func (a API) UnpauseSchedule(ctx context.Context, id, note string) (workflows.ScheduleView, error) {
	var v workflows.ScheduleView
	err := a.call(ctx, http.MethodPost, schedulePath(id, "/unpause"), workflows.ScheduleNoteRequest{Note: note}, &v)
	return v, err
}

// TriggerSchedule runs a schedule now (also while paused); the run shows
// in GetSchedule's RecentRuns shortly after.
func (a API) TriggerSchedule(ctx context.Context, id string) error {
	return a.call(ctx, http.MethodPost, schedulePath(id, "/trigger"), nil, nil)
}

// DeleteSchedule deletes a schedule; runs still running finish.
func (a API) DeleteSchedule(ctx context.Context, id string) error {
	return a.call(ctx, http.MethodDelete, schedulePath(id), nil, nil)
}

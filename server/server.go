package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/provisioning/orchestrator/internal/searchattr"
	"github.com/provisioning/orchestrator/metrics"
	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/testenv"
	"github.com/provisioning/orchestrator/workflows"
)

// DefaultMaxBodyBytes bounds request bodies (413 beyond it).
const DefaultMaxBodyBytes = 1 << 20

// Options configures the REST façade.
type Options struct {
	// Client talks to Temporal. Required.
	Client client.Client
	// Store serves the task API. Required.
	Store storage.Store
	// TaskQueue workflows are started on; default workflows.DefaultTaskQueue.
	TaskQueue string
	// Policy is passed to every workflow (parallelism, retries, timeouts).
	Policy workflows.ExecPolicy
	// NoEagerStart starts workflows without asking for their first
	// workflow task in the start's answer (default false: eager, which
	// Temporal honours only where this process's worker shares Client).
	NoEagerStart bool
	// FairnessWeights weigh infras (fairness keys) against each other when
	// Temporal shares a task queue between them; an infra not listed
	// weighs 1.
	FairnessWeights map[string]float32
	// Logger, default slog.Default().
	Logger *slog.Logger
	// MaxBodyBytes, default DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// TestEnv configures the test environment endpoints.
	TestEnv TestEnvOptions
	// Metrics records HTTP request metrics and is served at /metrics; nil
	// disables both.
	Metrics *metrics.Metrics
	// AuthTokens maps token names to bearer tokens. When not empty, every
	// endpoint but /health and /metrics requires one of them and the
	// token's name is the audit actor.
	AuthTokens map[string]string
	// SearchAttributes are the custom search attributes (Infra, Priority)
	// the namespace defines: workflows start with those only, since
	// Temporal rejects a start naming an undefined one. Default none.
	SearchAttributes searchattr.Set
	// EventPollInterval is how often event streams read the store
	// (default DefaultEventPollInterval, 150 ms).
	EventPollInterval time.Duration
	// EventKeepAlive is the silence after which an event stream writes a
	// keep-alive comment (default DefaultEventKeepAlive, 15 s).
	EventKeepAlive time.Duration
	// Webhooks says the workers can sign webhook deliveries (a
	// --webhook-secret-file is configured); without it a create request
	// with a webhook is refused (400). Default false.
	Webhooks bool
}

// Server is the REST façade; it implements http.Handler.
type Server struct {
	e         *echo.Echo
	client    client.Client
	store     storage.Store
	taskQueue string
	policy    workflows.ExecPolicy
	weights   map[string]float32
	log       *slog.Logger
	maxBody   int64
	envOpts   TestEnvOptions
	// envAdmit serialises the environment quota check with the create.
	envAdmit sync.Mutex
	metrics  *metrics.Metrics
	tokens   []namedToken
	routes   map[string]bool
	attrs    searchattr.Set
	webhooks bool
	eager    bool // EnableEagerStart on workflow starts

	eventPoll      time.Duration
	eventKeepAlive time.Duration
	// streamsDone is closed by StopStreams.
	streamsDone chan struct{}
	streamsOnce sync.Once
}

// New builds the router.
func New(o Options) *Server {
	s := &Server{
		e:         echo.New(),
		client:    o.Client,
		store:     o.Store,
		taskQueue: o.TaskQueue,
		policy:    o.Policy,
		weights:   o.FairnessWeights,
		log:       o.Logger,
		maxBody:   o.MaxBodyBytes,
		envOpts:   o.TestEnv,
		metrics:   o.Metrics,
		attrs:     o.SearchAttributes,
		webhooks:  o.Webhooks,
		eager:     !o.NoEagerStart,

		eventPoll:      cmp.Or(o.EventPollInterval, DefaultEventPollInterval),
		eventKeepAlive: cmp.Or(o.EventKeepAlive, DefaultEventKeepAlive),
		streamsDone:    make(chan struct{}),
	}
	for _, name := range slices.Sorted(maps.Keys(o.AuthTokens)) {
		s.tokens = append(s.tokens, namedToken{name: name, token: o.AuthTokens[name]})
	}
	if s.envOpts.Templates == nil {
		s.envOpts.Templates = testenv.DefaultTemplates()
	}
	if s.envOpts.DefaultTTL <= 0 {
		s.envOpts.DefaultTTL = workflows.DefaultEnvTTL
	}
	if s.envOpts.RunWait <= 0 {
		s.envOpts.RunWait = DefaultRunWait
	}
	if s.taskQueue == "" {
		s.taskQueue = workflows.DefaultTaskQueue
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.maxBody <= 0 {
		s.maxBody = DefaultMaxBodyBytes
	}
	s.e.HideBanner = true
	s.e.HidePort = true
	s.e.HTTPErrorHandler = s.errorHandler
	s.e.Use(sanitizeRequestID)
	s.e.Use(middleware.RequestID())
	s.e.Use(middleware.RecoverWithConfig(middleware.RecoverConfig{DisablePrintStack: true}))
	s.e.Use(s.requestLog)
	s.e.Use(s.auth)

	s.e.GET("/health", s.health)
	if s.metrics != nil {
		s.e.GET("/metrics", echo.WrapHandler(s.metrics.Handler()))
	}
	s.e.GET("/tasks", s.listTasks)
	s.e.GET("/tasks/:id", s.getTask)
	s.e.PATCH("/tasks/:id", s.patchTask)
	s.e.POST("/tasks/:id/cancel", s.cancelTask)
	s.e.POST("/tasks/:id/retry", s.retryTask)
	s.e.GET("/tasks/:id/audit", s.taskAudit)
	s.e.GET(StepOutputPath, s.stepOutput)
	s.e.GET(TaskEventsPath, s.taskEvents)
	s.e.GET(EventsPath, s.allEvents)
	s.e.GET("/audit", s.listAudit)
	s.e.POST("/workflows/servers/create", s.createServers)
	s.e.POST("/workflows/taskserv/create", s.createTaskserv)
	s.e.POST("/workflows/cluster/create", s.createCluster)
	s.e.POST(BatchPath, s.createBatch)
	s.e.POST("/tasks/:id/approve", s.approveTask)
	s.e.POST("/tasks/:id/reject", s.rejectTask)
	s.routeTestEnv()
	s.routeQueue()
	s.routeSchedules()
	s.e.GET(OpenAPIPath, s.openAPI)
	s.routes = map[string]bool{}
	for _, r := range s.e.Routes() {
		s.routes[r.Path] = true
	}
	return s
}

// DefaultRunWait is TestEnvOptions.RunWait's default: how long a test run
// or converge request waits for its result.
const DefaultRunWait = 15 * time.Minute

// httpMethods are the methods that become metric labels as they are; any
// other method is counted as "OTHER", so a client cannot grow the metrics.
var httpMethods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPost: true, http.MethodPut: true,
	http.MethodPatch: true, http.MethodDelete: true, http.MethodOptions: true,
}

// metricMethod is method as a metric label: one of httpMethods or "OTHER".
func metricMethod(method string) string {
	if httpMethods[method] {
		return method
	}
	return "OTHER"
}

// maxLoggedPath bounds the request path written to the log.
const maxLoggedPath = 256

// requestIDRE is what a client-supplied X-Request-ID must look like to be
// kept (echoed and logged); anything else is replaced by a generated id.
var requestIDRE = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// sanitizeRequestID drops a client's X-Request-ID that is too long or has
// characters that do not belong in a log line, before the RequestID
// middleware reads it.
func sanitizeRequestID(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if id := c.Request().Header.Get(echo.HeaderXRequestID); id != "" && !requestIDRE.MatchString(id) {
			c.Request().Header.Del(echo.HeaderXRequestID)
		}
		return next(c)
	}
}

// ServeHTTP makes Server an http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.e.ServeHTTP(w, r) }

func (s *Server) requestLog(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		err := next(c)
		if err != nil {
			c.Error(err)
		}
		took := time.Since(start)
		route := c.Path()
		if !s.routes[route] {
			route = "unmatched" // keeps label values bounded
		}
		s.metrics.ObserveHTTP(metricMethod(c.Request().Method), route, c.Response().Status, took)
		path := c.Request().URL.Path
		if len(path) > maxLoggedPath {
			path = strings.ToValidUTF8(path[:maxLoggedPath], "") + "..."
		}
		s.log.Info("http request",
			"request_id", c.Response().Header().Get(echo.HeaderXRequestID),
			"method", metricMethod(c.Request().Method), "path", path,
			"status", c.Response().Status, "took_ms", took.Milliseconds())
		return nil
	}
}

// dockerNotConfigured is /health's docker entry without an engine.
const dockerNotConfigured = "not configured (test environments disabled)"

// HealthyMessage is /health's data when every dependency answers.
const HealthyMessage = "Orchestrator is healthy"

func (s *Server) health(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 3*time.Second)
	defer cancel()
	deps := map[string]any{}
	healthy := true
	if _, err := s.client.CheckHealth(ctx, &client.CheckHealthRequest{}); err != nil {
		deps["temporal"] = err.Error()
		healthy = false
	} else {
		deps["temporal"] = "ok"
	}
	if err := s.store.Ping(ctx); err != nil {
		deps["storage"] = err.Error()
		healthy = false
	} else {
		deps["storage"] = "ok"
	}
	if s.envOpts.Docker == nil {
		deps["docker"] = dockerNotConfigured
	} else if err := s.envOpts.Docker.Ping(ctx); err != nil {
		deps["docker"] = err.Error()
		healthy = false
	} else {
		deps["docker"] = "ok"
	}
	if !healthy {
		// The error texts name hosts, paths and engine internals: only an
		// authenticated caller (or an API without tokens) sees them; the
		// log always has them.
		s.log.Warn("health check failed", "dependencies", deps)
		if len(s.tokens) > 0 && !s.validToken(c) {
			for k, v := range deps {
				if v != "ok" && v != dockerNotConfigured {
					deps[k] = "unavailable"
				}
			}
		}
		return &APIError{Status: http.StatusServiceUnavailable, Body: ErrorBody{
			Code: CodeUnavailable, Message: "Orchestrator is unhealthy", Details: deps}}
	}
	return ok(c, http.StatusOK, HealthyMessage)
}

func (s *Server) listTasks(c echo.Context) error {
	f := storage.ListFilter{Limit: storage.DefaultLimit}
	q := c.QueryParams()
	for k := range q {
		switch k {
		case "status", "limit", "offset", "workflow_type", "priority":
		default:
			return fieldErr(k, "unknown query parameter (use status, limit, offset, workflow_type, priority)")
		}
	}
	if v := q.Get("status"); v != "" {
		st := storage.TaskStatus(v)
		if !st.Valid() {
			return fieldErr("status", fmt.Sprintf("%q is not one of Pending, Running, Completed, Failed, Cancelled", v))
		}
		f.Status = st
	}
	f.WorkflowType = q.Get("workflow_type")
	if n, ok, err := intParam(c, "priority", storage.MinPriority, storage.MaxPriority); err != nil {
		return err
	} else if ok {
		f.Priority = n
	}
	if n, ok, err := intParam(c, "limit", 1, storage.MaxLimit); err != nil {
		return err
	} else if ok {
		f.Limit = n
	}
	if v := q.Get("offset"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return fieldErr("offset", "must be a non-negative integer")
		}
		f.Offset = n
	}
	tasks, total, err := s.store.List(c.Request().Context(), f)
	if err != nil {
		return s.storeErr(err)
	}
	c.Response().Header().Set("X-Total-Count", strconv.Itoa(total))
	if tasks == nil {
		tasks = []storage.Task{}
	}
	return ok(c, http.StatusOK, tasks)
}

func (s *Server) taskID(c echo.Context) (string, error) {
	id := c.Param("id")
	if err := storage.ValidateID(id); err != nil {
		return "", fieldErr("id", "must be a task id (a lowercase UUID)")
	}
	return id, nil
}

func (s *Server) getTask(c echo.Context) error {
	id, err := s.taskID(c)
	if err != nil {
		return err
	}
	t, err := s.store.Get(c.Request().Context(), id)
	if err != nil {
		return s.storeErr(err)
	}
	return ok(c, http.StatusOK, t)
}

func (s *Server) cancelTask(c echo.Context) error {
	id, err := s.taskID(c)
	if err != nil {
		return err
	}
	ctx := actorCtx(c)
	t, err := s.store.Get(ctx, id)
	if err != nil {
		return s.storeErr(err)
	}
	if t.Status.Terminal() {
		return conflict(fmt.Sprintf("task %s is already %s", id, t.Status))
	}
	if err := s.client.CancelWorkflow(ctx, id, ""); err != nil {
		var nf *serviceerror.NotFound
		if errors.As(err, &nf) {
			// The workflow finished between the read and the cancel.
			return conflict(fmt.Sprintf("task %s has already finished", id))
		}
		return unavailable("temporal", err)
	}
	s.log.Info("task cancellation requested", "task_id", id)
	s.recordEvent(ctx, id, "cancel", false, storage.AuditEntry{
		Action: ActionCancelRequested, Before: t.Status, After: t.Status, Version: t.Version})
	return ok(c, http.StatusAccepted, id)
}

func (s *Server) storeErr(err error) error {
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return notFound("task not found")
	case errors.Is(err, storage.ErrInvalidID):
		return fieldErr("id", "must be a task id (a lowercase UUID)")
	case errors.Is(err, storage.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return unavailable("storage", err)
	case errors.Is(err, storage.ErrCorrupt):
		s.log.Error("corrupt record in the task store", "error", err)
		return &APIError{Status: http.StatusUnprocessableEntity, Body: ErrorBody{Code: CodeCorrupt,
			Message: "the stored record cannot be read (" + err.Error() + "); run `orchestrator doctor` to list corrupt records and what to do"}}
	}
	return err
}

// CreateServersRequest is the body of POST /workflows/servers/create.
type CreateServersRequest struct {
	Infra    string `json:"infra"`
	Settings string `json:"settings"`
	// Servers to create; required. [] means every server the settings
	// define: the task asks the provisioning script (`server list`) and
	// creates each one. Absent (or null) is refused, so that a client that
	// forgot the field does not create a whole infra.
	Servers   []string `json:"servers"`
	CheckMode bool     `json:"check_mode"`
	Wait      bool     `json:"wait"`
	// Priority 1 (most urgent) to 5; default 3.
	Priority int `json:"priority,omitempty"`
	// Webhook, when set, receives an HMAC-signed POST on every status
	// change of the task (see the README's Webhooks section); the service
	// needs --webhook-secret-file for it.
	Webhook *workflows.Webhook `json:"webhook,omitempty"`
}

// CreateTaskservRequest is the body of POST /workflows/taskserv/create.
type CreateTaskservRequest struct {
	Infra     string   `json:"infra"`
	Settings  string   `json:"settings"`
	Taskserv  string   `json:"taskserv"`
	Servers   []string `json:"servers"`
	CheckMode bool     `json:"check_mode"`
	Wait      bool     `json:"wait"`
	// Priority 1 (most urgent) to 5; default 3.
	Priority int `json:"priority,omitempty"`
	// Webhook, when set, receives an HMAC-signed POST on every status
	// change of the task (see the README's Webhooks section); the service
	// needs --webhook-secret-file for it.
	Webhook *workflows.Webhook `json:"webhook,omitempty"`
}

// CreateClusterRequest is the body of POST /workflows/cluster/create.
type CreateClusterRequest struct {
	Infra     string `json:"infra"`
	Settings  string `json:"settings"`
	Cluster   string `json:"cluster"`
	CheckMode bool   `json:"check_mode"`
	Wait      bool   `json:"wait"`
	// Priority 1 (most urgent) to 5; default 3.
	Priority int `json:"priority,omitempty"`
	// Webhook, when set, receives an HMAC-signed POST on every status
	// change of the task (see the README's Webhooks section); the service
	// needs --webhook-secret-file for it.
	Webhook *workflows.Webhook `json:"webhook,omitempty"`
}

// IdempotencyKeyHeader on a create request makes a retry of it safe: the
// same key (from the same token, for the same kind of task) names the same
// task, so the retry answers that task's id instead of starting a second
// run. The answer to a replay carries IdempotentReplayedHeader: true.
const (
	IdempotencyKeyHeader     = "Idempotency-Key"
	IdempotentReplayedHeader = "Idempotent-Replayed"
)

// CodeKeyReused is the error code of an Idempotency-Key sent again with a different
// request (422).
const CodeKeyReused = "idempotency_key_reused"

// newTaskID is a fresh task id, or with an Idempotency-Key the id that key
// names for this actor and workflow type (keyed is then true).
func (s *Server) newTaskID(c echo.Context, wfType string) (id string, keyed bool, err error) {
	key := c.Request().Header.Get(IdempotencyKeyHeader)
	if key == "" {
		return uuid.NewString(), false, nil
	}
	if err := storage.ValidateIdempotencyKey(key); err != nil {
		return "", false, fieldErr(IdempotencyKeyHeader, "1 to 128 letters, digits, '.', '_', ':' or '-'")
	}
	return storage.IdempotentID(requestActor(c)+"\x00"+wfType, key), true, nil
}

// replay answers a keyed create whose task exists already: the same id
// (200) when it is the same request, 422 when the key was used for another.
// handled is false when there is no such task.
func (s *Server) replay(c echo.Context, task storage.Task) (handled bool, err error) {
	existing, err := s.store.Get(c.Request().Context(), task.ID)
	if errors.Is(err, storage.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return true, s.storeErr(err)
	}
	if existing.WorkflowType != task.WorkflowType || existing.Name != task.Name || existing.Command != task.Command ||
		!slices.Equal(existing.Dependencies, task.Dependencies) {
		return true, &APIError{Status: http.StatusUnprocessableEntity, Body: ErrorBody{Code: CodeKeyReused, Field: IdempotencyKeyHeader,
			Message: fmt.Sprintf("this Idempotency-Key was already used for another request (task %s: %s); use a new key for a new request", existing.ID, existing.Name)}}
	}
	c.Response().Header().Set(IdempotentReplayedHeader, "true")
	s.log.Info("idempotent replay", "task_id", existing.ID, "status", existing.Status)
	return true, ok(c, http.StatusOK, existing.ID)
}

// WebhookSecretFlag is the flag (and ORCHESTRATOR_WEBHOOK_SECRET_FILE the
// variable) that enables webhooks; the 400 for a webhook without it names it.
const WebhookSecretFlag = "--webhook-secret-file"

// checkWebhook refuses a webhook the service cannot sign.
func (s *Server) checkWebhook(hook *workflows.Webhook) error {
	if hook != nil && !s.webhooks {
		return fieldErr("webhook", "webhooks are not enabled on this service: start it with "+WebhookSecretFlag+
			" (ORCHESTRATOR_WEBHOOK_SECRET_FILE), a file holding the key that signs deliveries")
	}
	if hook != nil && workflows.ValidateWebhook("webhook", hook) == nil {
		// The rules passed (validation reports their errors); what they
		// cannot see, such as a bad %-escape, net/url can.
		if _, err := url.Parse(hook.URL); err != nil {
			return fieldErr("webhook.url", "is not a URL: "+errors.Unwrap(err).Error())
		}
	}
	return nil
}

func (s *Server) common(c echo.Context, wfType, infra, settings string, check, wait bool, priority int, hook *workflows.Webhook) (workflows.Common, bool, error) {
	if err := s.checkWebhook(hook); err != nil {
		return workflows.Common{}, false, err
	}
	id, keyed, err := s.newTaskID(c, wfType)
	if err != nil {
		return workflows.Common{}, false, err
	}
	return workflows.Common{
		TaskID:    id,
		Infra:     infra,
		Settings:  settings,
		CheckMode: check,
		Wait:      wait,
		CreatedAt: time.Now().UTC().Truncate(time.Microsecond),
		Policy:    s.policy,
		Priority:  priority,
		// Looked up with the raw name: a bad one fails validation next.
		FairnessWeight: s.weights[infra],
		Webhook:        hook,
	}, keyed, nil
}

func (s *Server) createServers(c echo.Context) error {
	var req CreateServersRequest
	if err := s.decodeJSON(c, &req); err != nil {
		return err
	}
	common, keyed, err := s.common(c, workflows.ServerCreateWorkflowName, req.Infra, req.Settings, req.CheckMode, req.Wait, req.Priority, req.Webhook)
	if err != nil {
		return err
	}
	in := workflows.ServerCreateInput{Common: common, Servers: req.Servers}
	if err := in.Validate(); err != nil {
		return validationErr(err)
	}
	if req.Servers == nil {
		return fieldErr("servers", "is required: name the servers, or send [] for every server the settings define")
	}
	return s.start(c, in.Common, keyed, in.Task(), in)
}

func (s *Server) createTaskserv(c echo.Context) error {
	var req CreateTaskservRequest
	if err := s.decodeJSON(c, &req); err != nil {
		return err
	}
	common, keyed, err := s.common(c, workflows.TaskservCreateWorkflowName, req.Infra, req.Settings, req.CheckMode, req.Wait, req.Priority, req.Webhook)
	if err != nil {
		return err
	}
	in := workflows.TaskservCreateInput{Common: common, Taskserv: req.Taskserv, Servers: req.Servers}
	if err := in.Validate(); err != nil {
		return validationErr(err)
	}
	return s.start(c, in.Common, keyed, in.Task(), in)
}

func (s *Server) createCluster(c echo.Context) error {
	var req CreateClusterRequest
	if err := s.decodeJSON(c, &req); err != nil {
		return err
	}
	common, keyed, err := s.common(c, workflows.ClusterCreateWorkflowName, req.Infra, req.Settings, req.CheckMode, req.Wait, req.Priority, req.Webhook)
	if err != nil {
		return err
	}
	in := workflows.ClusterCreateInput{Common: common, Cluster: req.Cluster}
	if err := in.Validate(); err != nil {
		return validationErr(err)
	}
	return s.start(c, in.Common, keyed, in.Task(), in)
}

func validationErr(err error) error {
	var fe *workflows.FieldError
	if errors.As(err, &fe) {
		return fieldErr(fe.Field, fe.Message)
	}
	return &APIError{Status: http.StatusBadRequest, Body: ErrorBody{Code: CodeValidation, Message: err.Error()}}
}

// start records the task as Pending and starts its workflow (ID = task ID).
// If the start fails the Pending record is removed again, so a failed
// request leaves nothing behind.
func (s *Server) start(c echo.Context, common workflows.Common, keyed bool, spec workflows.TaskSpec, input any) error {
	task := storage.Normalize(storage.Task{
		ID:      common.TaskID,
		Name:    spec.Name,
		Command: spec.Command,
		// The arguments the workflow's projections show too; they name
		// the infra that GET /events filters on from the first event.
		Args:         spec.Args,
		Status:       storage.StatusPending,
		CreatedAt:    common.CreatedAt,
		UpdatedAt:    common.CreatedAt,
		WorkflowType: spec.Workflow,
		Priority:     common.Priority,
		Dependencies: slices.Clone(common.Dependencies),
	})
	return s.startTask(c, task, keyed, workflowStart{wfType: spec.Workflow, input: input,
		prio: common.TemporalPriority(), summary: spec.Summary(), details: common.Details(),
		attrs: s.attrs.Start(common.Infra, cmp.Or(common.Priority, storage.DefaultPriority))})
}

// startTask stores task (Pending) and starts its workflow with ID = task ID.
// The store's Create appends the task's create audit entry with the
// request's actor.
// workflowStart is what startTask starts: the workflow type and input,
// its Temporal priority, the summary and details operators see in the
// Web UI and `temporal workflow describe`, and the search attributes they
// find it by.
type workflowStart struct {
	wfType           string
	input            any
	prio             temporal.Priority
	summary, details string
	attrs            temporal.SearchAttributes
}

func (s *Server) startTask(c echo.Context, task storage.Task, keyed bool, w workflowStart) error {
	wfType, input := w.wfType, w.input
	ctx := actorCtx(c)
	// The Pending record's fsyncs run while Temporal records the start:
	// the response waits for both, and a start that fails still finds the
	// record to remove.
	commit := func() error { return nil }
	var err error
	if dc, ok := s.store.(storage.DeferredCreator); ok {
		commit, err = dc.CreateDeferred(ctx, task)
	} else {
		err = s.store.Create(ctx, task)
	}
	if err != nil {
		if errors.Is(err, storage.ErrExists) {
			if keyed {
				if handled, err := s.replay(c, task); handled {
					return err
				}
			}
			return conflict(fmt.Sprintf("task %s already exists", task.ID))
		}
		return s.storeErr(err)
	}
	// The Pending transition opens the task's live event stream. Best
	// effort: the workflow's own transitions follow either way.
	if err := storage.AppendTransition(ctx, s.store, task); err != nil {
		s.log.Warn("could not record the task's Pending event", "task_id", task.ID, "error", err)
	}
	committed := make(chan error, 1)
	go func() { committed <- commit() }()
	_, err = s.client.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID:                       task.ID,
		TaskQueue:                s.taskQueue,
		WorkflowIDReusePolicy:    enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE,
		WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_FAIL,
		// Without this the SDK quietly returns the existing run.
		WorkflowExecutionErrorWhenAlreadyStarted: true,
		// In serve mode the worker shares this client: Temporal hands the
		// first workflow task back with the start's answer instead of a
		// trip through matching (the SDK asks only when a local worker
		// polls the queue; api-only processes start as before).
		EnableEagerStart: s.eager,
		// Inherited by the workflow's activities: Temporal's matching
		// dispatches lower keys first and shares throughput fairly
		// between fairness keys.
		Priority:      w.prio,
		StaticSummary: w.summary,
		StaticDetails: w.details,
		// Infra and priority, for `temporal workflow list --query` and
		// the Web UI's search.
		TypedSearchAttributes: w.attrs,
	}, wfType, input)
	if cerr := <-committed; cerr != nil {
		// Stored but possibly not durable. A started workflow is the
		// durable fact (its projections write the record again), so the
		// answer stays that of the start.
		s.log.Error("could not make the task's Pending record durable", "task_id", task.ID, "error", cerr)
	}
	if err == nil {
		s.log.Info("task started", "task_id", task.ID, "workflow", wfType)
		return ok(c, http.StatusOK, task.ID)
	}
	// Background context: the request may be gone, the cleanup must not be.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	var started *serviceerror.WorkflowExecutionAlreadyStarted
	if errors.As(err, &started) && keyed {
		// An earlier request with this key started it (and its record
		// was lost): this is that task.
		c.Response().Header().Set(IdempotentReplayedHeader, "true")
		return ok(c, http.StatusOK, task.ID)
	}
	if !errors.As(err, &started) {
		// The start may have reached Temporal although the answer did not
		// reach us: look before removing the record.
		_, derr := s.client.DescribeWorkflowExecution(dctx, task.ID, "")
		var nf *serviceerror.NotFound
		switch {
		case derr == nil:
			s.log.Warn("workflow start answered an error but the workflow exists; keeping the task", "task_id", task.ID, "error", err)
			return ok(c, http.StatusOK, task.ID)
		case !errors.As(derr, &nf):
			// Cannot tell: the Pending record stays for the reconciler,
			// which fails it if no workflow ever shows up.
			s.log.Error("workflow start failed and Temporal cannot say whether it started; the reconciler will settle the task",
				"task_id", task.ID, "error", err, "lookup_error", derr)
			s.recordEvent(ctx, task.ID, ActionStartFailed, true, storage.AuditEntry{
				Action: ActionStartFailed, Before: task.Status, After: task.Status, Version: task.Version,
				Detail: "workflow start failed and could not be confirmed either way: " + err.Error()})
			return unavailable("temporal", err)
		}
	}
	if derr := s.store.Delete(dctx, task.ID); derr != nil {
		s.log.Error("could not remove task after failed start", "task_id", task.ID, "error", derr)
	}
	s.recordEvent(ctx, task.ID, ActionStartFailed, true, storage.AuditEntry{
		Action: ActionStartFailed, Before: task.Status, Version: task.Version,
		Detail: "workflow start failed: " + err.Error()})
	if errors.As(err, &started) {
		return conflict(fmt.Sprintf("task %s already exists", task.ID))
	}
	return unavailable("temporal", err)
}

package server

import (
	"encoding/json"
	"math"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/testenv"
)

// OpenAPIPath is where the API description is served.
const OpenAPIPath = "/openapi.json"

// apiParam is one query parameter of an operation.
type apiParam struct {
	name   string
	desc   string
	schema map[string]any
}

// apiOp describes one route. Schemas are generated from the Go types the
// handlers decode and encode, so the document cannot drift from the code.
type apiOp struct {
	method, path, summary string
	public                bool
	// pathParams describes the path parameters other than :id (which
	// every route that has it shares).
	pathParams   []apiParam
	query        []apiParam
	body         reflect.Type // nil: no request body
	bodyOptional bool
	// idempotent: the route takes an Idempotency-Key header.
	idempotent bool
	success    []int
	data       any // reflect.Type or a literal schema (map)
	raw        map[string]any
	// alt adds media types (besides the JSON envelope) to the success
	// responses, e.g. text/plain for a raw variant chosen by a parameter.
	alt map[string]any
	// sse: the success response is a text/event-stream whose events'
	// data is JSON of type data (documented as x-event-data).
	sse    bool
	errors []int
}

func typeOf[T any]() reflect.Type { return reflect.TypeFor[T]() }

func intRange(lo, hi int) map[string]any {
	s := map[string]any{"type": "integer", "minimum": lo}
	if hi > 0 {
		s["maximum"] = hi
	}
	return s
}

var uuidSchema = map[string]any{"type": "string", "format": "uuid"}

// apiOps is every operation the server can register.
func apiOps() []apiOp {
	ops := append(append(apiOpList(), queueOp()), scheduleOps()...)
	// Whatever reads a stored record can find it corrupt; creates take an
	// Idempotency-Key (422 when it was used for another request).
	for i := range ops {
		if ops[i].method == http.MethodPost && strings.HasSuffix(ops[i].path, "/create") {
			ops[i].idempotent = true
			ops[i].errors = append(slices.Clone(ops[i].errors), http.StatusUnprocessableEntity)
		}
		if slices.Contains(ops[i].errors, http.StatusNotFound) {
			ops[i].errors = append(slices.Clone(ops[i].errors), http.StatusUnprocessableEntity)
		}
	}
	return ops
}

func apiOpList() []apiOp {
	statuses := []any{}
	for _, s := range []storage.TaskStatus{storage.StatusPending, storage.StatusRunning, storage.StatusCompleted, storage.StatusFailed, storage.StatusCancelled} {
		statuses = append(statuses, string(s))
	}
	auditLimit := apiParam{"limit", "newest entries to return", intRange(1, storage.DefaultAuditLimit)}
	body := []int{http.StatusBadRequest, http.StatusConflict, http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType, http.StatusServiceUnavailable}
	return []apiOp{
		{method: http.MethodGet, path: "/health", summary: "Service health", public: true,
			success: []int{http.StatusOK}, data: map[string]any{"type": "string"}, errors: []int{http.StatusServiceUnavailable}},
		{method: http.MethodGet, path: "/metrics", summary: "Prometheus metrics (text exposition format)", public: true,
			success: []int{http.StatusOK}, raw: map[string]any{"text/plain": map[string]any{"schema": map[string]any{"type": "string"}}}},
		{method: http.MethodGet, path: OpenAPIPath, summary: "This OpenAPI document", public: true,
			success: []int{http.StatusOK}, raw: map[string]any{"application/json": map[string]any{"schema": map[string]any{"type": "object"}}}},
		{method: http.MethodGet, path: "/tasks", summary: "List tasks, newest first (X-Total-Count holds the total)",
			query: []apiParam{
				{"status", "only tasks in this status", map[string]any{"type": "string", "enum": statuses}},
				{"limit", "page size", intRange(1, storage.MaxLimit)},
				{"offset", "tasks to skip", intRange(0, 0)},
				{"workflow_type", "only tasks of this Temporal workflow type", map[string]any{"type": "string"}},
				{"priority", "only tasks of this priority (1 most urgent)", intRange(storage.MinPriority, storage.MaxPriority)},
			},
			success: []int{http.StatusOK}, data: typeOf[[]storage.Task](), errors: []int{http.StatusBadRequest, http.StatusServiceUnavailable}},
		{method: http.MethodGet, path: "/tasks/:id", summary: "Get a task",
			success: []int{http.StatusOK}, data: typeOf[storage.Task](), errors: []int{http.StatusBadRequest, http.StatusNotFound, http.StatusServiceUnavailable}},
		{method: http.MethodPatch, path: "/tasks/:id", summary: "Change an unfinished provisioning task's priority; the steps it starts from then on use it; data is the task",
			body: typeOf[PatchTaskRequest](), success: []int{http.StatusOK}, data: typeOf[storage.Task](),
			errors: []int{http.StatusBadRequest, http.StatusNotFound, http.StatusConflict, http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType, http.StatusServiceUnavailable}},
		{method: http.MethodPost, path: "/tasks/:id/cancel", summary: "Request a task's cancellation; data is the task id",
			success: []int{http.StatusAccepted}, data: uuidSchema, errors: []int{http.StatusBadRequest, http.StatusNotFound, http.StatusConflict, http.StatusServiceUnavailable}},
		{method: http.MethodPost, path: "/tasks/:id/retry",
			summary: "Retry a Failed or Cancelled provisioning task: a new task (same workflow type, infra, settings, options; priority unless the body overrides it) runs only the steps that did not complete, with the old id in its dependencies; data is the new task id. Without an Idempotency-Key a task has one retry: asking again answers the same one (Idempotent-Replayed). 409 names why a task cannot be retried (running, completed, a test environment)",
			body:    typeOf[RetryTaskRequest](), bodyOptional: true, idempotent: true,
			success: []int{http.StatusOK}, data: uuidSchema,
			errors: []int{http.StatusBadRequest, http.StatusNotFound, http.StatusConflict, http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType, http.StatusServiceUnavailable}},
		{method: http.MethodGet, path: "/tasks/:id/audit", summary: "A task's audit trail", query: []apiParam{auditLimit},
			success: []int{http.StatusOK}, data: typeOf[[]storage.AuditEntry](), errors: []int{http.StatusBadRequest, http.StatusNotFound, http.StatusServiceUnavailable}},
		{method: http.MethodGet, path: StepOutputPath,
			summary: "A step's full captured output (each stream's last 256 KiB), of its latest stored attempt unless ?attempt= names one; ?stream= answers one stream as text/plain. " +
				StepAttemptHeader + " names the attempt, " + OutputTruncatedHeader + " whether output was cut",
			pathParams: []apiParam{{"step", "the step's name (a server, taskserv or cluster name)",
				map[string]any{"type": "string", "pattern": `^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`}}},
			query: []apiParam{
				{"attempt", "this attempt instead of the latest", intRange(1, math.MaxInt32)},
				{"stream", "only this stream, as text/plain", map[string]any{"type": "string", "enum": []any{"stdout", "stderr"}}},
			},
			success: []int{http.StatusOK}, data: typeOf[StepOutputData](),
			alt:    map[string]any{"text/plain": map[string]any{"schema": map[string]any{"type": "string"}}},
			errors: []int{http.StatusBadRequest, http.StatusNotFound, http.StatusServiceUnavailable}},
		{method: http.MethodGet, path: TaskEventsPath,
			summary: "A task's live events as Server-Sent Events, oldest first: every transition (in version order), step started/finished/attempt failed, " +
				"and the running steps' output lines (a bounded tail per attempt). The id of each event is its seq; resume with the " + LastEventIDHeader +
				" header or ?last_event_id=. The server ends the stream after the task's terminal transition; resuming after that transition answers 204 " +
				"(which stops an EventSource from reconnecting). 404 before streaming for an unknown task",
			query:   []apiParam{{"last_event_id", "resume after this event id (the " + LastEventIDHeader + " header wins)", intRange(0, 0)}},
			success: []int{http.StatusOK, http.StatusNoContent}, data: typeOf[storage.Event](), sse: true,
			errors: []int{http.StatusBadRequest, http.StatusNotFound, http.StatusServiceUnavailable}},
		{method: http.MethodGet, path: EventsPath,
			summary: "Every task's live events from now on, as Server-Sent Events (ids are <unix ns>-<task id>-<seq>; resume with " + LastEventIDHeader +
				" or ?last_event_id=); the stream does not end by itself",
			query: []apiParam{
				{"infra", "only tasks of this infra", map[string]any{"type": "string"}},
				{"workflow_type", "only tasks of this Temporal workflow type", map[string]any{"type": "string"}},
				{"last_event_id", "resume after this event id (the " + LastEventIDHeader + " header wins)", map[string]any{"type": "string"}},
			},
			success: []int{http.StatusOK}, data: typeOf[storage.Event](), sse: true,
			errors: []int{http.StatusBadRequest, http.StatusServiceUnavailable}},
		{method: http.MethodGet, path: "/audit", summary: "The audit trail",
			query:   []apiParam{{"task_id", "only this task's entries", uuidSchema}, auditLimit},
			success: []int{http.StatusOK}, data: typeOf[[]storage.AuditEntry](), errors: []int{http.StatusBadRequest, http.StatusServiceUnavailable}},
		{method: http.MethodPost, path: "/workflows/servers/create", summary: "Create servers; data is the task id", body: typeOf[CreateServersRequest](),
			success: []int{http.StatusOK}, data: uuidSchema, errors: body},
		{method: http.MethodPost, path: "/workflows/taskserv/create", summary: "Install a taskserv; data is the task id", body: typeOf[CreateTaskservRequest](),
			success: []int{http.StatusOK}, data: uuidSchema, errors: body},
		{method: http.MethodPost, path: "/workflows/cluster/create", summary: "Create a cluster; data is the task id", body: typeOf[CreateClusterRequest](),
			success: []int{http.StatusOK}, data: uuidSchema, errors: body},
		{method: http.MethodPost, path: BatchPath,
			summary: "Submit a batch: a DAG of server/taskserv/cluster operations (depends_on), each run as its own task (child workflow) once its dependencies completed, " +
				"at most parallelism at a time; a failure stops what depends on it (fail_fast: everything) and rolls completed operations back by the provider's delete verbs, last first " +
				"(rollback: false keeps them); mode plan runs every operation with --check; require_approval plans, waits for /approve or /reject, then applies. data is the batch's task id; " +
				"GET /tasks/{id} shows each operation's status and task id under batch",
			body: typeOf[CreateBatchRequest](), idempotent: true,
			success: []int{http.StatusOK}, data: uuidSchema, errors: append(slices.Clone(body), http.StatusUnprocessableEntity)},
		{method: http.MethodPost, path: "/tasks/:id/approve",
			summary: "Approve a batch that awaits approval (require_approval): it applies its plan. The caller's token name is recorded as the approver in the audit trail; data is the batch task. 409 " + CodeNotAwaitingApproval + " when it is not waiting",
			body:    typeOf[DecisionRequest](), bodyOptional: true, success: []int{http.StatusOK}, data: typeOf[storage.Task](),
			errors: []int{http.StatusBadRequest, http.StatusNotFound, http.StatusConflict, http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType, http.StatusServiceUnavailable}},
		{method: http.MethodPost, path: "/tasks/:id/reject",
			summary: "Reject a batch's plan: nothing is applied and the batch ends Cancelled. The caller's token name is recorded as the approver; data is the batch task. 409 " + CodeNotAwaitingApproval + " when it is not waiting",
			body:    typeOf[DecisionRequest](), bodyOptional: true, success: []int{http.StatusOK}, data: typeOf[storage.Task](),
			errors: []int{http.StatusBadRequest, http.StatusNotFound, http.StatusConflict, http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType, http.StatusServiceUnavailable}},
		{method: http.MethodPost, path: "/test/environments/create", summary: "Create a test environment; data is its id", body: typeOf[testenv.CreateRequest](),
			success: []int{http.StatusOK}, data: uuidSchema, errors: append(slices.Clone(body), http.StatusTooManyRequests)},
		{method: http.MethodGet, path: "/test/environments", summary: "List test environments (without request and runs)",
			query:   []apiParam{{"limit", "page size", intRange(1, storage.MaxLimit)}},
			success: []int{http.StatusOK}, data: typeOf[[]testenv.EnvState](), errors: []int{http.StatusBadRequest, http.StatusServiceUnavailable}},
		{method: http.MethodGet, path: "/test/environments/:id", summary: "Get a test environment",
			success: []int{http.StatusOK}, data: typeOf[testenv.EnvState](), errors: []int{http.StatusBadRequest, http.StatusNotFound, http.StatusServiceUnavailable}},
		{method: http.MethodPost, path: "/test/environments/:id/run", summary: "Run tests and wait for the result (no body: default checks)",
			body: typeOf[testenv.RunRequest](), bodyOptional: true,
			success: []int{http.StatusOK}, data: typeOf[testenv.TestRun](),
			errors: []int{http.StatusBadRequest, http.StatusNotFound, http.StatusConflict, http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType, http.StatusServiceUnavailable, http.StatusGatewayTimeout}},
		{method: http.MethodPost, path: "/test/environments/:id/converge", summary: "Converge the nodes again (optionally checking idempotence) and wait for every install's result",
			body: typeOf[testenv.ConvergeRequest](), bodyOptional: true,
			success: []int{http.StatusOK}, data: typeOf[testenv.ConvergeReport](),
			errors: []int{http.StatusBadRequest, http.StatusNotFound, http.StatusConflict, http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType, http.StatusServiceUnavailable, http.StatusGatewayTimeout}},
		{method: http.MethodDelete, path: "/test/environments/:id", summary: "Clean a test environment up (200: already ended, 202: cleanup requested)",
			success: []int{http.StatusOK, http.StatusAccepted}, data: typeOf[testenv.EnvState](), errors: []int{http.StatusBadRequest, http.StatusNotFound, http.StatusServiceUnavailable}},
		{method: http.MethodGet, path: "/test/environments/:id/logs", summary: "Container logs and the last run's results",
			query: []apiParam{
				{"node", "only this node", map[string]any{"type": "string"}},
				{"tail", "log lines per stream", intRange(1, 10000)},
			},
			success: []int{http.StatusOK}, data: typeOf[EnvLogs](), errors: []int{http.StatusBadRequest, http.StatusNotFound, http.StatusServiceUnavailable}},
		{method: http.MethodGet, path: "/test/topologies", summary: "Cluster topology templates",
			success: []int{http.StatusOK}, data: typeOf[[]testenv.Template]()},
	}
}

// openAPIPath turns an echo path (/tasks/:id) into an OpenAPI one (/tasks/{id}).
func openAPIPath(p string) string {
	parts := strings.Split(p, "/")
	for i, s := range parts {
		if name, ok := strings.CutPrefix(s, ":"); ok {
			parts[i] = "{" + name + "}"
		}
	}
	return strings.Join(parts, "/")
}

// OpenAPI returns the OpenAPI 3 document of exactly the routes this server
// registered. It panics if a route has no description (a test catches it).
func (s *Server) OpenAPI() map[string]any {
	g := &schemaGen{components: map[string]any{}, names: map[reflect.Type]string{}}
	ops := map[string]apiOp{}
	for _, o := range apiOps() {
		ops[o.method+" "+o.path] = o
	}
	paths := map[string]any{}
	for _, r := range s.e.Routes() {
		o, found := ops[r.Method+" "+r.Path]
		if !found {
			panic("openapi: route " + r.Method + " " + r.Path + " is not described")
		}
		p := openAPIPath(r.Path)
		item, _ := paths[p].(map[string]any)
		if item == nil {
			item = map[string]any{}
			paths[p] = item
		}
		item[strings.ToLower(r.Method)] = g.operation(o, len(s.tokens) > 0)
	}
	return map[string]any{
		"openapi": "3.0.3",
		"info": map[string]any{
			"title":       "Provisioning orchestrator",
			"version":     "1",
			"description": "REST API of the provisioning orchestrator. Every JSON response is an envelope: {success: true, data} or {success: false, error}.",
		},
		"paths": paths,
		"components": map[string]any{
			"schemas": g.components,
			"securitySchemes": map[string]any{
				"bearer": map[string]any{"type": "http", "scheme": "bearer"},
			},
		},
	}
}

func (s *Server) openAPI(c echo.Context) error {
	return c.JSON(http.StatusOK, s.OpenAPI())
}

func (g *schemaGen) operation(o apiOp, auth bool) map[string]any {
	op := map[string]any{"summary": o.summary, "operationId": strings.ToLower(o.method) + strings.NewReplacer("/", "_", ":", "", ".", "_").Replace(o.path)}
	params := []any{}
	if strings.Contains(o.path, ":id") {
		params = append(params, map[string]any{"name": "id", "in": "path", "required": true, "description": "task (or test environment) id", "schema": uuidSchema})
	}
	for _, p := range o.pathParams {
		params = append(params, map[string]any{"name": p.name, "in": "path", "required": true, "description": p.desc, "schema": p.schema})
	}
	for _, q := range o.query {
		params = append(params, map[string]any{"name": q.name, "in": "query", "required": false, "description": q.desc, "schema": q.schema})
	}
	if o.idempotent {
		params = append(params, map[string]any{"name": IdempotencyKeyHeader, "in": "header", "required": false,
			"description": "makes a retry safe: the same key (per token and kind of task) answers the same task id, with " + IdempotentReplayedHeader + ": true; reused for another request: 422",
			"schema":      map[string]any{"type": "string", "pattern": `^[A-Za-z0-9._:-]{1,128}$`}})
	}
	if len(params) > 0 {
		op["parameters"] = params
	}
	if o.body != nil {
		op["requestBody"] = map[string]any{
			"required": !o.bodyOptional,
			"content":  map[string]any{"application/json": map[string]any{"schema": g.schema(o.body)}},
		}
	}
	responses := map[string]any{}
	for _, code := range o.success {
		if code == http.StatusNoContent {
			responses[strconv.Itoa(code)] = map[string]any{"description": http.StatusText(code)}
			continue
		}
		if o.sse {
			responses[strconv.Itoa(code)] = map[string]any{"description": http.StatusText(code), "content": map[string]any{
				"text/event-stream": map[string]any{
					"schema":       map[string]any{"type": "string", "description": "Server-Sent Events: `id:`, `event:` (the event's type) and `data:` (one JSON event, x-event-data) per event; `: keep-alive` comments when idle"},
					"x-event-data": g.schema(o.data.(reflect.Type)),
				}}}
			continue
		}
		if o.raw != nil {
			responses[strconv.Itoa(code)] = map[string]any{"description": http.StatusText(code), "content": o.raw}
			continue
		}
		data, isSchema := o.data.(map[string]any)
		if !isSchema {
			data = g.schema(o.data.(reflect.Type))
		}
		env := map[string]any{
			"type":                 "object",
			"required":             []any{"success", "data"},
			"additionalProperties": false,
			"properties": map[string]any{
				"success": map[string]any{"type": "boolean", "enum": []any{true}},
				"data":    data,
			},
		}
		content := jsonContent(env)
		for mt, media := range o.alt {
			content[mt] = media
		}
		responses[strconv.Itoa(code)] = map[string]any{"description": http.StatusText(code), "content": content}
	}
	errs := slices.Clone(o.errors)
	if auth && !o.public {
		errs = append(errs, http.StatusUnauthorized)
	}
	errs = append(errs, http.StatusInternalServerError)
	g.schema(typeOf[Envelope]()) // registers ErrorBody
	errEnv := map[string]any{
		"type":                 "object",
		"required":             []any{"success", "error"},
		"additionalProperties": false,
		"properties": map[string]any{
			"success": map[string]any{"type": "boolean", "enum": []any{false}},
			"error":   map[string]any{"$ref": "#/components/schemas/ErrorBody"},
		},
	}
	for _, code := range errs {
		responses[strconv.Itoa(code)] = map[string]any{"description": http.StatusText(code), "content": jsonContent(errEnv)}
	}
	op["responses"] = responses
	if o.public {
		op["security"] = []any{}
	} else if auth {
		op["security"] = []any{map[string]any{"bearer": []any{}}}
	}
	return op
}

func jsonContent(schema map[string]any) map[string]any {
	return map[string]any{"application/json": map[string]any{"schema": schema}}
}

// schemaGen derives JSON schemas (the OpenAPI 3.0 subset) from Go types and
// their json tags. Named structs become components.
type schemaGen struct {
	components map[string]any
	names      map[reflect.Type]string
}

var (
	timeType = reflect.TypeFor[time.Time]()
	rawType  = reflect.TypeFor[json.RawMessage]()
)

func (g *schemaGen) schema(t reflect.Type) map[string]any {
	switch t {
	case timeType:
		return map[string]any{"type": "string", "format": "date-time"}
	case rawType:
		return map[string]any{}
	}
	switch t.Kind() {
	case reflect.Pointer:
		return nullable(g.schema(t.Elem()))
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		s := map[string]any{"type": "integer"}
		if t.Bits() == 64 {
			s["format"] = "int64"
		} else if t.Bits() == 32 {
			s["format"] = "int32"
		}
		return s
	case reflect.Float32, reflect.Float64:
		return map[string]any{"type": "number"}
	case reflect.Slice, reflect.Array:
		// A nil Go slice encodes as null.
		return map[string]any{"type": "array", "items": g.schema(t.Elem()), "nullable": true}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": g.schema(t.Elem()), "nullable": true}
	case reflect.Interface:
		return map[string]any{}
	case reflect.Struct:
		return g.structRef(t)
	}
	panic("openapi: unsupported type " + t.String())
}

func nullable(s map[string]any) map[string]any {
	if _, isRef := s["$ref"]; isRef {
		return map[string]any{"allOf": []any{s}, "nullable": true}
	}
	out := map[string]any{}
	for k, v := range s {
		out[k] = v
	}
	if len(out) > 0 {
		out["nullable"] = true
	}
	return out
}

func (g *schemaGen) structRef(t reflect.Type) map[string]any {
	name, seen := g.names[t]
	if !seen {
		name = t.Name()
		if _, taken := g.components[name]; taken || name == "" {
			name = strings.ReplaceAll(t.PkgPath()[strings.LastIndex(t.PkgPath(), "/")+1:], ".", "_") + "_" + t.Name()
		}
		g.names[t] = name
		g.components[name] = map[string]any{} // placeholder for recursion
		props := map[string]any{}
		required := []any{}
		g.fields(t, props, &required)
		s := map[string]any{"type": "object", "properties": props, "additionalProperties": false}
		if len(required) > 0 {
			s["required"] = required
		}
		g.components[name] = s
	}
	return map[string]any{"$ref": "#/components/schemas/" + name}
}

func (g *schemaGen) fields(t reflect.Type, props map[string]any, required *[]any) {
	for f := range t.Fields() {
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			g.fields(f.Type, props, required)
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		props[name] = g.schema(f.Type)
		optional := false
		for o := range strings.SplitSeq(opts, ",") {
			optional = optional || o == "omitempty" || o == "omitzero"
		}
		if !optional {
			*required = append(*required, name)
		}
	}
}

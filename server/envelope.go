// Package server is the echo REST façade: it validates requests, starts
// workflows, and answers the task API from the storage backend. Every
// response uses the original orchestrator's envelope.
package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"
)

// Envelope is the body of every response.
type Envelope struct {
	Success bool       `json:"success"`
	Data    any        `json:"data,omitempty"`
	Error   *ErrorBody `json:"error,omitempty"`
}

// ErrorBody describes a failure. Field names the offending request field
// when there is one.
type ErrorBody struct {
	Code    string         `json:"code"`
	Message string         `json:"message"`
	Field   string         `json:"field,omitempty"`
	Details map[string]any `json:"details,omitempty"`
}

// APIError is returned by handlers and rendered by the error handler.
type APIError struct {
	Status int
	Body   ErrorBody
}

func (e *APIError) Error() string { return e.Body.Message }

// Error codes, stable for clients.
const (
	CodeBadRequest       = "bad_request"
	CodeValidation       = "validation_error"
	CodeNotFound         = "not_found"
	CodeConflict         = "conflict"
	CodeTooLarge         = "payload_too_large"
	CodeUnsupportedMedia = "unsupported_media_type"
	CodeUnavailable      = "service_unavailable"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeInternal         = "internal_error"
	CodeUnauthorized     = "unauthorized"
)

func fieldErr(field, msg string) *APIError {
	return &APIError{Status: http.StatusBadRequest, Body: ErrorBody{Code: CodeValidation, Field: field, Message: field + ": " + msg}}
}

func notFound(msg string) *APIError {
	return &APIError{Status: http.StatusNotFound, Body: ErrorBody{Code: CodeNotFound, Message: msg}}
}

func conflict(msg string) *APIError {
	return &APIError{Status: http.StatusConflict, Body: ErrorBody{Code: CodeConflict, Message: msg}}
}

func unavailable(what string, err error) *APIError {
	return &APIError{Status: http.StatusServiceUnavailable, Body: ErrorBody{Code: CodeUnavailable, Message: fmt.Sprintf("%s unavailable: %v", what, err)}}
}

func ok(c echo.Context, status int, data any) error {
	return c.JSON(status, Envelope{Success: true, Data: data})
}

// errorHandler renders every error, including echo's own 404/405 and body
// limit errors, as an envelope.
func (s *Server) errorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	var apiErr *APIError
	var he *echo.HTTPError
	switch {
	case errors.As(err, &apiErr):
	case errors.As(err, &he):
		apiErr = &APIError{Status: he.Code, Body: ErrorBody{Code: codeForStatus(he.Code), Message: fmt.Sprint(he.Message)}}
	default:
		s.log.Error("unhandled error", "path", c.Path(), "error", err)
		apiErr = &APIError{Status: http.StatusInternalServerError, Body: ErrorBody{Code: CodeInternal, Message: "internal error"}}
	}
	if apiErr.Status >= 500 {
		s.log.Warn("request failed", "method", c.Request().Method, "path", c.Request().URL.Path, "status", apiErr.Status, "error", apiErr.Body.Message)
	}
	body := apiErr.Body
	if err := c.JSON(apiErr.Status, Envelope{Success: false, Error: &body}); err != nil {
		s.log.Warn("write error response", "error", err)
	}
}

func codeForStatus(status int) string {
	switch status {
	case http.StatusBadRequest:
		return CodeBadRequest
	case http.StatusNotFound:
		return CodeNotFound
	case http.StatusMethodNotAllowed:
		return CodeMethodNotAllowed
	case http.StatusRequestEntityTooLarge:
		return CodeTooLarge
	case http.StatusUnsupportedMediaType:
		return CodeUnsupportedMedia
	case http.StatusConflict:
		return CodeConflict
	case http.StatusUnauthorized:
		return CodeUnauthorized
	case http.StatusServiceUnavailable:
		return CodeUnavailable
	}
	if status >= 500 {
		return CodeInternal
	}
	return CodeBadRequest
}

// intParam reads an optional integer query parameter within [lo, hi];
// ok is false when it is absent. The 400 names the parameter.
func intParam(c echo.Context, name string, lo, hi int) (n int, ok bool, err error) {
	v := c.QueryParam(name)
	if v == "" {
		return 0, false, nil
	}
	n, err = strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, false, fieldErr(name, fmt.Sprintf("must be an integer from %d to %d", lo, hi))
	}
	return n, true, nil
}

// decodeJSON reads a strict JSON body into v: one object, no unknown
// fields, bounded size, JSON content type. Errors name the field.
func (s *Server) decodeJSON(c echo.Context, v any) error {
	req := c.Request()
	if ct := req.Header.Get(echo.HeaderContentType); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return &APIError{Status: http.StatusUnsupportedMediaType, Body: ErrorBody{
				Code: CodeUnsupportedMedia, Message: fmt.Sprintf("Content-Type %q is not supported: send application/json", ct)}}
		}
	}
	body := http.MaxBytesReader(c.Response(), req.Body, s.maxBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err, s.maxBody)
	}
	if err := dec.Decode(&struct{}{}); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return jsonError(err, s.maxBody)
		}
		return &APIError{Status: http.StatusBadRequest, Body: ErrorBody{Code: CodeBadRequest, Message: "request body must contain a single JSON object"}}
	}
	return nil
}

func jsonError(err error, limit int64) error {
	var mbe *http.MaxBytesError
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &mbe):
		return &APIError{Status: http.StatusRequestEntityTooLarge, Body: ErrorBody{Code: CodeTooLarge, Message: fmt.Sprintf("request body exceeds %d bytes", limit)}}
	case errors.Is(err, io.EOF):
		return &APIError{Status: http.StatusBadRequest, Body: ErrorBody{Code: CodeBadRequest, Message: "request body is empty: send a JSON object"}}
	case errors.As(err, &syn):
		return &APIError{Status: http.StatusBadRequest, Body: ErrorBody{Code: CodeBadRequest, Message: fmt.Sprintf("malformed JSON at byte %d: %v", syn.Offset, syn)}}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &APIError{Status: http.StatusBadRequest, Body: ErrorBody{Code: CodeBadRequest, Message: "malformed JSON: unexpected end of body"}}
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "body"
		}
		return fieldErr(field, fmt.Sprintf("expected %s, got JSON %s", typ.Type.String(), typ.Value))
	}
	msg := err.Error()
	if f, found := strings.CutPrefix(msg, "json: unknown field "); found {
		field := strings.Trim(f, `"`)
		return fieldErr(field, "unknown field")
	}
	return &APIError{Status: http.StatusBadRequest, Body: ErrorBody{Code: CodeBadRequest, Message: "invalid JSON: " + msg}}
}

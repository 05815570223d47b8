// Package server is the echo REST façade: it validates requests, starts
// workflows, and answers the task API from the storage backend. Every
// response uses the original orchestrator's envelope.
package server

import (
	"errors"
	"fmt"
	"net/http"

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
	CodeQuota            = "quota_exceeded"
	// CodeCorrupt: a stored record cannot be read (422); `orchestrator
	// doctor` lists such records and says what to do.
	CodeCorrupt = "corrupt_record"
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

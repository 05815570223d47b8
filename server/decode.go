package server

// Request decoding: strict JSON bodies and bounded query parameters. Every
// failure is an *APIError (400, 413 or 415) that names the offending field
// where there is one; the error handler in envelope.go renders it.

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

// jsonError maps an encoding/json (or http.MaxBytesReader) error to the
// API's answer: 413 over limit, 400 for empty, malformed or truncated
// bodies, and a field-naming validation error for wrong types and unknown
// fields.
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

// decodeOptionalJSON is decodeJSON for endpoints whose body may be left
// out: without one, v keeps its zero value.
func (s *Server) decodeOptionalJSON(c echo.Context, v any) error {
	if c.Request().ContentLength == 0 {
		return nil
	}
	return s.decodeJSON(c, v)
}

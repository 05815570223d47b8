package server

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/provisioning/orchestrator/storage"
	"github.com/provisioning/orchestrator/workflows"
)

// StepOutputPath is the route of a step's full captured output.
const StepOutputPath = "/tasks/:id/steps/:step/output"

// Headers of GET StepOutputPath's answers: which attempt the output is of
// (useful with ?stream=, whose body is the bare text) and whether its
// stream(s) lost their start.
const (
	StepAttemptHeader     = "X-Step-Attempt"
	OutputTruncatedHeader = "X-Output-Truncated"
)

// StepOutputData is the data of GET /tasks/{id}/steps/{step}/output: one
// attempt's stored output (storage.StepOutput) and the attempts stored for
// the step.
type StepOutputData struct {
	storage.StepOutput
	// Attempts lists the step's stored attempts, ascending.
	Attempts []int `json:"attempts"`
}

// stepOutput answers GET /tasks/{id}/steps/{step}/output: the latest
// attempt's stored output, ?attempt=N a given one, ?stream=stdout|stderr
// that stream alone as text/plain. 404 names what is missing (task, step
// output, attempt); 400 names the bad field.
func (s *Server) stepOutput(c echo.Context) error {
	id, err := s.taskID(c)
	if err != nil {
		return err
	}
	step := c.Param("step")
	if err := workflows.ValidateName("step", step); err != nil {
		return validationErr(err)
	}
	for k := range c.QueryParams() {
		if k != "attempt" && k != "stream" {
			return fieldErr(k, "unknown query parameter (use attempt, stream)")
		}
	}
	attempt, _, err := intParam(c, "attempt", 1, math.MaxInt32)
	if err != nil {
		return err
	}
	stream := c.QueryParam("stream")
	if _, given := c.QueryParams()["stream"]; given && stream != "stdout" && stream != "stderr" {
		return fieldErr("stream", "must be stdout or stderr")
	}
	outputs, capable := s.store.(storage.StepOutputStore)
	if !capable {
		return notFound("this task store keeps no step outputs")
	}
	ctx := c.Request().Context()
	if _, err := s.store.Get(ctx, id); err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return notFound(fmt.Sprintf("task %s not found", id))
		}
		return s.storeErr(err)
	}
	attempts, err := outputs.ListStepOutputAttempts(ctx, id, step)
	if err != nil {
		return s.storeErr(err)
	}
	if len(attempts) == 0 {
		return notFound(fmt.Sprintf("step %q of task %s has no stored output", step, id))
	}
	if attempt == 0 {
		attempt = attempts[len(attempts)-1]
	} else if !slices.Contains(attempts, attempt) {
		return notFound(fmt.Sprintf("attempt %d of step %q of task %s has no stored output (stored attempts: %v)", attempt, step, id, attempts))
	}
	o, err := outputs.GetStepOutput(ctx, id, step, attempt)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			// Deleted since the listing.
			return notFound(fmt.Sprintf("attempt %d of step %q of task %s has no stored output", attempt, step, id))
		}
		return s.storeErr(err)
	}
	h := c.Response().Header()
	h.Set(StepAttemptHeader, strconv.Itoa(o.Attempt))
	switch stream {
	case "stdout":
		h.Set(OutputTruncatedHeader, strconv.FormatBool(o.StdoutTruncated))
		return c.Blob(http.StatusOK, echo.MIMETextPlainCharsetUTF8, []byte(o.Stdout))
	case "stderr":
		h.Set(OutputTruncatedHeader, strconv.FormatBool(o.StderrTruncated))
		return c.Blob(http.StatusOK, echo.MIMETextPlainCharsetUTF8, []byte(o.Stderr))
	}
	h.Set(OutputTruncatedHeader, strconv.FormatBool(o.StdoutTruncated || o.StderrTruncated))
	return ok(c, http.StatusOK, StepOutputData{StepOutput: o, Attempts: attempts})
}

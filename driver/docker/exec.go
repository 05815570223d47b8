package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"
	"github.com/provisioning/orchestrator/driver"
	"github.com/provisioning/orchestrator/internal/tailbuf"
)

// ExecResult is the outcome of one command run in a container.
type ExecResult struct {
	// ExitCode is the command's; -1 when it timed out or its status is
	// unknown. The engine reports 126/127 for a command that cannot be run
	// or is not found.
	ExitCode int `json:"exit_code"`
	// Stdout and Stderr are the last 64 KiB (MaxOutputBytes) of each
	// stream, kept separate.
	Stdout          string `json:"stdout"`
	Stderr          string `json:"stderr"`
	StdoutTruncated bool   `json:"stdout_truncated,omitempty"`
	StderrTruncated bool   `json:"stderr_truncated,omitempty"`
	// TimedOut is set when the timeout expired before the command ended.
	TimedOut  bool      `json:"timed_out"`
	StartedAt time.Time `json:"started_at"`
	// Duration is from starting the exec to its end (or the timeout);
	// DurationMS is the same in milliseconds, for the REST API.
	Duration   time.Duration `json:"duration_ns"`
	DurationMS int64         `json:"duration_ms"`
}

// Exec runs argv in a running container as the image's user, exactly as
// given (no shell: pass "sh", "-c", script for one), with timeout
// (DefaultExecTimeout, 10 min, when zero or negative), and returns its exit
// code and its stdout/stderr separately, each bounded to its last 64 KiB.
// A non-zero exit is a result, not an error; errors are for commands that
// could not be run at all (container missing or not running, engine down)
// and for ctx being done.
//
// On timeout the result has TimedOut=true and ExitCode -1. The command itself
// is NOT killed: the Docker API has no call to signal an exec'd process, and
// an image may have no kill/pkill to do it from inside. It runs on until it
// exits or the container is removed (environment cleanup does that), so test
// commands should bound themselves (e.g. `timeout 30 ...` where the image has it).
func (r *Runtime) Exec(ctx context.Context, containerID string, argv []string, timeout time.Duration) (ExecResult, error) {
	return r.ExecEnv(ctx, containerID, argv, nil, timeout)
}

// ExecEnv is Exec with env (KEY=VALUE entries) added to the container's
// environment for this command only: how the orchestrator hands a
// provisioning run inside a node its variables without a shell.
func (r *Runtime) ExecEnv(ctx context.Context, containerID string, argv, env []string, timeout time.Duration) (ExecResult, error) {
	if len(argv) == 0 {
		return ExecResult{}, errors.New("exec: empty command")
	}
	if timeout <= 0 {
		timeout = DefaultExecTimeout
	}
	created, err := r.Client.ContainerExecCreate(ctx, containerID, container.ExecOptions{
		Cmd:          argv,
		Env:          env,
		AttachStdout: true,
		AttachStderr: true,
	})
	if err != nil {
		return ExecResult{}, fmt.Errorf("exec %q in container %s: %w", argv, shortID(containerID), err)
	}
	start := time.Now()
	// Attaching starts the exec.
	hijack, err := r.Client.ContainerExecAttach(ctx, created.ID, container.ExecAttachOptions{})
	if err != nil {
		return ExecResult{}, fmt.Errorf("start exec %q in container %s: %w", argv, shortID(containerID), err)
	}
	defer hijack.Close()

	stdout, stderr := tailbuf.New(MaxOutputBytes), tailbuf.New(MaxOutputBytes)
	copied := make(chan error, 1)
	go func() {
		_, err := stdcopy.StdCopy(stdout, stderr, hijack.Reader)
		copied <- err
	}()

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	ticker := time.NewTicker(driver.HeartbeatInterval)
	defer ticker.Stop()
	hb := driver.NewHeartbeater(ctx)
	var copyErr error
	timedOut, copyDone := false, false
wait:
	for {
		select {
		case copyErr = <-copied:
			copyDone = true
			break wait
		case <-ticker.C:
			hb.Beat("exec")
		case <-timer.C:
			timedOut = true
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	if !copyDone {
		// Timed out or ctx done. Closing the connection ends the copy; wait for it so the buffers
		// are no longer written when read below.
		hijack.Close()
		copyErr = <-copied // the error of a closed connection; not reported
	}
	result := ExecResult{
		ExitCode:        -1,
		Stdout:          stdout.String(),
		Stderr:          stderr.String(),
		StdoutTruncated: stdout.Truncated(),
		StderrTruncated: stderr.Truncated(),
		TimedOut:        timedOut,
		StartedAt:       start,
	}
	result.setDuration(time.Since(start))
	if err := ctx.Err(); err != nil && !timedOut {
		return result, fmt.Errorf("exec %q in container %s: %w", argv, shortID(containerID), err)
	}
	if timedOut {
		r.logger().Warn("exec timed out; the command keeps running in the container",
			"container", shortID(containerID), "argv", argv, "timeout", timeout)
		return result, nil
	}
	if copyErr != nil {
		return result, fmt.Errorf("exec %q in container %s: reading output: %w", argv, shortID(containerID), copyErr)
	}
	code, err := r.execExitCode(ctx, created.ID)
	if err != nil {
		return result, fmt.Errorf("exec %q in container %s: %w", argv, shortID(containerID), err)
	}
	result.ExitCode = code
	result.setDuration(time.Since(start))
	return result, nil
}

func (e *ExecResult) setDuration(d time.Duration) {
	e.Duration = d
	e.DurationMS = d.Milliseconds()
}

// execExitCode waits for the engine to record the exec's end: its output
// stream can close a moment before inspect stops reporting Running.
func (r *Runtime) execExitCode(ctx context.Context, execID string) (int, error) {
	deadline := time.Now().Add(execExitPollTimeout)
	for delay := 5 * time.Millisecond; ; delay = min(2*delay, 200*time.Millisecond) {
		ins, err := r.Client.ContainerExecInspect(ctx, execID)
		if err != nil {
			return -1, fmt.Errorf("inspect exec: %w", err)
		}
		if !ins.Running {
			return ins.ExitCode, nil
		}
		if time.Now().After(deadline) {
			return -1, fmt.Errorf("exec output ended but the engine still reports it running after %s", execExitPollTimeout)
		}
		select {
		case <-ctx.Done():
			return -1, ctx.Err()
		case <-time.After(delay):
		}
	}
}

// Logs returns the last tail lines (DefaultLogTail, 1000, when zero or
// negative) of the container's output, each line prefixed with its RFC 3339
// timestamp, demultiplexed into stdout and stderr and bounded to the last
// 64 KiB (MaxOutputBytes) of each. A container created with a TTY has a
// single stream, returned as stdout.
func (r *Runtime) Logs(ctx context.Context, containerID string, tail int) (stdout, stderr string, err error) {
	if tail <= 0 {
		tail = DefaultLogTail
	}
	c, err := r.Client.ContainerInspect(ctx, containerID)
	if err != nil {
		return "", "", fmt.Errorf("logs of container %s: %w", shortID(containerID), err)
	}
	rc, err := r.Client.ContainerLogs(ctx, containerID, container.LogsOptions{
		ShowStdout: true,
		ShowStderr: true,
		Timestamps: true,
		Tail:       strconv.Itoa(tail),
	})
	if err != nil {
		return "", "", fmt.Errorf("logs of container %s: %w", shortID(containerID), err)
	}
	defer rc.Close()
	out, errOut := tailbuf.New(MaxOutputBytes), tailbuf.New(MaxOutputBytes)
	if c.Config != nil && c.Config.Tty {
		_, err = io.Copy(out, rc)
	} else {
		_, err = stdcopy.StdCopy(out, errOut, rc)
	}
	if err != nil {
		return out.String(), errOut.String(), fmt.Errorf("reading logs of container %s: %w", shortID(containerID), err)
	}
	return out.String(), errOut.String(), nil
}

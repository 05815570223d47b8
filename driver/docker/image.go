package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"
	"github.com/provisioning/orchestrator/driver"
)

// EnsureImage makes ref available on the engine: an image already present
// locally is used as is (no pull, so locally built images work offline);
// otherwise it is pulled, draining the progress stream, which is where pull
// failures are reported. If the pull fails too, the error is an *ImageError
// (see IsImageMissing). Errors talking to the engine are returned as they
// are (retryable).
func (r *Runtime) EnsureImage(ctx context.Context, ref string) error {
	if ref == "" {
		return errors.New("ensure image: empty image reference")
	}
	if _, err := r.Client.ImageInspect(ctx, ref); err == nil {
		return nil
	} else if !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("inspect image %s: %w", ref, err)
	}
	r.logger().Info("pulling image", "image", ref)
	if err := r.pull(ctx, ref); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("pull image %s: %w", ref, ctx.Err())
		}
		return &driver.ImageError{Ref: ref, Err: err}
	}
	if _, err := r.Client.ImageInspect(ctx, ref); err != nil {
		if cerrdefs.IsNotFound(err) {
			return &driver.ImageError{Ref: ref, Err: fmt.Errorf("pull reported success but the image is absent: %w", err)}
		}
		return fmt.Errorf("inspect image %s after pull: %w", ref, err)
	}
	return nil
}

// pull pulls ref and reads the progress stream to its end, returning the
// first error message in it.
func (r *Runtime) pull(ctx context.Context, ref string) error {
	// A registry can keep a pull waiting long before (and between)
	// progress messages.
	defer driver.KeepAlive(ctx, "pull "+ref)()
	rc, err := r.Client.ImagePull(ctx, ref, image.PullOptions{})
	if err != nil {
		return err
	}
	defer rc.Close()
	hb := driver.NewHeartbeater(ctx)
	dec := json.NewDecoder(rc)
	for {
		var msg struct {
			Error       string `json:"error"`
			ErrorDetail *struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&msg); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("reading pull progress: %w", err)
		}
		if msg.ErrorDetail != nil && msg.ErrorDetail.Message != "" {
			return errors.New(msg.ErrorDetail.Message)
		}
		if msg.Error != "" {
			return errors.New(msg.Error)
		}
		hb.Beat("pull " + ref)
	}
}

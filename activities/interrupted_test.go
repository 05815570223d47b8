package activities

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestInterruptedSaysWhy(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.Same(t, context.Canceled, interrupted(ctx), "a plain cancellation stays what it is")

	ctx, cancelCause := context.WithCancelCause(context.Background())
	cancelCause(errors.New("worker is shutting down"))
	err := interrupted(ctx)
	require.ErrorIs(t, err, context.Canceled, "Temporal must still see a cancellation")
	assert.EqualError(t, err, "step interrupted on this worker: worker is shutting down: context canceled")
}

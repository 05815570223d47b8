package activities

import (
	"context"
	"fmt"

	"go.temporal.io/sdk/temporal"

	"github.com/provisioning/orchestrator/storage"
)

// ProjectTasks projects several tasks in one call: a batch writes the
// records of its operations' tasks (Pending before they start, Cancelled
// when they never will) with it. Like ProjectTask, a write older than the
// stored version is ignored, so a task's own workflow always wins.
func (a *Activities) ProjectTasks(ctx context.Context, tasks []storage.Task) error {
	for _, t := range tasks {
		if err := a.ProjectTask(ctx, t); err != nil {
			return err
		}
	}
	return nil
}

// RecordAudit appends e to the audit trail with e.Actor as the actor (a
// batch's approver). The entry's ID makes a retried append a no-op.
func (a *Activities) RecordAudit(ctx context.Context, e storage.AuditEntry) error {
	if err := storage.ValidateID(e.TaskID); err != nil {
		return temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeInvalidTaskID, err)
	}
	if err := a.Store.AppendAudit(storage.WithActor(ctx, e.Actor), e); err != nil {
		return fmt.Errorf("record audit %s of task %s: %w", e.Action, e.TaskID, err)
	}
	return nil
}

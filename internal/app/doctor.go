package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"

	"github.com/provisioning/orchestrator/storage"
)

// Problem is one thing `orchestrator doctor` found.
type Problem struct {
	// What is wrong, naming the record.
	What string
	// Where the record lives (a file path, a database record), if known.
	Where string
	// Fix says what to do about it.
	Fix string
}

// Diagnose reads every task record of the store the configuration names
// (the service's own --storage-type, --data-dir, --surrealdb-* flags or
// their ORCHESTRATOR_* variables) and reports those it cannot read. It
// changes nothing.
func Diagnose(ctx context.Context, cfg Config, log *slog.Logger) (checked int, problems []Problem, err error) {
	sc := cfg.StoreConfig()
	store, err := OpenStore(ctx, sc, log)
	if err != nil {
		return 0, nil, fmt.Errorf("open the %s store: %w", sc.Type, err)
	}
	defer store.Close()
	ids, err := store.IDs(ctx)
	if err != nil {
		return 0, nil, fmt.Errorf("list task ids: %w", err)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return checked, problems, err
		}
		checked++
		_, err := store.Get(ctx, id)
		switch {
		case err == nil, errors.Is(err, storage.ErrNotFound): // deleted meanwhile
		case errors.Is(err, storage.ErrCorrupt):
			p := Problem{What: fmt.Sprintf("task %s cannot be read: %v", id, err)}
			if sc.Type == StorageFilesystem {
				p.Where = filepath.Join(sc.DataDir, "queue.rkvs", "tasks", id+".json")
				p.Fix = "move the file aside (keep it for inspection) or restore it from a backup; while it is corrupt, GET /tasks/" + id +
					" answers 422 and the task list skips it. If its workflow still runs (`temporal workflow describe -w " + id +
					"`), its next transition rewrites the record."
			} else {
				p.Where = "record task:" + id
				p.Fix = "delete or repair the record in SurrealDB (or restore it from a backup); while it is corrupt, GET /tasks/" + id +
					" answers 422 and the task list skips it. If its workflow still runs, its next transition rewrites it."
			}
			problems = append(problems, p)
		default:
			return checked, problems, fmt.Errorf("read task %s: %w", id, err)
		}
	}
	return checked, problems, nil
}

// RunDoctor is `orchestrator doctor`: Diagnose, print each problem and a
// summary to out, and fail (exit 1) when there is any.
func RunDoctor(ctx context.Context, cfg Config, log *slog.Logger, out io.Writer) error {
	checked, problems, err := Diagnose(ctx, cfg, log)
	if err != nil {
		return err
	}
	for _, p := range problems {
		fmt.Fprintf(out, "PROBLEM %s\n  where: %s\n  fix:   %s\n", p.What, p.Where, p.Fix)
	}
	fmt.Fprintf(out, "checked %d task records in the %s store: %d problem(s)\n", checked, cfg.StoreConfig().Type, len(problems))
	if len(problems) > 0 {
		return fmt.Errorf("%d problem(s) found", len(problems))
	}
	return nil
}

package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/provisioning/orchestrator/migrate"
	"github.com/provisioning/orchestrator/storage"
)

// ValidateSide is what `orchestrator migrate --validate` found on one side.
type ValidateSide struct {
	// Store names the store (type, directory or server, namespace, database).
	Store string `json:"store"`
	Type  string `json:"type"`
	// Reachable: the data directory exists, or the database answered (signed in).
	Reachable bool `json:"reachable"`
	// Schema: the store's layout is there (filesystem: queue.rkvs/tasks;
	// surrealdb-server: the tables task, task_key, audit, step_output;
	// surrealdb-embedded: orchestrator.db). Missing lists what is not.
	Schema  bool     `json:"schema"`
	Missing []string `json:"missing"`
	// Tasks counted (when reachable and the schema is present).
	Tasks int `json:"tasks"`
	// Error says why it is not reachable or could not be read.
	Error string `json:"error,omitempty"`
}

// ValidateReport is the outcome of `orchestrator migrate --validate`: both
// sides, and how the target compares with the source record by record (a
// dry run of the migration: nothing is written).
type ValidateReport struct {
	From ValidateSide `json:"from"`
	To   ValidateSide `json:"to"`
	// Compared: both sides were read and compared.
	Compared bool `json:"compared"`
	// Identical tasks (same content checksum in the target).
	Identical int `json:"identical"`
	// ToCopy tasks missing or different in the target; AuditToCopy audit
	// entries missing there.
	ToCopy      int `json:"to_copy"`
	AuditToCopy int `json:"audit_to_copy"`
	// TargetExtra: tasks in the target that the source does not have.
	TargetExtra []string `json:"target_extra"`
	// Mismatches a migration could not resolve (e.g. a newer target version).
	Mismatches []migrate.Mismatch `json:"mismatches"`
	// InSync: both reachable with the schema, equal counts, every source
	// task and audit entry identical in the target.
	InSync   bool          `json:"in_sync"`
	Duration time.Duration `json:"duration_ns"`
}

// ErrNotInSync is wrapped by the error of a validation that found the
// stores unreachable, without their schema, or different.
var ErrNotInSync = errors.New("validation failed")

// schemaCheckers open a store type read-only, without defining its schema,
// and report the schema parts it lacks (registered by the SurrealDB backend).
var schemaCheckers = map[string]func(ctx context.Context, sc StoreConfig, log *slog.Logger) (storage.Store, []string, error){}

// ValidateStores compares the two stores of cfg without writing to either (see
// ValidateReport). The error is nil only when they are in sync; otherwise
// it wraps ErrNotInSync (or is the failure to run), and the report says
// as much as was found.
func ValidateStores(ctx context.Context, cfg MigrateConfig, log *slog.Logger) (ValidateReport, error) {
	start := time.Now()
	var rep ValidateReport
	src, srcErr := validateOpen(ctx, cfg.From, &rep.From, "from", log.With("store", "source"))
	if src != nil {
		defer src.Close()
	}
	dst, dstErr := validateOpen(ctx, cfg.To, &rep.To, "to", log.With("store", "target"))
	if dst != nil {
		defer dst.Close()
	}
	if src == nil || dst == nil {
		rep.Duration = time.Since(start)
		return rep, fmt.Errorf("%w: %w", ErrNotInSync, errors.Join(srcErr, dstErr))
	}
	mrep, err := migrate.Run(ctx, src, dst, migrate.Options{
		DryRun:     true,
		SourceName: rep.From.Store,
		TargetName: rep.To.Store,
		Logger:     log,
	})
	rep.Duration = time.Since(start)
	if err != nil && !errors.Is(err, migrate.ErrMismatch) {
		return rep, err
	}
	rep.Compared = true
	rep.From.Tasks, rep.To.Tasks = mrep.Source, mrep.Target
	rep.Identical, rep.ToCopy, rep.AuditToCopy = mrep.Skipped, mrep.Copied, mrep.AuditCopied
	rep.TargetExtra = nonNil(mrep.TargetExtra)
	rep.Mismatches = mrep.Mismatches
	if rep.Mismatches == nil {
		rep.Mismatches = []migrate.Mismatch{}
	}
	rep.InSync = rep.From.Tasks == rep.To.Tasks && rep.ToCopy == 0 && rep.AuditToCopy == 0 &&
		len(rep.Mismatches) == 0 && len(rep.TargetExtra) == 0
	if !rep.InSync {
		return rep, fmt.Errorf("%w: the target differs from the source (%d tasks to copy, %d audit entries to copy, %d only in the target, %d mismatches)",
			ErrNotInSync, rep.ToCopy, rep.AuditToCopy, len(rep.TargetExtra), len(rep.Mismatches))
	}
	return rep, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// validateOpen checks one side (reachable, schema) and opens it for
// reading, filling side; nil when it cannot be compared (err says why,
// naming the side's flag). A store whose schema is missing is not opened:
// opening would create it.
func validateOpen(ctx context.Context, sc StoreConfig, side *ValidateSide, flagName string, log *slog.Logger) (storage.Store, error) {
	side.Store, side.Type, side.Missing = storeName(sc), sc.Type, []string{}
	fail := func(err error) (storage.Store, error) {
		side.Error = err.Error()
		return nil, fmt.Errorf("--%s %s: %w", flagName, side.Store, err)
	}
	switch sc.Type {
	case StorageFilesystem, StorageSurrealEmbedded:
		fi, err := os.Stat(sc.DataDir)
		if err != nil || !fi.IsDir() {
			return fail(fmt.Errorf("data directory %s does not exist", sc.DataDir))
		}
		side.Reachable = true
		inside := filepath.FromSlash(storage.TasksSubdir)
		if sc.Type == StorageSurrealEmbedded {
			inside = "orchestrator.db"
		}
		if _, err := os.Stat(filepath.Join(sc.DataDir, inside)); err != nil {
			side.Missing = append(side.Missing, filepath.ToSlash(inside))
			return fail(fmt.Errorf("no %s store in %s (no %s)", sc.Type, sc.DataDir, filepath.ToSlash(inside)))
		}
		side.Schema = true
		st, err := OpenStore(ctx, sc, log)
		if err != nil {
			side.Reachable = false
			return fail(err)
		}
		return st, nil
	default:
		check, ok := schemaCheckers[sc.Type]
		if !ok {
			return fail(fmt.Errorf("--storage-type %q cannot be validated in this build", sc.Type))
		}
		st, missing, err := check(ctx, sc, log)
		if st == nil {
			return fail(err)
		}
		side.Reachable = true
		if err != nil {
			st.Close()
			return fail(err)
		}
		if len(missing) > 0 {
			side.Missing = missing
			st.Close()
			return fail(fmt.Errorf("schema missing: no table %s", strings.Join(missing, ", ")))
		}
		side.Schema = true
		return st, nil
	}
}

// WriteText prints the report for people.
func (r ValidateReport) WriteText(w io.Writer) {
	for _, s := range []struct {
		role string
		side ValidateSide
	}{{"source", r.From}, {"target", r.To}} {
		fmt.Fprintf(w, "%s: %s\n", s.role, s.side.Store)
		fmt.Fprintf(w, "  reachable: %v\n  schema:    %v", s.side.Reachable, s.side.Schema)
		if len(s.side.Missing) > 0 {
			fmt.Fprintf(w, " (missing: %s)", strings.Join(s.side.Missing, ", "))
		}
		fmt.Fprintln(w)
		if r.Compared {
			fmt.Fprintf(w, "  tasks:     %d\n", s.side.Tasks)
		}
		if s.side.Error != "" {
			fmt.Fprintf(w, "  error:     %s\n", s.side.Error)
		}
	}
	if r.Compared {
		fmt.Fprintf(w, "identical: %d tasks; to copy: %d tasks, %d audit entries; only in the target: %d; mismatches: %d\n",
			r.Identical, r.ToCopy, r.AuditToCopy, len(r.TargetExtra), len(r.Mismatches))
		for i, m := range r.Mismatches {
			if i == 50 {
				fmt.Fprintf(w, "  ... and %d more\n", len(r.Mismatches)-50)
				break
			}
			fmt.Fprintf(w, "  %s: %s\n", m.ID, m.Reason)
		}
	}
	verdict := "NOT IN SYNC"
	if r.InSync {
		verdict = "IN SYNC"
	}
	fmt.Fprintf(w, "validation: %s (%s)\n", verdict, r.Duration.Round(time.Millisecond))
}

// writeJSON prints v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

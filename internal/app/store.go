package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/provisioning/orchestrator/storage"
)

// StoreConfig selects and configures one storage backend. The serve/api/
// worker modes build it from --storage-type and the --surrealdb-* flags;
// migrate builds one for --from and one for --to.
type StoreConfig struct {
	// Type: filesystem, surrealdb-embedded or surrealdb-server.
	Type string
	// DataDir holds filesystem tasks and the embedded SurrealDB's data
	// ({DataDir}/orchestrator.db).
	DataDir string
	// SurrealURL of a SurrealDB server (ws://, wss://, http://, https://).
	SurrealURL string
	// SurrealNamespace, default "orchestrator".
	SurrealNamespace string
	// SurrealDatabase, default "tasks".
	SurrealDatabase string
	// SurrealUsername and SurrealPassword sign in as a root user.
	SurrealUsername string
	SurrealPassword string
	// SurrealPasswordFile, when set, holds the password (read when the
	// store opens; trailing newlines dropped).
	SurrealPasswordFile string
	// SurrealPath is the `surreal`-compatible executable the embedded mode
	// starts, default "surreal".
	SurrealPath string
}

// Storage types.
const (
	StorageFilesystem        = "filesystem"
	StorageSurrealEmbedded   = "surrealdb-embedded"
	StorageSurrealServer     = "surrealdb-server"
	DefaultSurrealNamespace  = "orchestrator"
	DefaultSurrealDatabase   = "tasks"
	DefaultSurrealExecutable = "surreal"
)

// StoreConfig is the configuration's own backend: --storage-type and
// --data-dir with the --surrealdb-* settings.
func (c Config) StoreConfig() StoreConfig {
	sc := c.Store
	sc.Type = c.StorageType
	sc.DataDir = c.DataDir
	return sc
}

// openers lets backends register themselves (the SurrealDB ones live in
// their own files) without this file importing them all.
var openers = map[string]func(ctx context.Context, sc StoreConfig, log *slog.Logger) (storage.Store, error){
	StorageFilesystem: func(_ context.Context, sc StoreConfig, log *slog.Logger) (storage.Store, error) {
		fs, err := storage.NewFilesystem(sc.DataDir)
		if err != nil {
			return nil, err
		}
		return fs.WithLogger(log), nil
	},
}

// builtWithout marks the storage types whose opener only explains that
// this binary was built without them (store_nosurreal.go): they stay in
// openers, so asking for one fails with that explanation, but they are not
// among the backends `orchestrator version` lists.
var builtWithout = map[string]bool{}

// OpenStore opens the backend sc describes. Closing the store also stops
// anything it started (the embedded SurrealDB process).
func OpenStore(ctx context.Context, sc StoreConfig, log *slog.Logger) (storage.Store, error) {
	if log == nil {
		log = slog.Default()
	}
	open, ok := openers[sc.Type]
	if !ok {
		return nil, fmt.Errorf("--storage-type %q is not supported (use filesystem, surrealdb-embedded or surrealdb-server)", sc.Type)
	}
	if sc.SurrealPasswordFile != "" && sc.SurrealPassword == "" {
		b, err := os.ReadFile(sc.SurrealPasswordFile)
		if err != nil {
			return nil, fmt.Errorf("--surrealdb-password-file: %w", err)
		}
		sc.SurrealPassword = strings.TrimRight(string(b), "\r\n")
	}
	if sc.DataDir != "" {
		abs, err := filepath.Abs(sc.DataDir)
		if err == nil {
			sc.DataDir = abs
		}
	}
	st, err := open(ctx, sc, log)
	if err != nil {
		return nil, fmt.Errorf("--storage-type %s: %w", sc.Type, err)
	}
	return st, nil
}

// Command orchestrator runs the Provisioning Orchestrator: `orchestrator`
// (or `orchestrator serve`) starts everything in one process on embedded
// defaults; `orchestrator worker` and `orchestrator api` run the halves
// against an external Temporal cluster. Run with -h for flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/provisioning/orchestrator/internal/app"
)

func main() {
	os.Exit(run())
}

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.Run(ctx, os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "orchestrator:", err)
		return 1
	}
	return 0
}

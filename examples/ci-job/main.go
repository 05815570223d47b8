// Command ci-job is an example CI step that creates servers through the
// orchestrator's Temporal workflows (package sdk) instead of the REST API.
// It starts a ServerCreate task, waits for it, prints the task as JSON and
// exits non-zero unless the task completed.
//
//	go run ./examples/ci-job --infra prod-stack --settings settings.k --servers web-01,web-02
//
// --temporal-address defaults to the orchestrator's embedded development
// server (127.0.0.1:7233); give a real cluster's frontend otherwise.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/provisioning/orchestrator/sdk"
	"github.com/provisioning/orchestrator/workflows"
)

func main() {
	os.Exit(run())
}

func run() int {
	addr := flag.String("temporal-address", sdk.DefaultHostPort, "Temporal frontend host:port")
	namespace := flag.String("namespace", sdk.DefaultNamespace, "Temporal namespace")
	taskQueue := flag.String("task-queue", workflows.DefaultTaskQueue, "task queue the orchestrator's workers poll")
	infra := flag.String("infra", "", "infrastructure name")
	servers := flag.String("servers", "", "comma-separated server names; empty: every server the settings define")
	settings := flag.String("settings", "", "path of the infra's settings file")
	check := flag.Bool("check", false, "dry run (--check)")
	timeout := flag.Duration("timeout", time.Hour, "give up (and cancel the task) after this long")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	c, err := sdk.Dial(ctx, *addr, *namespace)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ci-job:", err)
		return 2
	}
	defer c.Close()
	c.TaskQueue = *taskQueue

	var names []string
	for s := range strings.SplitSeq(*servers, ",") {
		if s = strings.TrimSpace(s); s != "" {
			names = append(names, s)
		}
	}
	r, err := c.StartServerCreate(ctx, *infra, *settings, names, sdk.WithCheckMode(*check))
	if err != nil {
		var fe *workflows.FieldError
		if errors.As(err, &fe) {
			fmt.Fprintf(os.Stderr, "ci-job: invalid %s: %s\n", fe.Field, fe.Message)
		} else {
			fmt.Fprintln(os.Stderr, "ci-job:", err)
		}
		return 2
	}
	fmt.Fprintln(os.Stderr, "ci-job: started task", r.ID())

	task, err := r.Wait(ctx)
	if ctx.Err() != nil {
		// Interrupted or timed out: do not leave the task running.
		cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer ccancel()
		if cerr := r.Cancel(cctx); cerr != nil {
			fmt.Fprintln(os.Stderr, "ci-job:", cerr)
		}
	}
	out, _ := json.MarshalIndent(task, "", "  ")
	fmt.Println(string(out))
	if err != nil {
		fmt.Fprintln(os.Stderr, "ci-job:", err)
		return 1
	}
	return 0
}

package devserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
)

// searchAttributeTimeout bounds registering the search attributes of a
// database made before they existed, including the wait for the server's
// namespace cache to see them.
const searchAttributeTimeout = 30 * time.Second

// ensureSearchAttributes adds to each namespace the attributes in want it
// lacks and waits until queries accept them. A database created with them
// (prepareSQLite) has them all: then this is one list call per namespace.
func ensureSearchAttributes(ctx context.Context, address string, namespaces []string, want map[string]enumspb.IndexedValueType, logger *slog.Logger) error {
	c, err := client.DialContext(ctx, client.Options{HostPort: address, Logger: sdklog.NewStructuredLogger(logger.With("component", "temporal-sdk"))})
	if err != nil {
		return fmt.Errorf("devserver: connect to register search attributes: %w", err)
	}
	defer c.Close()
	for _, ns := range namespaces {
		resp, err := c.OperatorService().ListSearchAttributes(ctx, &operatorservice.ListSearchAttributesRequest{Namespace: ns})
		if err != nil {
			return fmt.Errorf("devserver: list search attributes of namespace %q: %w", ns, err)
		}
		add := map[string]enumspb.IndexedValueType{}
		for _, name := range slices.Sorted(maps.Keys(want)) {
			got, ok := resp.GetCustomAttributes()[name]
			switch {
			case !ok:
				add[name] = want[name]
			case got != want[name]:
				// Registered by hand with another type; changing it would
				// break the workflows that use it, so say so and stop.
				return fmt.Errorf("devserver: search attribute %s of namespace %q is %s, not %s: remove it (temporal operator search-attribute remove --name %s) or use another --data-dir",
					name, ns, got, want[name], name)
			}
		}
		if len(add) == 0 {
			continue
		}
		if _, err := c.OperatorService().AddSearchAttributes(ctx, &operatorservice.AddSearchAttributesRequest{Namespace: ns, SearchAttributes: add}); err != nil {
			return fmt.Errorf("devserver: add search attributes %v to namespace %q: %w", slices.Sorted(maps.Keys(add)), ns, err)
		}
		if err := waitQueryable(ctx, c, ns, add); err != nil {
			return err
		}
		logger.Info("embedded temporal: search attributes added to an existing database", "namespace", ns, "attributes", slices.Sorted(maps.Keys(add)))
	}
	return nil
}

// waitQueryable polls a count query naming every attribute in attrs until
// the server accepts it: it rejects unknown attributes until its namespace
// cache refreshes (every 2 s by default), and so would a workflow start.
func waitQueryable(ctx context.Context, c client.Client, ns string, attrs map[string]enumspb.IndexedValueType) error {
	var conds []string
	for _, name := range slices.Sorted(maps.Keys(attrs)) {
		switch attrs[name] {
		case enumspb.INDEXED_VALUE_TYPE_INT, enumspb.INDEXED_VALUE_TYPE_DOUBLE:
			conds = append(conds, name+" = 0")
		case enumspb.INDEXED_VALUE_TYPE_BOOL:
			conds = append(conds, name+" = false")
		case enumspb.INDEXED_VALUE_TYPE_KEYWORD, enumspb.INDEXED_VALUE_TYPE_TEXT:
			conds = append(conds, name+" = ''")
		}
	}
	if len(conds) == 0 {
		return nil
	}
	query := strings.Join(conds, " AND ")
	for {
		_, err := c.WorkflowService().CountWorkflowExecutions(ctx, &workflowservice.CountWorkflowExecutionsRequest{Namespace: ns, Query: query})
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("devserver: search attributes of namespace %q still unknown to queries", ns), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

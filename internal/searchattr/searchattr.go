// Package searchattr defines the custom Temporal search attributes every
// orchestrator workflow carries (Infra, Priority; Types is what the embedded
// server registers) and detects whether a cluster has them, so that
// `temporal workflow list --query 'Infra="production"'` and the Web UI's
// search find tasks by what they are about.
//
// A workflow started with a search attribute the namespace does not define
// is rejected by Temporal, so starters set only the attributes Detect found
// (Set.Start), and the workflows upsert only those their start carried.
package searchattr

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
)

// Names of the custom search attributes.
const (
	// InfraName is the Keyword attribute holding a task's infra (a test
	// environment's infra, or "default" when it names none).
	InfraName = "Infra"
	// PriorityName is the Int attribute holding a task's priority, 1 (most
	// urgent) to 5; kept current when an operator changes it.
	PriorityName = "Priority"
)

// Typed keys of the attributes, for starting, upserting and reading them.
var (
	// Infra is the key of InfraName.
	Infra = temporal.NewSearchAttributeKeyKeyword(InfraName)
	// Priority is the key of PriorityName.
	Priority = temporal.NewSearchAttributeKeyInt64(PriorityName)
)

// Types maps each custom attribute to the type it must be registered with.
func Types() map[string]enumspb.IndexedValueType {
	return map[string]enumspb.IndexedValueType{
		InfraName:    enumspb.INDEXED_VALUE_TYPE_KEYWORD,
		PriorityName: enumspb.INDEXED_VALUE_TYPE_INT,
	}
}

// Set says which of the custom attributes a namespace defines with the
// right type; the zero Set has none, and starts set none.
type Set struct {
	// Infra is true when InfraName is a Keyword attribute there.
	Infra bool
	// Priority is true when PriorityName is an Int attribute there.
	Priority bool
}

// All is the Set with every attribute, as the embedded server has them.
var All = Set{Infra: true, Priority: true}

// Start is the search attributes of a workflow start for a task of infra
// with priority (1..5): those s has.
func (s Set) Start(infra string, priority int) temporal.SearchAttributes {
	var upd []temporal.SearchAttributeUpdate
	if s.Infra && infra != "" {
		upd = append(upd, Infra.ValueSet(infra))
	}
	if s.Priority && priority > 0 {
		upd = append(upd, Priority.ValueSet(int64(priority)))
	}
	return temporal.NewSearchAttributes(upd...)
}

// Detect lists namespace's search attributes (one ListSearchAttributes
// call) and reports which custom attributes it has and the names of those
// it lacks or has with another type.
func Detect(ctx context.Context, c client.Client, namespace string) (Set, []string, error) {
	resp, err := c.OperatorService().ListSearchAttributes(ctx, &operatorservice.ListSearchAttributesRequest{Namespace: namespace})
	if err != nil {
		return Set{}, slices.Sorted(maps.Keys(Types())), fmt.Errorf("list search attributes of namespace %q: %w", namespace, err)
	}
	var s Set
	var missing []string
	for name, want := range Types() {
		got, ok := resp.GetCustomAttributes()[name]
		if !ok || got != want {
			missing = append(missing, name)
			continue
		}
		switch name {
		case InfraName:
			s.Infra = true
		case PriorityName:
			s.Priority = true
		}
	}
	slices.Sort(missing)
	return s, missing, nil
}

// CreateCommand is the temporal CLI command that registers the attributes
// named in missing on namespace at address, for a start-up warning.
func CreateCommand(address, namespace string, missing []string) string {
	types := Types()
	var b strings.Builder
	fmt.Fprintf(&b, "temporal operator search-attribute create --address %s --namespace %s", address, namespace)
	for _, name := range missing {
		t, ok := types[name]
		if !ok {
			continue
		}
		// The CLI's type names: Keyword, Int.
		fmt.Fprintf(&b, " --name %s --type %s", name, cliType(t))
	}
	return b.String()
}

func cliType(t enumspb.IndexedValueType) string {
	switch t {
	case enumspb.INDEXED_VALUE_TYPE_KEYWORD:
		return "Keyword"
	case enumspb.INDEXED_VALUE_TYPE_INT:
		return "Int"
	default:
		return strings.TrimPrefix(t.String(), "INDEXED_VALUE_TYPE_")
	}
}

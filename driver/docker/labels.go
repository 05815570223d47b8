package docker

import (
	"cmp"
	"maps"

	"github.com/docker/docker/api/types/filters"

	"github.com/provisioning/orchestrator/testenv"
)

// envFilter selects the objects of one environment that this service
// created: both labels must match, so an object merely carrying an
// environment label (made by hand, say) is never selected.
func envFilter(envID string) filters.Args {
	return filters.NewArgs(
		filters.Arg("label", testenv.ManagedByLabel+"="+testenv.ManagedByValue),
		filters.Arg("label", testenv.EnvIDLabel+"="+envID),
	)
}

func managedFilter() filters.Args {
	return filters.NewArgs(filters.Arg("label", testenv.ManagedByLabel+"="+testenv.ManagedByValue))
}

// isOurs reports whether labels mark an object of envID created by this
// service.
func isOurs(labels map[string]string, envID string) bool {
	return labels[testenv.ManagedByLabel] == testenv.ManagedByValue && labels[testenv.EnvIDLabel] == envID
}

// networkName is p.NetworkName, or the plan's convention when empty.
func networkName(p testenv.Plan) string {
	return cmp.Or(p.NetworkName, testenv.NetworkName(p.EnvID))
}

// objectLabels merges label sets (later wins) and then forces the managed-by
// and environment labels: whatever the plan says, every object created here
// must be findable by cleanup and the janitor.
func objectLabels(envID string, sets ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, s := range sets {
		maps.Copy(out, s)
	}
	out[testenv.ManagedByLabel] = testenv.ManagedByValue
	out[testenv.EnvIDLabel] = envID
	return out
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

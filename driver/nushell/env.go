package nushell

import (
	"slices"
	"strings"
)

// BaseEnvNames are the variables a run inherits from the orchestrator's own
// environment: what a shell needs (PATH, HOME, locale, time zone, temp
// dir), never the service's configuration or secrets.
var BaseEnvNames = []string{"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM"}

// BaseEnvPrefixes are variable-name prefixes a run inherits too: the
// locale (LC_*) and the provisioning tool's own variables (PROVISIONING_*).
var BaseEnvPrefixes = []string{"LC_", "PROVISIONING_"}

// SafeEnviron returns the entries of environ (KEY=VALUE, as os.Environ)
// that a provisioning run may see: BaseEnvNames, BaseEnvPrefixes, and the
// names in pass (the operator's --script-env-pass). Everything else, e.g.
// ORCHESTRATOR_AUTH_TOKEN or SURREAL_PASS, stays in the service.
func SafeEnviron(environ []string, pass []string) []string {
	var out []string
	for _, kv := range environ {
		name, _, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			continue
		}
		if slices.Contains(BaseEnvNames, name) || slices.Contains(pass, name) ||
			slices.ContainsFunc(BaseEnvPrefixes, func(p string) bool { return strings.HasPrefix(name, p) }) {
			out = append(out, kv)
		}
	}
	return out
}

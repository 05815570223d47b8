package surrealproc

import (
	"slices"
	"testing"
)

// The server process gets what it needs to run and none of the service's
// secrets or SURREAL_* overrides.
func TestChildEnvIsAnAllowList(t *testing.T) {
	got := childEnv([]string{"PATH=/usr/bin", "HOME=/root", "LC_ALL=C", "NODE_OPTIONS=--max-old-space-size=512",
		"ORCHESTRATOR_AUTH_TOKEN=s3cret", "ORCHESTRATOR_SURREAL_PASS=pw", "SURREAL_UNAUTHENTICATED=true",
		"AWS_SECRET_ACCESS_KEY=x", "GITHUB_TOKEN=y", "=weird", "NOEQUALS"})
	want := []string{"PATH=/usr/bin", "HOME=/root", "LC_ALL=C", "NODE_OPTIONS=--max-old-space-size=512"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

package nushell

import (
	"slices"
	"testing"
)

func TestSafeEnviron(t *testing.T) {
	environ := []string{"PATH=/bin", "HOME=/root", "LANG=C.UTF-8", "LC_TIME=C", "PROVISIONING_STATE_DIR=/s",
		"ORCHESTRATOR_AUTH_TOKEN=s3cret", "ORCHESTRATOR_SURREAL_PASS=pw", "AWS_SECRET_ACCESS_KEY=k", "HCLOUD_TOKEN=h", "=x", "BAD"}
	got := SafeEnviron(environ, nil)
	want := []string{"PATH=/bin", "HOME=/root", "LANG=C.UTF-8", "LC_TIME=C", "PROVISIONING_STATE_DIR=/s"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	got = SafeEnviron(environ, []string{"HCLOUD_TOKEN"})
	if !slices.Contains(got, "HCLOUD_TOKEN=h") || slices.Contains(got, "AWS_SECRET_ACCESS_KEY=k") {
		t.Fatalf("pass names only what the operator named: %v", got)
	}
}

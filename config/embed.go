// Package config holds configuration files shipped with the orchestrator,
// embedded so the binary works without the repository checkout.
package config

import _ "embed" // for //go:embed

// TestTopologies is config/test-topologies.toml: the built-in topology
// templates of the test environment service (see testenv.DefaultTemplates).
//
//go:embed test-topologies.toml
var TestTopologies []byte

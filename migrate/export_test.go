package migrate

import (
	"encoding/json"
	"reflect"
)

// SlowCanonicalJSON is the general route of CanonicalJSON and
// AuditChecksum (marshal, decode, re-encode sorted) for any value.
func SlowCanonicalJSON(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return canonicalize(raw)
}

// FastCanonicalJSON is the direct route (appendCanonical).
func FastCanonicalJSON(v any) ([]byte, error) {
	return appendCanonical(nil, reflect.ValueOf(v))
}

package migrate

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"

	"github.com/provisioning/orchestrator/storage"
)

// Checksum is the content checksum of a task as migration compares it: the
// hex SHA-256 of the canonical JSON of storage.Normalize(t). Canonical
// means object keys sorted, no insignificant whitespace, numbers kept as
// values (1, 1.0 and 1e0 are one number; integers exact up to int64),
// timestamps in UTC, and an "environment" of JSON null treated as
// absent, so two backends that store the same task produce the same
// checksum whatever key order or spacing they keep internally.
func Checksum(t storage.Task) (string, error) {
	data, err := CanonicalJSON(t)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), nil
}

// CanonicalJSON is the byte string Checksum hashes.
func CanonicalJSON(t storage.Task) ([]byte, error) {
	t = storage.Normalize(t)
	if bytes.Equal(bytes.TrimSpace(t.Environment), []byte("null")) {
		t.Environment = nil
	}
	if data, err := appendCanonical(nil, reflect.ValueOf(t)); err == nil {
		return data, nil
	}
	raw, err := json.Marshal(t)
	if err != nil {
		return nil, fmt.Errorf("encode task %s: %w", t.ID, err)
	}
	return canonicalize(raw)
}

// AuditChecksum is the content checksum of one audit entry (Time in UTC).
func AuditChecksum(e storage.AuditEntry) (string, error) {
	data, err := auditCanonicalJSON(e)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), nil
}

// auditCanonicalJSON is the byte string AuditChecksum hashes.
func auditCanonicalJSON(e storage.AuditEntry) ([]byte, error) {
	e.Time = e.Time.UTC()
	if data, err := appendCanonical(nil, reflect.ValueOf(e)); err == nil {
		return data, nil
	}
	raw, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("encode audit entry %s: %w", e.ID, err)
	}
	return canonicalize(raw)
}

// canonicalize re-encodes JSON with sorted object keys (encoding/json
// sorts map keys) and numbers in one spelling per value.
func canonicalize(raw []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("canonical JSON: %w", err)
	}
	v = canonicalNumbers(v)
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("canonical JSON: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte{'\n'}), nil
}

// canonicalNumbers rewrites every number to one spelling: integers that
// fit int64 exactly as such, anything else as the shortest float64 form.
// Backends that keep JSON documents as typed values may turn 1.0 into 1 or
// 0.250 into 0.25; those are the same value.
func canonicalNumbers(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = canonicalNumbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = canonicalNumbers(e)
		}
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return json.Number(strconv.FormatInt(i, 10))
		}
		if f, err := x.Float64(); err == nil {
			if f == math.Trunc(f) && math.Abs(f) < 1<<63 {
				return json.Number(strconv.FormatInt(int64(f), 10))
			}
			return json.Number(strconv.FormatFloat(f, 'g', -1, 64))
		}
	}
	return v
}

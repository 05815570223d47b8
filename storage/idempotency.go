package storage

import (
	"fmt"
	"regexp"

	"github.com/google/uuid"
)

// idempotencyNamespace is the UUIDv5 namespace of task ids derived from
// idempotency keys. Fixed: the same key must give the same id forever.
var idempotencyNamespace = uuid.MustParse("0b6f3c52-5d0e-4f43-9d0a-7f1c2e9a4b11")

// idempotencyKeyRE is what an Idempotency-Key may look like: a client's
// UUID, a CI job id and the like.
var idempotencyKeyRE = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// ValidateIdempotencyKey reports whether key can be used: 1 to 128 of
// letters, digits and . _ : -.
func ValidateIdempotencyKey(key string) error {
	if !idempotencyKeyRE.MatchString(key) {
		return fmt.Errorf("%w: an idempotency key is 1 to 128 letters, digits, '.', '_', ':' or '-'", ErrInvalidID)
	}
	return nil
}

// IdempotentID is the task id of a create request carrying an idempotency
// key: a UUIDv5 of scope (who asks and for what kind of task, e.g. the
// token name and the workflow type) and key, so a retried request names
// the same task and can never start a second one.
func IdempotentID(scope, key string) string {
	return uuid.NewSHA1(idempotencyNamespace, []byte(scope+"\x00"+key)).String()
}

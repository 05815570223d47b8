package driver

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// KeepAlive beats on its own while the caller blocks, and not after stop.
func TestKeepAlive(t *testing.T) {
	var beats atomic.Int32
	ctx := WithHeartbeat(context.Background(), func(d string) {
		if d != "pull x" {
			t.Errorf("detail %q", d)
		}
		beats.Add(1)
	})
	stop := keepAlive(ctx, "pull x", 5*time.Millisecond)
	deadline := time.Now().Add(5 * time.Second)
	for beats.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	stop()
	stop() // idempotent
	n := beats.Load()
	if n < 3 {
		t.Fatalf("%d beats while blocked", n)
	}
	time.Sleep(30 * time.Millisecond)
	if beats.Load() != n {
		t.Error("beats after stop")
	}
	// Without a heartbeat in the context it is a no-op.
	keepAlive(context.Background(), "x", time.Millisecond)()
}

package devserver

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"
)

// A port taken by another process between FreePort and the bind used to
// leave the server running with a nil listener until a goroutine crashed
// the whole test binary. Now the server picks other ports and starts.
func TestStartRetriesWhenAnInternalPortIsTaken(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer held.Close()
	heldPort := held.Addr().(*net.TCPAddr).Port

	var mu sync.Mutex
	handedOut := 0
	orig := pickPort
	pickPort = func(ip string) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		handedOut++
		if handedOut == 2 { // the first internal service of the first attempt
			return heldPort, nil
		}
		return orig(ip)
	}
	t.Cleanup(func() { pickPort = orig })

	fport, err := FreePort("127.0.0.1")
	require.NoError(t, err)
	srv, err := Start(Options{
		DataDir:      t.TempDir(),
		FrontendPort: fport,
		UIPort:       -1,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.NoError(t, err)
	defer srv.Stop()
	require.Greater(t, handedOut, 5, "a second set of ports was picked")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.DialContext(ctx, client.Options{HostPort: srv.Address()})
	require.NoError(t, err)
	defer c.Close()
	_, err = c.CheckHealth(ctx, &client.CheckHealthRequest{})
	require.NoError(t, err)
}

// A frontend port in use is the caller's choice, so it is reported (as
// PortTaken, for callers that picked it themselves) instead of retried.
func TestStartReportsATakenFrontendPort(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer held.Close()
	_, err = Start(Options{
		DataDir:      t.TempDir(),
		FrontendPort: held.Addr().(*net.TCPAddr).Port,
		UIPort:       -1,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	require.Error(t, err)
	require.True(t, PortTaken(err), "%v", err)
	require.Contains(t, err.Error(), strconv.Itoa(held.Addr().(*net.TCPAddr).Port))
	require.Contains(t, err.Error(), "--temporal-port")
}

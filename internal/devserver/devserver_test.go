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
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/api/workflowservice/v1"
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

// Search attributes: a new database has them from its creation; one made
// without them (an older version's) gets them at the next start; and a
// restart on the same file changes nothing. Each time they are usable in
// a visibility query right after Start returns.
func TestSearchAttributesRegisteredIdempotently(t *testing.T) {
	dir := t.TempDir()
	want := map[string]enumspb.IndexedValueType{"Infra": enumspb.INDEXED_VALUE_TYPE_KEYWORD, "Priority": enumspb.INDEXED_VALUE_TYPE_INT}
	start := func(attrs map[string]enumspb.IndexedValueType) (*Server, client.Client) {
		t.Helper()
		fport, err := FreePort("127.0.0.1")
		require.NoError(t, err)
		began := time.Now()
		srv, err := Start(Options{DataDir: dir, FrontendPort: fport, UIPort: -1, SearchAttributes: attrs,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		require.NoError(t, err)
		t.Logf("start with %d search attributes took %s", len(attrs), time.Since(began).Round(time.Millisecond))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := client.DialContext(ctx, client.Options{HostPort: srv.Address()})
		require.NoError(t, err)
		return srv, c
	}
	custom := func(c client.Client) map[string]enumspb.IndexedValueType {
		t.Helper()
		resp, err := c.OperatorService().ListSearchAttributes(context.Background(), &operatorservice.ListSearchAttributesRequest{Namespace: "default"})
		require.NoError(t, err)
		return resp.GetCustomAttributes()
	}
	queryable := func(c client.Client) error {
		_, err := c.WorkflowService().CountWorkflowExecutions(context.Background(), &workflowservice.CountWorkflowExecutionsRequest{
			Namespace: "default", Query: "Infra = 'production' AND Priority = 1"})
		return err
	}

	// An older version's database: no custom attributes.
	srv, c := start(nil)
	require.NotContains(t, custom(c), "Infra")
	require.Error(t, queryable(c), "an unknown attribute is rejected by queries")
	c.Close()
	srv.Stop()

	for i := range 2 { // upgrade, then a plain restart
		srv, c = start(want)
		got := custom(c)
		for name, typ := range want {
			require.Equal(t, typ, got[name], "start %d: %s", i+1, name)
		}
		require.NoError(t, queryable(c), "start %d", i+1)
		c.Close()
		srv.Stop()
	}

	// A new database has them from its creation.
	dir = t.TempDir()
	srv, c = start(want)
	defer srv.Stop()
	defer c.Close()
	require.Equal(t, enumspb.INDEXED_VALUE_TYPE_KEYWORD, custom(c)["Infra"])
	require.NoError(t, queryable(c))
}

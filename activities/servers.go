package activities

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"go.temporal.io/sdk/temporal"
)

// ErrTypeServerListOutput is ListServers' error when `server list` exited 0
// but did not print a JSON array of names; never retried (the same script
// prints the same thing).
const ErrTypeServerListOutput = "ServerListOutput"

// maxShownOutput bounds how much of an unparsable `server list` output an
// error quotes.
const maxShownOutput = 200

// ListServers runs `server list ...` (step.Args) like RunNushell (same
// heartbeats, error classes and stored output) and parses its stdout: a
// JSON array of server names, the servers the settings define. Names are
// returned as printed; the workflow validates them.
func (a *Activities) ListServers(ctx context.Context, step NuStep) ([]string, error) {
	_, res, err := a.runNushell(ctx, step)
	if err != nil {
		return nil, err
	}
	var names []string
	dec := json.NewDecoder(strings.NewReader(res.Stdout))
	if derr := dec.Decode(&names); derr != nil || dec.More() || res.StdoutTruncated {
		shown := strings.ToValidUTF8(strings.TrimSpace(res.Stdout), "")
		if len(shown) > maxShownOutput {
			shown = strings.ToValidUTF8(shown[:maxShownOutput], "") + "..."
		}
		why := "it is not one JSON array of strings"
		if res.StdoutTruncated {
			why = "it was cut at the capture limit"
		}
		return nil, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("server list printed %q: %s", shown, why), ErrTypeServerListOutput, nil)
	}
	if names == nil {
		names = []string{}
	}
	return names, nil
}

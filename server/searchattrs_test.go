package server

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/internal/searchattr"
	"github.com/provisioning/orchestrator/workflows"
)

// A task's workflow starts with the Infra and Priority search attributes
// the namespace defines, and with none of those it lacks (Temporal would
// reject the start).
func TestCreateSetsSearchAttributes(t *testing.T) {
	body := `{"infra":"production","settings":"./settings.yaml","servers":["web-01"],"priority":2}`
	for _, tc := range []struct {
		name          string
		attrs         searchattr.Set
		infra, prio   bool
		wantAttrCount int
	}{
		{"all defined", searchattr.All, true, true, 2},
		{"only infra defined", searchattr.Set{Infra: true}, true, false, 1},
		{"none defined", searchattr.Set{}, false, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, Options{TaskQueue: testQueue, Policy: testPolicy, SearchAttributes: tc.attrs})
			call := f.expectStart(workflows.ServerCreateWorkflowName, nil)
			r := f.send(http.MethodPost, "/workflows/servers/create", "application/json", body)
			require.Equal(t, http.StatusOK, r.code, "%s %+v", r.data, r.err)
			sa := call.opts.TypedSearchAttributes
			assert.Equal(t, tc.wantAttrCount, sa.Size())
			infra, ok := sa.GetKeyword(searchattr.Infra)
			assert.Equal(t, tc.infra, ok)
			if ok {
				assert.Equal(t, "production", infra)
			}
			prio, ok := sa.GetInt64(searchattr.Priority)
			assert.Equal(t, tc.prio, ok)
			if ok {
				assert.Equal(t, int64(2), prio)
			}
		})
	}
}

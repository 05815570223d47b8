package server

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/workflows"
)

// A webhook reaches the workflow input of each create; without a secret
// configured, or with a bad URL, the request is refused naming the field
// and nothing is created.
func TestCreateWithWebhook(t *testing.T) {
	bodies := map[string]string{
		"/workflows/servers/create":  `{"infra":"prod","settings":"s.yaml","servers":["web-01"],"webhook":{"url":%q}}`,
		"/workflows/taskserv/create": `{"infra":"prod","settings":"s.yaml","taskserv":"containerd","servers":[],"webhook":{"url":%q}}`,
		"/workflows/cluster/create":  `{"infra":"prod","settings":"s.yaml","cluster":"k8s","webhook":{"url":%q}}`,
	}
	types := map[string]string{
		"/workflows/servers/create":  workflows.ServerCreateWorkflowName,
		"/workflows/taskserv/create": workflows.TaskservCreateWorkflowName,
		"/workflows/cluster/create":  workflows.ClusterCreateWorkflowName,
	}
	const url = "https://hooks.example.com/x?token=abc"
	for path, tmpl := range bodies {
		t.Run(path, func(t *testing.T) {
			off := newFixture(t, Options{TaskQueue: testQueue})
			e := off.fail(http.StatusBadRequest, http.MethodPost, path, fmt.Sprintf(tmpl, url))
			assert.Equal(t, "webhook", e.Field)
			assert.Contains(t, e.Message, "--webhook-secret-file")
			assert.Empty(t, off.tasks(), "nothing created")

			on := newFixture(t, Options{TaskQueue: testQueue, Webhooks: true})
			for bad, why := range map[string]string{
				"ftp://x/":              "http",
				"https://u:p@x.example": "user:password",
				"":                      "required",
				"https://x.example/%zz": "not a URL",
			} {
				e := on.fail(http.StatusBadRequest, http.MethodPost, path, fmt.Sprintf(tmpl, bad))
				assert.Equal(t, "webhook.url", e.Field, bad)
				assert.Contains(t, e.Message, why, bad)
			}
			assert.Empty(t, on.tasks(), "nothing created")

			call := on.expectStart(types[path], nil)
			on.ok(http.StatusOK, http.MethodPost, path, fmt.Sprintf(tmpl, url), nil)
			in, ok := call.input.(workflows.ProvisioningInput)
			if !ok {
				// The handlers pass inputs by value.
				switch v := call.input.(type) {
				case workflows.ServerCreateInput:
					in = &v
				case workflows.TaskservCreateInput:
					in = &v
				case workflows.ClusterCreateInput:
					in = &v
				}
			}
			require.NotNil(t, in)
			require.NotNil(t, in.Fields().Webhook)
			assert.Equal(t, url, in.Fields().Webhook.URL)
		})
	}
}

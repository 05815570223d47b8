package app

import (
	"encoding/json"
	"io"

	"github.com/provisioning/orchestrator/server"
)

// WriteOpenAPI prints the REST API's OpenAPI document (`orchestrator
// openapi`), the same one GET /openapi.json serves with default options, so
// client generators can run without a live service.
func WriteOpenAPI(w io.Writer) error {
	doc := server.New(server.Options{}).OpenAPI()
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}

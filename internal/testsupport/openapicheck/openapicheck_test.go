package openapicheck

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// doc is a small document in the shape the server generates: envelopes,
// a component with every kind of property, and status fallbacks.
const doc = `{
  "openapi": "3.0.3",
  "paths": {
    "/things/{id}": {
      "get": {
        "responses": {
          "200": {"content": {"application/json": {"schema": {
            "type": "object", "required": ["success", "data"], "additionalProperties": false,
            "properties": {
              "success": {"type": "boolean", "enum": [true]},
              "data": {"$ref": "#/components/schemas/Thing"}
            }}}}},
          "4XX": {"content": {"application/json": {"schema": {
            "type": "object", "required": ["error"],
            "properties": {"error": {"type": "string"}}}}}},
          "default": {"content": {"text/plain": {"schema": {"type": "string"}}}}
        }
      }
    },
    "/broken": {
      "get": {"responses": {"200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Missing"}}}}}}
    }
  },
  "components": {"schemas": {
    "Thing": {
      "type": "object", "additionalProperties": false,
      "required": ["id", "count", "when"],
      "properties": {
        "id": {"type": "string", "format": "uuid"},
        "count": {"type": "integer", "minimum": 0, "maximum": 10},
        "ratio": {"type": "number"},
        "when": {"type": "string", "format": "date-time"},
        "done": {"allOf": [{"type": "string", "format": "date-time"}], "nullable": true},
        "state": {"type": "string", "enum": ["a", "b"]},
        "tags": {"type": "array", "items": {"type": "string"}, "nullable": true},
        "labels": {"type": "object", "additionalProperties": {"type": "integer"}, "nullable": true},
        "raw": {}
      }
    }
  }}
}`

func parsed(t *testing.T) map[string]any {
	t.Helper()
	var d map[string]any
	require.NoError(t, json.Unmarshal([]byte(doc), &d))
	return d
}

const okThing = `{"success":true,"data":{"id":"6e910fc7-8b45-4e5a-aaba-26961bc94911","count":3,"ratio":0.5,` +
	`"when":"2024-01-01T00:00:00.123456Z","done":null,"state":"a","tags":null,"labels":{"x":1},"raw":{"any":[1,"two"]}}}`

func TestValidateResponseAccepts(t *testing.T) {
	d := parsed(t)
	for name, tc := range map[string]struct {
		status      int
		contentType string
		body        string
	}{
		"full object":                {200, "application/json", okThing},
		"charset parameter":          {200, "application/json; charset=UTF-8", okThing},
		"optional properties absent": {200, "application/json", `{"success":true,"data":{"id":"6e910fc7-8b45-4e5a-aaba-26961bc94911","count":0,"when":"2024-01-01T00:00:00Z"}}`},
		"4XX range":                  {404, "application/json", `{"error":"gone","extra":true}`},
		"default, not JSON":          {500, "text/plain", "boom"},
	} {
		t.Run(name, func(t *testing.T) {
			assert.NoError(t, ValidateResponse(d, "/things/{id}", "GET", tc.status, tc.contentType, []byte(tc.body)))
		})
	}
}

func TestValidateResponseRejects(t *testing.T) {
	d := parsed(t)
	thing := func(fields string) string {
		return `{"success":true,"data":{"id":"6e910fc7-8b45-4e5a-aaba-26961bc94911","count":1,"when":"2024-01-01T00:00:00Z"` + fields + `}}`
	}
	for name, tc := range map[string]struct {
		path, method string
		status       int
		contentType  string
		body         string
		want         string
	}{
		"undocumented path":      {"/nope", "GET", 200, "application/json", `{}`, "GET /nope is not documented"},
		"undocumented method":    {"/things/{id}", "POST", 200, "application/json", `{}`, "POST /things/{id} is not documented"},
		"undocumented type":      {"/things/{id}", "GET", 200, "text/html", `<p>`, `content type "text/html" is not documented`},
		"not JSON":               {"/things/{id}", "GET", 200, "application/json", `{`, "body is not JSON"},
		"missing required":       {"/things/{id}", "GET", 200, "application/json", `{"success":true}`, "$.data: required property is missing"},
		"enum":                   {"/things/{id}", "GET", 200, "application/json", `{"success":false,"data":null}`, "$.success: false is not one of [true]"},
		"null not allowed":       {"/things/{id}", "GET", 200, "application/json", thing(`,"state":null`), "$.data.state: null is not allowed"},
		"undocumented property":  {"/things/{id}", "GET", 200, "application/json", thing(`,"extra":1`), "$.data.extra: property is not documented"},
		"uuid format":            {"/things/{id}", "GET", 200, "application/json", `{"success":true,"data":{"id":"6E910FC7-8B45-4E5A-AABA-26961BC94911","count":1,"when":"2024-01-01T00:00:00Z"}}`, "$.data.id"},
		"date-time format":       {"/things/{id}", "GET", 200, "application/json", thing(`,"done":"yesterday"`), `$.data.done: "yesterday" is not a date-time`},
		"integer with fraction":  {"/things/{id}", "GET", 200, "application/json", `{"success":true,"data":{"id":"6e910fc7-8b45-4e5a-aaba-26961bc94911","count":1.5,"when":"2024-01-01T00:00:00Z"}}`, "$.data.count: 1.5 is not an integer"},
		"above maximum":          {"/things/{id}", "GET", 200, "application/json", `{"success":true,"data":{"id":"6e910fc7-8b45-4e5a-aaba-26961bc94911","count":11,"when":"2024-01-01T00:00:00Z"}}`, "$.data.count: 11 is above the maximum 10"},
		"below minimum":          {"/things/{id}", "GET", 200, "application/json", `{"success":true,"data":{"id":"6e910fc7-8b45-4e5a-aaba-26961bc94911","count":-1,"when":"2024-01-01T00:00:00Z"}}`, "$.data.count: -1 is below the minimum 0"},
		"number type":            {"/things/{id}", "GET", 200, "application/json", thing(`,"ratio":"half"`), "$.data.ratio: expected number, got string"},
		"array items":            {"/things/{id}", "GET", 200, "application/json", thing(`,"tags":["x",2]`), "$.data.tags[1]: expected string"},
		"not an array":           {"/things/{id}", "GET", 200, "application/json", thing(`,"tags":"x"`), "$.data.tags: expected array"},
		"additional properties":  {"/things/{id}", "GET", 200, "application/json", thing(`,"labels":{"x":"y"}`), "$.data.labels.x: expected integer"},
		"not an object":          {"/things/{id}", "GET", 200, "application/json", `{"success":true,"data":[]}`, "$.data: expected object"},
		"boolean type":           {"/things/{id}", "GET", 200, "application/json", `{"success":"yes","data":null}`, "$.success: expected boolean"},
		"unresolvable ref":       {"/broken", "GET", 200, "application/json", `{}`, "$: unresolvable $ref #/components/schemas/Missing"},
		"undocumented status":    {"/broken", "GET", 404, "application/json", `{}`, "status 404 is not documented"},
		"4XX schema still holds": {"/things/{id}", "GET", 409, "application/json", `{"error":1}`, "$.error: expected string"},
	} {
		t.Run(name, func(t *testing.T) {
			err := ValidateResponse(d, tc.path, tc.method, tc.status, tc.contentType, []byte(tc.body))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestValidateResponseReportsEveryMismatch(t *testing.T) {
	body := `{"success":true,"data":{"id":"x","count":"many","when":"now","extra":1}}`
	err := ValidateResponse(parsed(t), "/things/{id}", "GET", 200, "application/json", []byte(body))
	require.Error(t, err)
	for _, path := range []string{"$.data.id", "$.data.count", "$.data.when", "$.data.extra"} {
		assert.Contains(t, err.Error(), path)
	}
	assert.Contains(t, err.Error(), "GET /things/{id} 200 does not match the OpenAPI document")
}

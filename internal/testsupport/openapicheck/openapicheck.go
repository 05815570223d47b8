// Package openapicheck validates HTTP responses against a decoded OpenAPI 3.0
// document (the one the server serves at /openapi.json). It is test support:
// only tests import it, so it is not linked into the orchestrator binary.
//
// It understands the subset of OpenAPI the server's document generator
// emits: $ref to components/schemas, allOf, nullable, enum, the types
// object/array/string/integer/number/boolean, required,
// additionalProperties, minimum/maximum, and the formats date-time and uuid
// (a lowercase UUID, as storage.ValidateID accepts).
package openapicheck

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/provisioning/orchestrator/storage"
)

// ValidateResponse checks a response body against doc (a decoded OpenAPI
// document as served at /openapi.json) for the operation at pathTemplate
// (OpenAPI form, /tasks/{id}) and method, picking the response by status
// (exact, then 4XX/5XX, then default). The error names the JSON path of
// every mismatch.
func ValidateResponse(doc map[string]any, pathTemplate, method string, status int, contentType string, body []byte) error {
	paths, _ := doc["paths"].(map[string]any)
	item, _ := paths[pathTemplate].(map[string]any)
	op, _ := item[strings.ToLower(method)].(map[string]any)
	if op == nil {
		return fmt.Errorf("%s %s is not documented", method, pathTemplate)
	}
	responses, _ := op["responses"].(map[string]any)
	code := strconv.Itoa(status)
	resp, _ := responses[code].(map[string]any)
	if resp == nil {
		resp, _ = responses[code[:1]+"XX"].(map[string]any)
	}
	if resp == nil {
		resp, _ = responses["default"].(map[string]any)
	}
	if resp == nil {
		return fmt.Errorf("%s %s: status %d is not documented", method, pathTemplate, status)
	}
	content, _ := resp["content"].(map[string]any)
	if status == http.StatusNoContent && content == nil {
		if len(body) > 0 {
			return fmt.Errorf("%s %s 204: a body of %d bytes", method, pathTemplate, len(body))
		}
		return nil
	}
	mt, _, _ := strings.Cut(contentType, ";")
	media, _ := content[strings.TrimSpace(mt)].(map[string]any)
	if media == nil {
		return fmt.Errorf("%s %s %d: content type %q is not documented", method, pathTemplate, status, contentType)
	}
	schema, _ := media["schema"].(map[string]any)
	var v any
	if strings.HasSuffix(strings.TrimSpace(mt), "json") {
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			return fmt.Errorf("%s %s %d: body is not JSON: %w", method, pathTemplate, status, err)
		}
	} else {
		v = string(body)
	}
	var errs []string
	validate(doc, schema, v, "$", &errs)
	if len(errs) > 0 {
		return fmt.Errorf("%s %s %d does not match the OpenAPI document:\n  %s", method, pathTemplate, status, strings.Join(errs, "\n  "))
	}
	return nil
}

func validate(doc, schema map[string]any, v any, path string, errs *[]string) {
	if ref, isRef := schema["$ref"].(string); isRef {
		name, found := strings.CutPrefix(ref, "#/components/schemas/")
		comps, _ := doc["components"].(map[string]any)
		schemas, _ := comps["schemas"].(map[string]any)
		target, _ := schemas[name].(map[string]any)
		if !found || target == nil {
			*errs = append(*errs, path+": unresolvable $ref "+ref)
			return
		}
		validate(doc, target, v, path, errs)
		return
	}
	if v == nil {
		if n, _ := schema["nullable"].(bool); !n && len(schema) > 0 {
			*errs = append(*errs, path+": null is not allowed")
		}
		return
	}
	if all, isAll := schema["allOf"].([]any); isAll {
		for _, s := range all {
			sub, _ := s.(map[string]any)
			validate(doc, sub, v, path, errs)
		}
	}
	if enum, isEnum := schema["enum"].([]any); isEnum {
		if !slices.ContainsFunc(enum, func(e any) bool { return fmt.Sprint(e) == fmt.Sprint(v) }) {
			*errs = append(*errs, fmt.Sprintf("%s: %v is not one of %v", path, v, enum))
		}
	}
	typ, _ := schema["type"].(string)
	switch typ {
	case "":
	case "object":
		obj, isObj := v.(map[string]any)
		if !isObj {
			*errs = append(*errs, fmt.Sprintf("%s: expected object, got %T", path, v))
			return
		}
		validateObject(doc, schema, obj, path, errs)
	case "array":
		arr, isArr := v.([]any)
		if !isArr {
			*errs = append(*errs, fmt.Sprintf("%s: expected array, got %T", path, v))
			return
		}
		items, _ := schema["items"].(map[string]any)
		for i, e := range arr {
			validate(doc, items, e, fmt.Sprintf("%s[%d]", path, i), errs)
		}
	case "string":
		str, isStr := v.(string)
		if !isStr {
			*errs = append(*errs, fmt.Sprintf("%s: expected string, got %T", path, v))
			return
		}
		validateFormat(schema, str, path, errs)
	case "integer", "number":
		n, isNum := v.(json.Number)
		if !isNum {
			*errs = append(*errs, fmt.Sprintf("%s: expected %s, got %T", path, typ, v))
			return
		}
		f, err := n.Float64()
		if err != nil || typ == "integer" && strings.ContainsAny(n.String(), ".eE") {
			*errs = append(*errs, fmt.Sprintf("%s: %s is not an %s", path, n, typ))
			return
		}
		if lo, has := num(schema["minimum"]); has && f < lo {
			*errs = append(*errs, fmt.Sprintf("%s: %s is below the minimum %v", path, n, lo))
		}
		if hi, has := num(schema["maximum"]); has && f > hi {
			*errs = append(*errs, fmt.Sprintf("%s: %s is above the maximum %v", path, n, hi))
		}
	case "boolean":
		if _, isBool := v.(bool); !isBool {
			*errs = append(*errs, fmt.Sprintf("%s: expected boolean, got %T", path, v))
		}
	default:
		*errs = append(*errs, path+": schema has unknown type "+typ)
	}
}

func validateObject(doc, schema, obj map[string]any, path string, errs *[]string) {
	props, _ := schema["properties"].(map[string]any)
	req, _ := schema["required"].([]any)
	for _, r := range req {
		if _, has := obj[fmt.Sprint(r)]; !has {
			*errs = append(*errs, fmt.Sprintf("%s.%v: required property is missing", path, r))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(obj)) {
		child := path + "." + k
		if ps, has := props[k].(map[string]any); has {
			validate(doc, ps, obj[k], child, errs)
			continue
		}
		switch ap := schema["additionalProperties"].(type) {
		case bool:
			if !ap {
				*errs = append(*errs, child+": property is not documented")
			}
		case map[string]any:
			validate(doc, ap, obj[k], child, errs)
		}
	}
}

func validateFormat(schema map[string]any, s, path string, errs *[]string) {
	switch schema["format"] {
	case "date-time":
		if _, err := time.Parse(time.RFC3339Nano, s); err != nil {
			*errs = append(*errs, fmt.Sprintf("%s: %q is not a date-time", path, s))
		}
	case "uuid":
		if storage.ValidateID(s) != nil {
			*errs = append(*errs, fmt.Sprintf("%s: %q is not a uuid", path, s))
		}
	}
}

func num(v any) (float64, bool) {
	switch n := v.(type) {
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	case float64:
		return n, true
	case int:
		return float64(n), true
	}
	return 0, false
}

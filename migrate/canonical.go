package migrate

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// appendCanonical appends the canonical JSON of v (what canonicalize
// makes of json.Marshal(v)) by walking v directly: object keys sorted,
// strings without HTML escaping, integers as digits. It spares the
// encode-decode-encode round trip that dominated the migration's CPU
// profile (about 60 µs per task). It handles the kinds the task store's
// types use; for anything else (floats, maps, interfaces, a custom
// MarshalJSON other than time.Time's) it returns errSlowPath and the
// caller takes the general route. TestCanonicalFastPath checks that both
// produce the same bytes.
func appendCanonical(buf []byte, v reflect.Value) ([]byte, error) {
	switch v.Type() {
	case timeType:
		b, err := v.Interface().(time.Time).MarshalJSON()
		if err != nil {
			return nil, err
		}
		return append(buf, b...), nil // RFC 3339, plain ASCII: canonical as is
	case rawMessageType:
		raw := v.Bytes()
		if len(raw) == 0 {
			return append(buf, "null"...), nil
		}
		if !json.Valid(raw) {
			return nil, errSlowPath // let json.Marshal say what is wrong
		}
		c, err := canonicalize(raw)
		if err != nil {
			return nil, err
		}
		return append(buf, c...), nil
	}
	switch v.Kind() {
	case reflect.String:
		return appendCanonicalString(buf, v.String()), nil
	case reflect.Bool:
		return strconv.AppendBool(buf, v.Bool()), nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.AppendInt(buf, v.Int(), 10), nil
	case reflect.Pointer:
		if v.IsNil() {
			return append(buf, "null"...), nil
		}
		return appendCanonical(buf, v.Elem())
	case reflect.Slice:
		if v.IsNil() {
			return append(buf, "null"...), nil
		}
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return nil, errSlowPath // []byte is base64 in JSON
		}
		buf = append(buf, '[')
		for i := range v.Len() {
			if i > 0 {
				buf = append(buf, ',')
			}
			var err error
			if buf, err = appendCanonical(buf, v.Index(i)); err != nil {
				return nil, err
			}
		}
		return append(buf, ']'), nil
	case reflect.Struct:
		fields, err := canonicalFields(v.Type())
		if err != nil {
			return nil, err
		}
		buf = append(buf, '{')
		first := true
		for _, f := range fields {
			fv := v.Field(f.index)
			if f.omitEmpty && emptyValue(fv) {
				continue
			}
			if !first {
				buf = append(buf, ',')
			}
			first = false
			buf = append(buf, f.key...)
			if buf, err = appendCanonical(buf, fv); err != nil {
				return nil, err
			}
		}
		return append(buf, '}'), nil
	}
	return nil, errSlowPath
}

var (
	errSlowPath    = errors.New("migrate: no canonical fast path for this type")
	timeType       = reflect.TypeFor[time.Time]()
	rawMessageType = reflect.TypeFor[json.RawMessage]()
	marshalerType  = reflect.TypeFor[json.Marshaler]()
)

// canonicalField is one exported struct field as encoding/json writes
// it; key is its quoted name and the colon.
type canonicalField struct {
	index     int
	name      string
	key       string
	omitEmpty bool
}

var fieldCache sync.Map // reflect.Type -> []canonicalField or error

// canonicalFields lists t's JSON fields sorted by name.
func canonicalFields(t reflect.Type) ([]canonicalField, error) {
	if c, ok := fieldCache.Load(t); ok {
		if err, isErr := c.(error); isErr {
			return nil, err
		}
		return c.([]canonicalField), nil
	}
	fields, err := buildFields(t)
	if err != nil {
		fieldCache.Store(t, err)
		return nil, err
	}
	fieldCache.Store(t, fields)
	return fields, nil
}

func buildFields(t reflect.Type) ([]canonicalField, error) {
	if t.Implements(marshalerType) || reflect.PointerTo(t).Implements(marshalerType) {
		return nil, errSlowPath
	}
	var out []canonicalField
	names := map[string]bool{}
	for i := range t.NumField() {
		sf := t.Field(i)
		if sf.Anonymous {
			return nil, errSlowPath // embedding: encoding/json's promotion rules
		}
		if !sf.IsExported() {
			continue
		}
		tag := sf.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "" {
			name = sf.Name
		}
		if strings.Contains(opts, "string") || names[name] || !plainKey(name) {
			return nil, errSlowPath
		}
		names[name] = true
		out = append(out, canonicalField{
			index:     i,
			name:      name,
			key:       string(appendCanonicalString(nil, name)) + ":",
			omitEmpty: slices.Contains(strings.Split(opts, ","), "omitempty"),
		})
	}
	slices.SortFunc(out, func(a, b canonicalField) int { return strings.Compare(a.name, b.name) })
	return out, nil
}

// plainKey: a name that needs no escaping (its key is quoted as is).
func plainKey(s string) bool {
	for i := range len(s) {
		c := s[i]
		if c < 0x20 || c == '"' || c == '\\' || c >= 0x7f {
			return false
		}
	}
	return true
}

// emptyValue is encoding/json's omitempty test for the kinds handled here.
func emptyValue(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.String, reflect.Slice, reflect.Map, reflect.Array:
		return v.Len() == 0
	case reflect.Bool:
		return !v.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return v.Int() == 0
	case reflect.Pointer, reflect.Interface:
		return v.IsNil()
	}
	return false
}

// appendCanonicalString quotes s as canonicalize's encoder does (no HTML
// escaping). Plain ASCII is copied; anything else goes through the same
// encoder after the same decode, so invalid UTF-8 comes out as it would
// from the round trip (each bad byte one U+FFFD).
func appendCanonicalString(buf []byte, s string) []byte {
	plain := true
	for i := range len(s) {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x7f {
			plain = false
			break
		}
	}
	if plain {
		buf = append(buf, '"')
		buf = append(buf, s...)
		return append(buf, '"')
	}
	if !utf8.ValidString(s) {
		var b strings.Builder
		for _, r := range s { // a bad byte decodes as one utf8.RuneError
			b.WriteRune(r)
		}
		s = b.String()
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return append(buf, bytes.TrimSuffix(out.Bytes(), []byte{'\n'})...)
}

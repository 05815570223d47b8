package testenv

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/provisioning/orchestrator/config"
)

// BuiltinSource is Template.Source of the templates shipped in
// config/test-topologies.toml (embedded in the binary).
const BuiltinSource = "builtin:config/test-topologies.toml"

// maxDescription bounds a template's description.
const maxDescription = 1024

// Template is a named cluster topology, as listed by GET /test/topologies
// and used by {"config": {"type": "cluster_topology", "template": NAME}}.
type Template struct {
	// Name is the template's key in the file: [templates.NAME].
	Name        string `json:"name" toml:"-"`
	ClusterType string `json:"cluster_type" toml:"cluster_type"`
	Description string `json:"description" toml:"description"`
	Nodes       []Node `json:"nodes" toml:"nodes"`
	// Network.Subnet empty means chosen at creation time.
	Network Network `json:"network" toml:"network"`
	// Source is BuiltinSource or the path of the file that defined it.
	Source string `json:"source" toml:"-"`
}

// Topology returns the template's nodes and network as a request topology
// (a deep copy).
func (t Template) Topology() Topology {
	c := t.clone()
	return Topology{Nodes: c.Nodes, Network: c.Network}
}

// clone deep-copies the slices so callers cannot change shared templates.
func (t Template) clone() Template {
	c := t
	c.Nodes = cloneNodes(t.Nodes)
	return c
}

func cloneNodes(nodes []Node) []Node {
	if nodes == nil {
		return nil
	}
	out := make([]Node, len(nodes))
	for i, n := range nodes {
		out[i] = n
		out[i].Taskservs = slices.Clone(n.Taskservs)
		out[i].Volumes = slices.Clone(n.Volumes)
		if n.Resources != nil {
			r := *n.Resources
			out[i].Resources = &r
		}
	}
	return out
}

// validate checks a template with the same rules as a request topology;
// field names are relative to the template ("nodes[1].name").
func (t Template) validate() error {
	if err := ValidateName("name", t.Name); err != nil {
		return err
	}
	if t.ClusterType != "" {
		if err := ValidateName("cluster_type", t.ClusterType); err != nil {
			return err
		}
	}
	if len(t.Description) > maxDescription {
		return &FieldError{"description", fmt.Sprintf("longer than %d bytes", maxDescription)}
	}
	return validateTopology("", t.Nodes, t.Network, nil)
}

// Templates is an immutable set of templates by name. The zero value and
// nil are empty sets. It is safe for concurrent use.
type Templates struct {
	byName map[string]Template
	names  []string // sorted
}

// ParseTemplates parses one TOML file of templates (the format of
// config/test-topologies.toml). source names the file in errors and in
// Template.Source. Unknown keys are errors, and every template is
// validated; errors name the source and the template.
func ParseTemplates(source string, data []byte) (*Templates, error) {
	var file struct {
		Templates map[string]Template `toml:"templates"`
	}
	md, err := toml.Decode(string(data), &file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		keys := make([]string, len(undecoded))
		for i, k := range undecoded {
			keys[i] = k.String()
		}
		return nil, fmt.Errorf("%s: unknown keys: %s", source, strings.Join(keys, ", "))
	}
	if len(file.Templates) == 0 {
		return nil, fmt.Errorf("%s: no templates: define them as [templates.<name>] tables", source)
	}
	ts := &Templates{byName: make(map[string]Template, len(file.Templates))}
	for name := range file.Templates {
		ts.names = append(ts.names, name)
	}
	slices.Sort(ts.names)
	for _, name := range ts.names {
		t := file.Templates[name]
		t.Name = name
		t.Source = source
		if err := t.validate(); err != nil {
			return nil, fmt.Errorf("%s: template %q: %w", source, name, err)
		}
		ts.byName[name] = t
	}
	return ts, nil
}

// DefaultTemplates returns the built-in templates of
// config/test-topologies.toml: kubernetes_3node, kubernetes_single,
// etcd_cluster, containerd_test and postgres_redis. It panics if the
// embedded file is invalid, which the package's tests rule out.
func DefaultTemplates() *Templates {
	ts, err := ParseTemplates(BuiltinSource, config.TestTopologies)
	if err != nil {
		panic("testenv: built-in templates: " + err.Error())
	}
	return ts
}

// LoadTemplates returns the built-in templates with the templates of the
// given files layered on top, in order: a later file adds templates and
// replaces those of the same name. This is the only function of the
// package that does I/O.
func LoadTemplates(paths ...string) (*Templates, error) {
	ts := DefaultTemplates()
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("topology templates: %w", err)
		}
		more, err := ParseTemplates(p, data)
		if err != nil {
			return nil, err
		}
		ts = ts.merge(more)
	}
	return ts, nil
}

// merge returns t with the templates of more added or replaced.
func (t *Templates) merge(more *Templates) *Templates {
	out := &Templates{byName: make(map[string]Template, len(t.Names())+len(more.Names()))}
	for _, src := range []*Templates{t, more} {
		for _, name := range src.Names() {
			if _, ok := out.byName[name]; !ok {
				out.names = append(out.names, name)
			}
			out.byName[name] = src.byName[name]
		}
	}
	slices.Sort(out.names)
	return out
}

// Get returns a copy of the named template.
func (t *Templates) Get(name string) (Template, bool) {
	if t == nil {
		return Template{}, false
	}
	tpl, ok := t.byName[name]
	if !ok {
		return Template{}, false
	}
	return tpl.clone(), true
}

// Names returns the template names, sorted.
func (t *Templates) Names() []string {
	if t == nil {
		return nil
	}
	return slices.Clone(t.names)
}

// List returns copies of all templates, sorted by name.
func (t *Templates) List() []Template {
	if t == nil {
		return []Template{}
	}
	out := make([]Template, len(t.names))
	for i, name := range t.names {
		out[i] = t.byName[name].clone()
	}
	return out
}

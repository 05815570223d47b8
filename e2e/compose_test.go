package e2e

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/internal/testsupport"
)

// composeFile is the part of docker-compose.yml the checks read.
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Image         string         `yaml:"image"`
	Build         any            `yaml:"build"`
	Command       []string       `yaml:"command"`
	Environment   map[string]any `yaml:"environment"`
	Ports         []string       `yaml:"ports"`
	ContainerName string         `yaml:"container_name"`
	DependsOn     dependsOn      `yaml:"depends_on"`
	Volumes       []string       `yaml:"volumes"`
	Init          bool           `yaml:"init"`
}

// dependsOn is compose's depends_on in either form: a list of service
// names or a map of service name to condition.
type dependsOn []string

func (d *dependsOn) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.SequenceNode {
		return n.Decode((*[]string)(d))
	}
	var m map[string]any
	if err := n.Decode(&m); err != nil {
		return err
	}
	for k := range m {
		*d = append(*d, k)
	}
	return nil
}

// interpolation is compose's ${VAR} / ${VAR:-default}; the check uses the
// defaults, as on a machine with none of the variables set.
var interpolation = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}`)

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testsupport.RepoRoot(t), "docker-compose.yml"))
	require.NoError(t, err)
	b = interpolation.ReplaceAll(b, []byte("$2"))
	var f composeFile
	require.NoError(t, yaml.Unmarshal(b, &f), "docker-compose.yml does not parse")
	return f
}

// dockerfileEnv reads the ENV instructions of the Dockerfile: the image's
// environment, under the compose service's.
func dockerfileEnv(t *testing.T) (map[string]string, string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testsupport.RepoRoot(t), "Dockerfile"))
	require.NoError(t, err)
	env := map[string]string{}
	var entrypoint string
	sc := bufio.NewScanner(bytes.NewReader(b))
	var inst strings.Builder
	flush := func() {
		line := strings.TrimSpace(inst.String())
		inst.Reset()
		switch {
		case strings.HasPrefix(line, "ENV "):
			for _, kv := range strings.Fields(strings.TrimPrefix(line, "ENV ")) {
				k, v, ok := strings.Cut(kv, "=")
				require.True(t, ok, "Dockerfile ENV %q: want KEY=VALUE", kv)
				env[k] = v
			}
		case strings.HasPrefix(line, "ENTRYPOINT "):
			entrypoint = strings.TrimPrefix(line, "ENTRYPOINT ")
		}
	}
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		if cont, ok := strings.CutSuffix(line, `\`); ok {
			inst.WriteString(cont + " ")
			continue
		}
		inst.WriteString(line)
		flush()
	}
	require.NoError(t, sc.Err())
	return env, entrypoint
}

// serviceConfig parses a service's command the way the orchestrator in
// the image would: image ENV, then the service's environment, then flags.
func serviceConfig(t *testing.T, name string, svc composeService, imageEnv map[string]string) app.Config {
	t.Helper()
	env := map[string]string{}
	for k, v := range imageEnv {
		env[k] = v
	}
	for k, v := range svc.Environment {
		s, ok := v.(string)
		require.True(t, ok, "%s: environment %s must be a string, got %T (quote numbers)", name, k, v)
		env[k] = s
	}
	cfg, err := app.ParseConfig(svc.Command, func(k string) string { return env[k] }, io.Discard)
	require.NoError(t, err, "%s: command %q is not accepted by the orchestrator", name, svc.Command)
	return cfg
}

func TestComposeFileShape(t *testing.T) {
	f := loadCompose(t)
	imageEnv, entrypoint := dockerfileEnv(t)
	// An init as PID 1 reaps what provisioning scripts orphan.
	assert.Equal(t, `["/usr/bin/tini", "--", "orchestrator"]`, entrypoint, "Dockerfile ENTRYPOINT")
	assert.Equal(t, "0.0.0.0", imageEnv[app.EnvName("host")], "the image must listen beyond loopback")

	for _, name := range []string{"postgresql", "temporal", "temporal-ui", "surrealdb", "api", "worker"} {
		require.Contains(t, f.Services, name, "service %s", name)
	}
	for _, name := range []string{"api", "worker"} {
		assert.True(t, f.Services[name].Init, "%s: init: true, so orphans of scripts are reaped", name)
	}
	for name, svc := range f.Services {
		assert.True(t, svc.Image != "" || svc.Build != nil, "%s: no image or build", name)
		for _, dep := range svc.DependsOn {
			assert.Contains(t, f.Services, dep, "%s depends on unknown service %s", name, dep)
		}
		for _, v := range svc.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if !strings.HasPrefix(src, "/") && !strings.HasPrefix(src, ".") {
				assert.Contains(t, f.Volumes, src, "%s: named volume %s is not declared", name, src)
			}
		}
	}
	assert.Contains(t, f.Services["surrealdb"].Image, "surrealdb/surrealdb:v2")

	// hostIsService: an address inside the deployment names a service.
	hostIsService := func(name, what, hostport string) {
		host, _, err := net.SplitHostPort(hostport)
		require.NoError(t, err, "%s %s %q", name, what, hostport)
		assert.Contains(t, f.Services, host, "%s %s %q names no service", name, what, hostport)
	}
	// Temporal is the orchestrator's own temporal mode on the compose
	// PostgreSQL, announcing an address the other containers can dial.
	tcfg := serviceConfig(t, "temporal", f.Services["temporal"], imageEnv)
	assert.Equal(t, app.ModeTemporal, tcfg.Mode)
	assert.Equal(t, app.TemporalIPHostname, tcfg.TemporalIP)
	assert.Equal(t, 7233, tcfg.TemporalPort)
	pgURL, err := url.Parse(tcfg.TemporalDB)
	require.NoError(t, err)
	hostIsService("temporal", "--temporal-db", pgURL.Host)
	assert.NotEmpty(t, tcfg.TemporalDBPasswordFile, "temporal: the password comes from a secret file")
	_, hasPassword := pgURL.User.Password()
	assert.False(t, hasPassword, "temporal: no password in the --temporal-db URL")
	assert.Contains(t, f.Services["postgresql"].Environment, "POSTGRES_PASSWORD_FILE", "PostgreSQL's password from the same secret")
	for name, mode := range map[string]app.Mode{"api": app.ModeAPI, "worker": app.ModeWorker} {
		svc := f.Services[name]
		cfg := serviceConfig(t, name, svc, imageEnv)
		assert.Equal(t, mode, cfg.Mode, name)
		hostIsService(name, "--temporal-address", cfg.TemporalAddress)
		assert.Equal(t, net.JoinHostPort("temporal", strconv.Itoa(tcfg.TemporalPort)), cfg.TemporalAddress, "%s dials the temporal service's frontend", name)
		assert.Equal(t, app.StorageSurrealServer, cfg.StorageType, "%s: api and workers must share one store", name)
		u, err := url.Parse(cfg.Store.SurrealURL)
		require.NoError(t, err)
		hostIsService(name, "--surrealdb-url", u.Host)
	}

	api := serviceConfig(t, "api", f.Services["api"], imageEnv)
	assert.Equal(t, "0.0.0.0", api.Host)
	assert.Contains(t, f.Services["api"].Ports, "8080:8080")

	worker := f.Services["worker"]
	wcfg := serviceConfig(t, "worker", worker, imageEnv)
	assert.Empty(t, worker.ContainerName, "worker must not fix container_name: it is scaled")
	assert.Empty(t, worker.Ports, "worker must not publish ports: it is scaled")
	var scripts, socket bool
	for _, v := range worker.Volumes {
		src, dst, _ := strings.Cut(v, ":")
		dst, _, _ = strings.Cut(dst, ":")
		socket = socket || src == "/var/run/docker.sock"
		if strings.HasPrefix(wcfg.ProvisioningPath, dst+"/") {
			scripts = true
			local := filepath.Join(testsupport.RepoRoot(t), src, strings.TrimPrefix(wcfg.ProvisioningPath, dst))
			assert.FileExists(t, local, "worker --provisioning-path is not in the mounted scripts")
		}
	}
	assert.True(t, socket, "worker must mount the Docker socket for test environments")
	assert.True(t, scripts, "worker --provisioning-path %s is not on a mounted volume", wcfg.ProvisioningPath)

	// Both halves agree on where the work goes.
	assert.Equal(t, api.TemporalAddress, wcfg.TemporalAddress)
	assert.Equal(t, api.TemporalNamespace, wcfg.TemporalNamespace)
	assert.Equal(t, api.TaskQueue, wcfg.TaskQueue)
	assert.Equal(t, api.Store.SurrealURL, wcfg.Store.SurrealURL)
}

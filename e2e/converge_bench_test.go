package e2e

// BenchmarkTestEnvConverge3x2: converging a 3-node environment with two
// taskservs per node through the REST API (POST .../converge: a workflow
// update, one ConvergeTaskserv activity per install, store projections)
// against the same nu commands run by hand with `docker exec`
// (testdata/docker_exec_converge.sh) in the same nodes, in the same order,
// in the same run:
//
//	ORCHESTRATOR_REQUIRE_DOCKER=1 go test -run '^$' -bench TestEnvConverge3x2 -benchtime 5x ./e2e/

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/provisioning/orchestrator/internal/app"
	"github.com/provisioning/orchestrator/testenv"
	"github.com/provisioning/orchestrator/workflows"
)

// converge3x2Nodes: one control plane (converged first), two workers (in
// parallel after it), two taskservs each.
var converge3x2Nodes = []struct {
	name, role string
	taskservs  []string
}{
	{"cp-01", testenv.RoleControlPlane, []string{"etcd", "containerd"}},
	{"worker-01", testenv.RoleWorker, []string{"containerd", "kubelet"}},
	{"worker-02", testenv.RoleWorker, []string{"containerd", "kubelet"}},
}

var convergeMSRE = regexp.MustCompile(`converge_ms=(\d+)`)

func BenchmarkTestEnvConverge3x2(b *testing.B) {
	if _, err := exec.LookPath("docker"); err != nil {
		b.Skip("the docker exec baseline needs the docker CLI on PATH")
	}
	script, err := filepath.Abs("testdata/docker_exec_converge.sh")
	if err != nil {
		b.Fatal(err)
	}
	// No simulated work in the provider: the figures are the cost of
	// running nu in the nodes and of orchestrating it.
	d := startDockerApp(b, "e2e-bench", func(c *app.Config) {
		c.ScriptEnv = slices.DeleteFunc(c.ScriptEnv, func(kv string) bool { return strings.HasPrefix(kv, "PROVISIONING_DEMO_DELAY_MS=") })
		c.ScriptEnv = append(c.ScriptEnv, "PROVISIONING_DEMO_DELAY_MS=0")
	})
	base := baseURL(d.app)
	hc := &http.Client{Timeout: 5 * time.Minute}
	post := func(path string, body any) []byte {
		raw, _ := json.Marshal(body)
		resp, err := hc.Post(base+path, "application/json", bytes.NewReader(raw))
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		var env struct {
			Data json.RawMessage `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&env); err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("POST %s: %d %v", path, resp.StatusCode, err)
		}
		return env.Data
	}
	var nodes []map[string]any
	for _, n := range converge3x2Nodes {
		nodes = append(nodes, map[string]any{"name": n.name, "role": n.role, "taskservs": n.taskservs})
	}
	var id string
	if err := json.Unmarshal(post("/test/environments/create", map[string]any{
		"config": map[string]any{"type": "cluster_topology", "base_image": d.image, "topology": map[string]any{"nodes": nodes}},
		"infra":  "bench", "auto_start": true,
	}), &id); err != nil {
		b.Fatal(err)
	}
	var st testenv.EnvState
	deadline := time.Now().Add(3 * time.Minute)
	for {
		resp, err := hc.Get(base + "/test/environments/" + id)
		if err != nil {
			b.Fatal(err)
		}
		var env struct {
			Data testenv.EnvState `json:"data"`
		}
		err = json.NewDecoder(resp.Body).Decode(&env)
		resp.Body.Close()
		if err != nil {
			b.Fatal(err)
		}
		st = env.Data
		if st.Status == workflows.EnvReady || st.Status == workflows.EnvError || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st.Status != workflows.EnvReady {
		b.Fatalf("environment %s: %s %s", id, st.Status, st.Error)
	}
	// The script's phases, with the containers the orchestrator made.
	containers := map[string]string{}
	for _, n := range st.Nodes {
		containers[n.Node] = n.ContainerID
	}
	var cp, workers []string
	for _, n := range converge3x2Nodes {
		spec := containers[n.name] + ":" + n.name + ":" + strings.Join(n.taskservs, ",")
		if n.role == testenv.RoleControlPlane {
			cp = append(cp, spec)
		} else {
			workers = append(workers, spec)
		}
	}
	args := []string{script, "bench", testenv.DefaultSettings, strings.Join(cp, ";"), strings.Join(workers, ";")}

	apiConverge := func() float64 {
		t0 := time.Now()
		var rep testenv.ConvergeReport
		if err := json.Unmarshal(post("/test/environments/"+id+"/converge", map[string]any{"idempotence": false}), &rep); err != nil {
			b.Fatal(err)
		}
		if !rep.Passed || len(rep.Converge) != 6 {
			b.Fatalf("converge: passed %v, %d installs, %s", rep.Passed, len(rep.Converge), rep.Error)
		}
		return ms(time.Since(t0))
	}
	execConverge := func() float64 {
		out, err := exec.Command("bash", args...).CombinedOutput()
		if err != nil {
			b.Fatalf("%s: %v\n%s", script, err, out)
		}
		m := convergeMSRE.FindSubmatch(out)
		if m == nil {
			b.Fatalf("%s printed no converge_ms: %s", script, out)
		}
		v, _ := strconv.Atoi(string(m[1]))
		return float64(v)
	}
	// Warm-up of both sides (not reported).
	apiConverge()
	execConverge()

	var api, direct []float64
	i := 0
	for b.Loop() {
		if i%2 == 0 {
			api = append(api, apiConverge())
			direct = append(direct, execConverge())
		} else {
			direct = append(direct, execConverge())
			api = append(api, apiConverge())
		}
		i++
	}
	ratio := mean(api) / mean(direct)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(mean(api), "api-converge-ms")
	b.ReportMetric(mean(direct), "docker-exec-ms")
	b.ReportMetric(ratio, "ratio-api/exec")
	b.Logf("converge 3 nodes x 2 taskservs, %d iterations, mean ms: API %.0f (%.0f-%.0f), docker exec script %.0f (%.0f-%.0f); API/exec %.2f",
		len(api), mean(api), slices.Min(api), slices.Max(api), mean(direct), slices.Min(direct), slices.Max(direct), ratio)
}

package testenv_test

import (
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/testenv"
)

func TestVolumesValidation(t *testing.T) {
	t.Parallel()
	single := func(vols ...testenv.Volume) testenv.CreateRequest {
		return testenv.CreateRequest{Config: testenv.EnvConfig{Type: testenv.TypeSingleTaskserv, Taskserv: "postgres", BaseImage: "busybox", Volumes: vols}}
	}
	topo := func(config []testenv.Volume, node ...testenv.Volume) testenv.CreateRequest {
		return testenv.CreateRequest{Config: testenv.EnvConfig{Type: testenv.TypeClusterTopology, BaseImage: "busybox", Volumes: config,
			Topology: &testenv.Topology{Nodes: []testenv.Node{{Name: "db"}, {Name: "app", Volumes: node}}}}}
	}
	many := make([]testenv.Volume, testenv.MaxVolumes+1)
	for i := range many {
		many[i] = testenv.Volume{Name: "v" + strings.Repeat("x", i), Path: "/v/" + strings.Repeat("x", i+1)}
	}
	for _, tc := range []struct {
		name  string
		req   testenv.CreateRequest
		field string
	}{
		{"bad name", single(testenv.Volume{Name: "Data!", Path: "/data"}), "config.volumes[0].name"},
		{"relative path", single(testenv.Volume{Name: "data", Path: "data"}), "config.volumes[0].path"},
		{"root", single(testenv.Volume{Name: "data", Path: "/"}), "config.volumes[0].path"},
		{"unclean path", single(testenv.Volume{Name: "data", Path: "/var/../etc"}), "config.volumes[0].path"},
		{"trailing slash", single(testenv.Volume{Name: "data", Path: "/data/"}), "config.volumes[0].path"},
		{"shell characters", single(testenv.Volume{Name: "data", Path: "/data;rm -rf"}), "config.volumes[0].path"},
		{"duplicate name", single(testenv.Volume{Name: "data", Path: "/a"}, testenv.Volume{Name: "data", Path: "/b"}), "config.volumes[1]"},
		{"duplicate path", single(testenv.Volume{Name: "a", Path: "/data"}, testenv.Volume{Name: "b", Path: "/data"}), "config.volumes[1]"},
		{"too many", single(many...), "config.volumes"},
		{"node clashes with config", topo([]testenv.Volume{{Name: "data", Path: "/data"}}, testenv.Volume{Name: "data", Path: "/other"}),
			"config.topology.nodes[1].volumes[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.req.Validate(testenv.DefaultTemplates())
			var fe *testenv.FieldError
			require.ErrorAs(t, err, &fe)
			assert.Equal(t, tc.field, fe.Field, err.Error())
		})
	}
}

// config.volumes go to every node, a node's own volumes add to them, and
// each node gets its own engine volume.
func TestVolumesInThePlan(t *testing.T) {
	t.Parallel()
	id := uuid.NewString()
	req := testenv.CreateRequest{Config: testenv.EnvConfig{Type: testenv.TypeClusterTopology, BaseImage: "busybox",
		Volumes: []testenv.Volume{{Name: "logs", Path: "/var/log/app"}},
		Topology: &testenv.Topology{Nodes: []testenv.Node{
			{Name: "db", Volumes: []testenv.Volume{{Name: "data", Path: "/var/lib/postgresql"}}},
			{Name: "app"},
		}}}}
	p, err := testenv.BuildPlan(id, req, testenv.DefaultTemplates(), "")
	require.NoError(t, err)
	db, app := p.Nodes[0], p.Nodes[1]
	assert.Equal(t, []testenv.VolumePlan{
		{Name: "logs", VolumeName: db.ContainerName + "-logs", Path: "/var/log/app"},
		{Name: "data", VolumeName: db.ContainerName + "-data", Path: "/var/lib/postgresql"},
	}, db.Volumes)
	assert.Equal(t, []testenv.VolumePlan{{Name: "logs", VolumeName: app.ContainerName + "-logs", Path: "/var/log/app"}}, app.Volumes)

	// No volumes: none in the plan.
	p, err = testenv.BuildPlan(id, testenv.CreateRequest{Config: testenv.EnvConfig{Type: testenv.TypeSingleTaskserv, Taskserv: "etcd", BaseImage: "busybox"}},
		testenv.DefaultTemplates(), "")
	require.NoError(t, err)
	assert.Empty(t, p.Nodes[0].Volumes)
}

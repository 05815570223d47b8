package docker

import (
	"testing"
	"time"

	"github.com/docker/docker/api/types/volume"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/provisioning/orchestrator/testenv"
)

// A node's named volume is created with the environment's labels, mounted
// at its path, reused by a retried create, and removed with the
// environment.
func TestDockerNodeVolumes(t *testing.T) {
	t.Parallel()
	e := newDockerEnv(t, "db")
	ctx := dockerCtx(t)
	volName := e.plan.Nodes[0].ContainerName + "-data"
	e.plan.Nodes[0].Volumes = []testenv.VolumePlan{{Name: "data", VolumeName: volName, Path: "/var/lib/data"}}
	id := e.up(t, ctx)[0].ContainerID

	v, err := e.rt.Client.VolumeInspect(ctx, volName)
	require.NoError(t, err)
	assert.Equal(t, e.plan.EnvID, v.Labels[testenv.EnvIDLabel])
	assert.Equal(t, testenv.ManagedByValue, v.Labels[testenv.ManagedByLabel])
	assert.Equal(t, "db", v.Labels[testenv.NodeLabel])

	ins, err := e.rt.Client.ContainerInspect(ctx, id)
	require.NoError(t, err)
	require.Len(t, ins.Mounts, 1)
	assert.Equal(t, volName, ins.Mounts[0].Name)
	assert.Equal(t, "/var/lib/data", ins.Mounts[0].Destination)
	res, err := e.rt.Exec(ctx, id, []string{"sh", "-c", "echo kept > /var/lib/data/f && cat /var/lib/data/f"}, 10*time.Second)
	require.NoError(t, err)
	require.Equal(t, 0, res.ExitCode, res.Stderr)

	// Creating the node again (a retried activity) reuses the volume.
	_, err = e.rt.CreateNode(ctx, e.plan, e.plan.Nodes[0])
	require.NoError(t, err)

	removed, err := e.rt.RemoveEnvironment(ctx, e.plan.EnvID)
	require.NoError(t, err)
	assert.Equal(t, testenv.RemovedCounts{Containers: 1, Networks: 1, Volumes: 1}, removed)
	_, err = e.rt.Client.VolumeInspect(ctx, volName)
	assert.Error(t, err, "the volume is gone")
}

// A volume name that another environment (or anything else) already uses
// is refused, never mounted.
func TestDockerNodeVolumeRefusesForeignVolume(t *testing.T) {
	t.Parallel()
	e := newDockerEnv(t, "db")
	ctx := dockerCtx(t)
	volName := e.plan.Nodes[0].ContainerName + "-data"
	_, err := e.rt.Client.VolumeCreate(ctx, volume.CreateOptions{Name: volName})
	require.NoError(t, err)
	t.Cleanup(func() { _ = e.rt.Client.VolumeRemove(ctx, volName, true) })
	e.plan.Nodes[0].Volumes = []testenv.VolumePlan{{Name: "data", VolumeName: volName, Path: "/data"}}
	e.createNetwork(t, ctx)
	_, err = e.rt.CreateNode(ctx, e.plan, e.plan.Nodes[0])
	require.Error(t, err)
	assert.Contains(t, err.Error(), "does not belong to environment")
}

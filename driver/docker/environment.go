package docker

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/provisioning/orchestrator/driver"
	"github.com/provisioning/orchestrator/testenv"
)

// CreateEnvironment makes the network and containers of a plan, checking
// images first so that a missing image creates nothing (*driver.ImageError).
// Every step is idempotent (by name and label), so a retry after a crash
// continues where the last attempt stopped. A requested subnet that overlaps
// an engine network, or no free subnet, is a *driver.SpecError. With start,
// the containers are started too (see StartEnvironment). It calls ctx's
// heartbeat (driver.WithHeartbeat) between steps.
func (r *Runtime) CreateEnvironment(ctx context.Context, p testenv.Plan, start bool) (testenv.EnvInfo, error) {
	log := r.logger().With("env_id", p.EnvID)
	hb := driver.NewHeartbeater(ctx)

	seen := map[string]bool{}
	for _, n := range p.Nodes {
		if seen[n.Image] {
			continue
		}
		seen[n.Image] = true
		hb.Now("image " + n.Image)
		if err := r.EnsureImage(ctx, n.Image); err != nil {
			return testenv.EnvInfo{}, err
		}
	}

	hb.Now("network")
	netID, subnet, err := r.createEnvNetwork(ctx, p)
	if err != nil {
		return testenv.EnvInfo{}, err
	}
	netName := networkName(p)
	log.Info("environment network ready", "network", netName, "subnet", subnet)
	for _, n := range p.Nodes {
		hb.Now("create " + n.Name)
		if _, err := r.CreateNode(ctx, p, n); err != nil {
			return testenv.EnvInfo{}, fmt.Errorf("create node %s: %w", n.Name, err)
		}
	}
	if start {
		if err := r.startAll(ctx, p.EnvID, hb); err != nil {
			return testenv.EnvInfo{}, err
		}
	}
	nodes, err := r.InspectNodes(ctx, p.EnvID)
	if err != nil {
		return testenv.EnvInfo{}, err
	}
	sortNodes(nodes, p)
	log.Info("environment created", "nodes", len(nodes), "started", start)
	return testenv.EnvInfo{NetworkID: netID, Subnet: subnet, Nodes: nodes}, nil
}

// subnetAttempts bounds how often createEnvNetwork picks another free
// subnet after another engine client took the one it chose.
const subnetAttempts = 8

// createEnvNetwork creates the plan's network. Without a requested subnet
// it picks the first free one; picking and creating are not atomic on the
// engine, so environments created at once by this process take turns
// (subnetMu), and one that loses the race to another process (the engine
// answers "Pool overlaps") picks again. A requested subnet that overlaps an
// engine network is a *driver.SpecError.
func (r *Runtime) createEnvNetwork(ctx context.Context, p testenv.Plan) (netID, subnet string, err error) {
	r.subnetMu.Lock()
	defer r.subnetMu.Unlock()
	requested := p.Subnet != ""
	// lost holds subnets another client took first: its network may not be
	// listed yet while the engine already holds its address pool.
	var lost []string
	for attempt := 1; ; attempt++ {
		used, err := r.UsedSubnets(ctx)
		if err != nil {
			return "", "", err
		}
		used = append(used, lost...)
		existing, _ := r.networkSubnet(ctx, networkName(p))
		switch {
		case existing != "":
			// An earlier attempt made our network: keep its subnet.
			p.Subnet = existing
		case !requested:
			if p.Subnet, err = testenv.ChooseSubnet(used); err != nil {
				return "", "", &driver.SpecError{Msg: err.Error(), Err: err}
			}
		default:
			for _, u := range used {
				overlap, oerr := testenv.SubnetsOverlap(p.Subnet, u)
				if oerr == nil && overlap {
					return "", "", &driver.SpecError{
						Msg: fmt.Sprintf("config.topology.network.subnet: %s overlaps the existing network subnet %s", p.Subnet, u)}
				}
			}
		}
		netID, subnet, err = r.CreateNetwork(ctx, p)
		if err == nil || requested || existing != "" || !isPoolOverlap(err) || attempt == subnetAttempts {
			return netID, subnet, err
		}
		r.logger().Info("subnet taken by another network meanwhile; choosing another", "env_id", p.EnvID, "subnet", p.Subnet, "attempt", attempt)
		lost = append(lost, p.Subnet)
		p.Subnet = ""
	}
}

// isPoolOverlap reports the engine's refusal of a subnet that another
// network got first.
func isPoolOverlap(err error) bool {
	return strings.Contains(err.Error(), "overlaps with other one")
}

// StartEnvironment starts every container of an environment (created
// without auto_start). Starting a running container succeeds, so retries
// are harmless; a node that exits right after its start (bad image
// command) is a *driver.SpecError.
func (r *Runtime) StartEnvironment(ctx context.Context, envID string) error {
	return r.startAll(ctx, envID, driver.NewHeartbeater(ctx))
}

func (r *Runtime) startAll(ctx context.Context, envID string, hb *driver.Heartbeater) error {
	nodes, err := r.InspectNodes(ctx, envID)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		hb.Now("start " + n.Node)
		if err := r.StartNode(ctx, n.ContainerID); err != nil {
			return fmt.Errorf("start node %s: %w", n.Node, err)
		}
	}
	nodes, err = r.InspectNodes(ctx, envID)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		if n.State != "running" {
			return &driver.SpecError{Msg: fmt.Sprintf("node %s did not keep running (state %s, exit code %d)", n.Node, n.State, n.ExitCode)}
		}
	}
	return nil
}

// DefaultTestTimeout bounds one test whose spec gives no timeout.
const DefaultTestTimeout = time.Minute

// RunTests execs each test in its node's container (nodes map node names
// to containers), one after another, calling ctx's heartbeat before each
// test and while it runs, and reports every result; a failing test does not
// stop the run. Only ctx ending stops it, with ctx's error.
func (r *Runtime) RunTests(ctx context.Context, tests []testenv.TestSpec, nodes []testenv.NodeStatus, opts driver.RunOptions) (testenv.TestRun, error) {
	hb := driver.NewHeartbeater(ctx)
	containers := map[string]string{}
	for _, n := range nodes {
		containers[n.Node] = n.ContainerID
	}
	run := testenv.TestRun{Passed: true, Total: len(tests)}
	for _, t := range tests {
		hb.Now(t.Name)
		res := testenv.TestResult{Name: t.Name, Node: t.Node, Command: t.Command}
		id, ok := containers[t.Node]
		if !ok {
			res.Error = "no container for node " + t.Node
			res.ExitCode = -1
		} else {
			timeout := time.Duration(t.TimeoutSeconds) * time.Second
			if timeout <= 0 {
				timeout = DefaultTestTimeout
			}
			var err error
			if t.Taskserv != "" {
				var cr testenv.TestResult
				cr, err = r.checkTaskserv(ctx, id, t, opts, timeout)
				res.Command, res.ExitCode, res.Stdout, res.Stderr, res.TimedOut, res.DurationMS =
					cr.Command, cr.ExitCode, cr.Stdout, cr.Stderr, cr.TimedOut, cr.DurationMS
			} else {
				var er ExecResult
				er, err = r.Exec(ctx, id, t.Command, timeout)
				res.ExitCode, res.Stdout, res.Stderr, res.TimedOut, res.DurationMS =
					er.ExitCode, er.Stdout, er.Stderr, er.TimedOut, er.Duration.Milliseconds()
			}
			if ctx.Err() != nil {
				return testenv.TestRun{}, ctx.Err()
			}
			if err != nil {
				res.Error = err.Error()
				if res.ExitCode == 0 {
					res.ExitCode = -1
				}
			}
			if res.TimedOut && res.Error == "" {
				res.Error = fmt.Sprintf("timed out after %s", timeout)
			}
		}
		res.Passed = res.ExitCode == 0 && !res.TimedOut && res.Error == ""
		if !res.Passed {
			run.Passed = false
			run.Failed++
		}
		run.Results = append(run.Results, res)
	}
	return run, nil
}

// sortNodes orders nodes as the plan lists them (the engine lists by name).
func sortNodes(nodes []testenv.NodeStatus, p testenv.Plan) {
	order := map[string]int{}
	for i, n := range p.Nodes {
		order[n.Name] = i
	}
	slices.SortFunc(nodes, func(x, y testenv.NodeStatus) int { return order[x.Node] - order[y.Node] })
}

package docker

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/google/uuid"
	"github.com/provisioning/orchestrator/driver"
	"github.com/provisioning/orchestrator/testenv"
)

// ToolchainDir is where a node gets the pinned nu binary (bin/nu) and the
// provisioning scripts (nulib/) when the orchestrator converges it.
const ToolchainDir = "/opt/provisioning"

// Toolchain is what converging a node needs inside it: the static nu
// binary (it runs in any Linux image, busybox included) and the user's
// provisioning script with the directory it lives in (its modules).
type Toolchain struct {
	// NuPath is the nu executable on the worker's host.
	NuPath string
	// ScriptPath is the provisioning script; its whole directory is copied.
	ScriptPath string
}

// InstallToolchain copies tc into the container under ToolchainDir through
// the Engine API (so a remote engine works too: nothing is bind-mounted from
// the worker's host) and returns the in-container paths of nu and of the
// script. Files get read-only modes (nu 0555, scripts 0444); a node's root
// user can still change them, so a converge is isolated per node, not
// sandboxed within it. Copying again replaces the files, so a
// retried install is harmless. The archive is streamed, not buffered.
func (r *Runtime) InstallToolchain(ctx context.Context, containerID string, tc Toolchain) (nu, script string, err error) {
	nuInfo, err := os.Stat(tc.NuPath)
	if err != nil {
		return "", "", fmt.Errorf("toolchain: nu executable: %w", err)
	}
	scriptDir := filepath.Dir(tc.ScriptPath)
	if _, err := os.Stat(tc.ScriptPath); err != nil {
		return "", "", fmt.Errorf("toolchain: provisioning script: %w", err)
	}
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(writeToolchainTar(pw, tc.NuPath, nuInfo, scriptDir))
	}()
	defer pr.Close()
	if err := r.Client.CopyToContainer(ctx, containerID, "/", pr, container.CopyToContainerOptions{}); err != nil {
		return "", "", fmt.Errorf("copy the provisioning toolchain into container %s: %w", shortID(containerID), err)
	}
	return path.Join(ToolchainDir, "bin", "nu"), path.Join(ToolchainDir, "nulib", filepath.Base(tc.ScriptPath)), nil
}

// writeToolchainTar writes opt/provisioning/bin/nu and the script directory
// as opt/provisioning/nulib/... Symlinks and special files in the script
// directory are skipped: only regular files and directories are copied.
func writeToolchainTar(w io.Writer, nuPath string, nuInfo fs.FileInfo, scriptDir string) error {
	tw := tar.NewWriter(w)
	root := ToolchainDir[1:] // tar paths are relative to the extraction point "/"
	for _, d := range []string{path.Dir(root), root, root + "/bin", root + "/nulib"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}); err != nil {
			return err
		}
	}
	// Where installs write their change reports (NodeResultDir).
	results := strings.TrimPrefix(NodeResultDir, "/")
	for _, d := range []string{"var", "var/lib", "var/lib/provisioning", results} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}); err != nil {
			return err
		}
	}
	if err := addFile(tw, nuPath, root+"/bin/nu", nuInfo.Size(), 0o555); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: root + "/lib/", Mode: 0o755}); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(convergeWrapperPath, "/"), Mode: 0o444, Size: int64(len(convergeWrapper))}); err != nil {
		return err
	}
	if _, err := io.WriteString(tw, convergeWrapper); err != nil {
		return err
	}
	err := filepath.WalkDir(scriptDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(scriptDir, p)
		if err != nil || rel == "." {
			return err
		}
		name := root + "/nulib/" + filepath.ToSlash(rel)
		switch {
		case d.IsDir():
			return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o555})
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			return addFile(tw, p, name, info.Size(), 0o444)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("toolchain: read %s: %w", scriptDir, err)
	}
	return tw.Close()
}

func addFile(tw *tar.Writer, src, name string, size int64, mode int64) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: size}); err != nil {
		return err
	}
	_, err = io.CopyN(tw, f, size)
	return err
}

// Directories of a converged node: the provider's state root and where it
// records the taskservs installed in the node (the demo provider's
// `taskserv check` reads the latter).
const (
	NodeStateDir    = "/var/lib/provisioning/state"
	NodeTaskservDir = "/var/lib/provisioning/taskservs"
)

// DefaultConvergeTimeout bounds one taskserv install.
const DefaultConvergeTimeout = 30 * time.Minute

// NodeResultDir holds the result files (testenv.ResultFileEnv) of a
// node's installs, one per taskserv.
const NodeResultDir = "/var/lib/provisioning/results"

// maxReportBytes bounds a result file the orchestrator reads back (the
// node's stderr tail, which carries it, is 64 KiB).
const maxReportBytes = 32 << 10

// reportMarker starts the change report on a converge's stderr.
const reportMarker = "\x1eorchestrator:change-report\x1e"

// convergeWrapperPath is the wrapper installs run through: it runs the
// provisioning script and then prints the script's change report on stderr
// after reportMarker, so one exec returns both (reading the file back
// through the Engine's archive API would cost another filesystem mount per
// install on some storage drivers).
const convergeWrapperPath = ToolchainDir + "/lib/converge.nu"

// convergeWrapper is convergeWrapperPath's content. It runs the script as
// a child of the same nu binary with the arguments as given (no shell, no
// string building), streams its output, and exits with its exit code.
const convergeWrapper = `# Written by the provisioning orchestrator: runs <script> <args...> with this nu
# and then prints the change report the script wrote to $env.PROVISIONING_RESULT_FILE
# on stderr after a marker line. Exits with the script's exit code.
def --wrapped main [script: string, ...args] {
    let code = try { ^$nu.current-exe $script ...$args; 0 } catch {|e| $e.exit_code? | default 1 }
    let file = ($env.PROVISIONING_RESULT_FILE? | default "")
    if $file != "" and ($file | path exists) {
        let size = (ls $file | get 0.size | into int)
        print --stderr --no-newline "\n\u{1e}orchestrator:change-report\u{1e}\n"
        if $size > ` + "32768" + ` {
            print --stderr $"too-large ($size)"
        } else {
            print --stderr --no-newline (open --raw $file)
        }
    }
    exit $code
}
`

// Converge installs spec's taskserv inside the node: it copies the toolchain
// in (unless the node has it already), runs `nu <script> taskserv create
// ...` there with env plus the node's PROVISIONING_STATE_DIR,
// PROVISIONING_TASKSERV_DIR and PROVISIONING_RESULT_FILE (whatever env
// says; a path no earlier install used, so an old report is never read as
// this one's), and reads back the change report the script wrote, if any. The Runtime's Toolchain must be set:
// without it the install is a *driver.SpecError.
func (r *Runtime) Converge(ctx context.Context, containerID string, spec testenv.ConvergeSpec, env []string) (driver.ConvergeResult, error) {
	hb := driver.NewHeartbeater(ctx)
	resultFile := path.Join(NodeResultDir, spec.Taskserv+"-"+uuid.NewString()+".json")
	hb.Now("toolchain " + spec.Node)
	nu, script, err := r.ensureToolchain(ctx, containerID)
	if err != nil {
		return driver.ConvergeResult{}, err
	}
	hb.Now("converge " + spec.Node + " " + spec.Taskserv)
	argv := append([]string{nu, script}, spec.Args()...)
	wrapped := append([]string{nu, "--no-config-file", convergeWrapperPath}, argv[1:]...)
	res, err := r.provisioningExec(ctx, containerID, wrapped, env, resultFile, DefaultConvergeTimeout)
	res.Name = "converge " + spec.Taskserv
	res.Node = spec.Node
	res.Command = argv // what the user's script was run with
	out := driver.ConvergeResult{TestResult: res}
	if err != nil {
		return out, err
	}
	out.Stderr, out.Report, out.ReportError = splitReport(res.Stderr, resultFile)
	return out, nil
}

// splitReport separates the wrapper's change report from the script's own
// stderr and parses it: no report is nil and "".
func splitReport(stderr, file string) (rest string, rep *testenv.ChangeReport, reportErr string) {
	i := strings.LastIndex(stderr, reportMarker)
	if i < 0 {
		return stderr, nil, ""
	}
	rest, data := strings.TrimSuffix(stderr[:i], "\n"), strings.TrimPrefix(stderr[i+len(reportMarker):], "\n")
	if size, ok := strings.CutPrefix(strings.TrimSpace(data), "too-large "); ok {
		return rest, nil, fmt.Sprintf("%s is %s bytes, more than the %d a report may have", file, size, maxReportBytes)
	}
	if strings.TrimSpace(data) == "" {
		return rest, nil, ""
	}
	rep, err := testenv.ParseChangeReport([]byte(data))
	if err != nil {
		return rest, nil, fmt.Sprintf("%s: %v", file, err)
	}
	return rest, rep, ""
}

// provisioningExec runs the provisioning script's argv in a node with the
// node's provisioning directories (and resultFile, when set) in its
// environment.
func (r *Runtime) provisioningExec(ctx context.Context, containerID string, argv, env []string, resultFile string, timeout time.Duration) (testenv.TestResult, error) {
	var runEnv []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if k != "PROVISIONING_STATE_DIR" && k != "PROVISIONING_TASKSERV_DIR" && k != testenv.ResultFileEnv {
			runEnv = append(runEnv, kv)
		}
	}
	runEnv = append(runEnv, "PROVISIONING_STATE_DIR="+NodeStateDir, "PROVISIONING_TASKSERV_DIR="+NodeTaskservDir)
	if resultFile != "" {
		runEnv = append(runEnv, testenv.ResultFileEnv+"="+resultFile)
	}
	er, err := r.ExecEnv(ctx, containerID, argv, runEnv, timeout)
	res := testenv.TestResult{Command: argv, ExitCode: er.ExitCode, TimedOut: er.TimedOut,
		Stdout: er.Stdout, Stderr: er.Stderr, DurationMS: er.Duration.Milliseconds()}
	if err != nil {
		return res, err
	}
	res.Passed = er.ExitCode == 0 && !er.TimedOut
	return res, nil
}

// checkTaskserv runs the provisioning script's `taskserv check` for t in
// the node (see testenv.TestSpec.Taskserv).
func (r *Runtime) checkTaskserv(ctx context.Context, containerID string, t testenv.TestSpec, opts driver.RunOptions, timeout time.Duration) (testenv.TestResult, error) {
	nu, script, err := r.ensureToolchain(ctx, containerID)
	if err != nil {
		return testenv.TestResult{}, err
	}
	argv := append([]string{nu, script}, testenv.CheckArgs(t.Taskserv, opts.Infra, opts.Settings, t.Node)...)
	return r.provisioningExec(ctx, containerID, argv, opts.Env, "", timeout)
}

// ensureToolchain installs the toolchain unless the node already has a nu
// of the same size (an earlier taskserv of the same node copied it).
func (r *Runtime) ensureToolchain(ctx context.Context, containerID string) (nu, script string, err error) {
	if r.Toolchain.NuPath == "" || r.Toolchain.ScriptPath == "" {
		return "", "", &driver.SpecError{Msg: "this worker has no nu and provisioning script to run in nodes (--nu-path, --provisioning-path)"}
	}
	nu, script = path.Join(ToolchainDir, "bin", "nu"), path.Join(ToolchainDir, "nulib", filepath.Base(r.Toolchain.ScriptPath))
	if _, done := r.toolchains.Load(containerID); done {
		return nu, script, nil
	}
	defer func() {
		if err == nil {
			r.toolchains.Store(containerID, true)
		}
	}()
	local, err := os.Stat(r.Toolchain.NuPath)
	if err != nil {
		return "", "", fmt.Errorf("toolchain: nu executable: %w", err)
	}
	if st, err := r.Client.ContainerStatPath(ctx, containerID, nu); err == nil && st.Size == local.Size() {
		_, serr := r.Client.ContainerStatPath(ctx, containerID, script)
		_, werr := r.Client.ContainerStatPath(ctx, containerID, convergeWrapperPath)
		if serr == nil && werr == nil {
			return nu, script, nil
		}
	}
	return r.InstallToolchain(ctx, containerID, r.Toolchain)
}

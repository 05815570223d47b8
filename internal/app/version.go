package app

import (
	"flag"
	"fmt"
	"io"
	"maps"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
)

// ModeVersion is the `orchestrator version` subcommand: print what this
// binary is (version, commit, Go version, storage backends compiled in).
const ModeVersion Mode = "version"

// Version is the orchestrator's release version. Release builds set it:
//
//	go build -ldflags "-X github.com/provisioning/orchestrator/internal/app.Version=v1.4.0" ./cmd/orchestrator
//
// Left at "dev", `orchestrator version` prints the main module's version
// from the build info instead when the toolchain recorded one (go install
// module@version; a build in a git checkout gets a pseudo-version).
var Version = "dev"

// BuildInfo describes the running binary, as `orchestrator version` prints
// it.
type BuildInfo struct {
	// Version is Version, else the main module's version, else "dev".
	Version string
	// Commit is the VCS revision the binary was built from; "" when the
	// build recorded none (go test, -buildvcs=false, no .git in a Docker
	// build context).
	Commit string
	// Modified: the working tree had uncommitted changes at build time.
	Modified bool
	// GoVersion is the toolchain that built the binary.
	GoVersion string
	// Backends are the --storage-type values this binary can open, sorted.
	Backends []string
}

// ReadBuildInfo returns this binary's BuildInfo, from Version, the build
// information the Go toolchain embeds (runtime/debug.ReadBuildInfo) and
// the storage backends registered in this build.
func ReadBuildInfo() BuildInfo {
	info := BuildInfo{Version: Version, GoVersion: runtime.Version(), Backends: compiledBackends()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return info
	}
	if info.Version == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		info.Version = bi.Main.Version
	}
	if bi.GoVersion != "" {
		info.GoVersion = bi.GoVersion
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Commit = s.Value
		case "vcs.modified":
			info.Modified = s.Value == "true"
		}
	}
	return info
}

// compiledBackends lists the storage types with a real opener in this
// build: every registered one except those the build left out (see
// builtWithout), so a -tags nosurrealdb binary lists only filesystem.
func compiledBackends() []string { return backendsOf(openers, builtWithout) }

// backendsOf is compiledBackends for a given registry, sorted.
func backendsOf[F any](registered map[string]F, without map[string]bool) []string {
	var out []string
	for _, typ := range slices.Sorted(maps.Keys(registered)) {
		if !without[typ] {
			out = append(out, typ)
		}
	}
	return out
}

// WriteTo prints b in the format of `orchestrator version`: one line per
// fact, label first, stable for scripts to read:
//
//	orchestrator v1.4.0
//	commit   0123abcd… (modified)
//	go       go1.26.8
//	backends filesystem, surrealdb-embedded, surrealdb-server
func (b BuildInfo) WriteTo(w io.Writer) (int64, error) {
	commit := b.Commit
	if commit == "" {
		commit = "unknown"
	}
	if b.Modified {
		commit += " (modified)"
	}
	n, err := fmt.Fprintf(w, "orchestrator %s\ncommit   %s\ngo       %s\nbackends %s\n",
		b.Version, commit, b.GoVersion, strings.Join(b.Backends, ", "))
	return int64(n), err
}

// RunVersion is `orchestrator version`: it prints ReadBuildInfo to stdout.
// It takes no arguments; -h prints its usage to stderr.
func RunVersion(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("orchestrator version", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), `Usage: orchestrator version

Prints the version, the commit the binary was built from, the Go version
and the storage backends compiled in (a build with -tags nosurrealdb has
only filesystem).`)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("version: unexpected argument %q", fs.Arg(0))
	}
	_, err := ReadBuildInfo().WriteTo(stdout)
	return err
}

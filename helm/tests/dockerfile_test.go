package charttest

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// The five service binaries the image must carry.
var serviceBinaries = []string{"ingest-gateway", "schema-registry", "stream-router", "sink-clickhouse", "enrich-activity"}

// The tools beside them: context-topics, which the topics hook Job runs.
var toolBinaries = []string{"context-topics"}

type dockerfile struct {
	// The --bin names of the builder stage's `cargo build`.
	binaries []string
	cargo    string
	uid, gid int64
	// Runtime-stage COPY destinations from the build context -> their source in the repo.
	shipped map[string]string
	// Runtime-stage COPY --from=builder destinations.
	fromBuilder []string
}

type instruction struct{ stage, op, args string }

// parseDockerfile reads the Dockerfile at the root of the repository:
// continuation lines joined, comments dropped, each instruction with its stage.
func parseDockerfile(t *testing.T) dockerfile {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatalf("the Dockerfile: %v", err)
	}
	var lines []string
	cur := ""
	for _, l := range strings.Split(string(raw), "\n") {
		trimmed := strings.TrimSpace(l)
		if strings.HasPrefix(trimmed, "#") {
			continue
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur += strings.TrimSuffix(trimmed, "\\") + " "
			continue
		}
		cur += trimmed
		if strings.TrimSpace(cur) != "" {
			lines = append(lines, strings.TrimSpace(cur))
		}
		cur = ""
	}
	var ins []instruction
	var stages []string
	stage := ""
	fromRe := regexp.MustCompile(`(?i)^FROM\s+\S+(?:\s+AS\s+(\S+))?$`)
	for _, l := range lines {
		op, args, _ := strings.Cut(l, " ")
		op = strings.ToUpper(op)
		if op == "FROM" {
			m := fromRe.FindStringSubmatch(l)
			if m == nil {
				t.Fatalf("Dockerfile: cannot read %q", l)
			}
			stage = strings.ToLower(m[1])
			if stage == "" {
				stage = strconv.Itoa(len(stages))
			}
			stages = append(stages, stage)
			continue
		}
		ins = append(ins, instruction{stage, op, strings.TrimSpace(args)})
	}
	if len(stages) < 2 || !contains(stages, "builder") {
		t.Fatalf("Dockerfile: want a `builder` stage and a runtime stage, found stages %v", stages)
	}
	runtime := stages[len(stages)-1]
	df := dockerfile{shipped: map[string]string{}, uid: -1, gid: -1}
	for _, in := range ins {
		switch {
		case in.stage == "builder" && in.op == "RUN" && strings.Contains(in.args, "cargo build"):
			df.cargo = in.args[strings.Index(in.args, "cargo build"):]
			if end := strings.Index(df.cargo, "&&"); end >= 0 {
				df.cargo = df.cargo[:end]
			}
			f := strings.Fields(df.cargo)
			for i := range f {
				if f[i] == "--bin" && i+1 < len(f) {
					df.binaries = append(df.binaries, f[i+1])
				}
			}
		case in.stage == runtime && in.op == "USER":
			uid, gid, ok := strings.Cut(in.args, ":")
			u, err1 := strconv.ParseInt(uid, 10, 64)
			g, err2 := strconv.ParseInt(gid, 10, 64)
			if !ok || err1 != nil || err2 != nil {
				t.Fatalf("Dockerfile: the runtime USER %q must be numeric UID:GID, so Kubernetes can check runAsNonRoot and the chart can match it", in.args)
			}
			df.uid, df.gid = u, g
		case in.stage == runtime && in.op == "COPY":
			f := strings.Fields(in.args)
			if len(f) < 2 {
				continue
			}
			if strings.HasPrefix(f[0], "--from=") {
				df.fromBuilder = append(df.fromBuilder, f[len(f)-1])
			} else if !strings.HasPrefix(f[0], "--") && len(f) == 2 {
				df.shipped[f[1]] = f[0]
			}
		}
	}
	if df.uid < 0 {
		t.Fatal("Dockerfile: the runtime stage sets no USER")
	}
	return df
}

// The builder builds the five binaries and the tools in release mode from
// the lock file; the runtime stage runs them as a non-root user and carries
// them, and the topics' declaration.
func TestDockerfile(t *testing.T) {
	df := parseDockerfile(t)
	if df.cargo == "" {
		t.Fatal("the builder stage runs no `cargo build`")
	}
	for _, flag := range []string{"--release", "--locked"} {
		if !contains(strings.Fields(df.cargo), flag) {
			t.Errorf("the builder's %q lacks %s", df.cargo, flag)
		}
	}
	got := append([]string{}, df.binaries...)
	want := append(append([]string{}, serviceBinaries...), toolBinaries...)
	sort.Strings(got)
	sort.Strings(want)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("the builder's cargo build names --bin %v, want exactly %v", got, want)
	}
	if df.uid == 0 || df.gid == 0 {
		t.Errorf("the runtime user is root (%d:%d)", df.uid, df.gid)
	}
	if !contains(df.fromBuilder, "/usr/local/bin/") {
		t.Errorf("the runtime stage copies no binaries into /usr/local/bin/ (COPY --from=builder destinations: %v)", df.fromBuilder)
	}
	for dest, src := range df.shipped {
		if _, err := os.Stat(filepath.Join(repoRoot, src)); err != nil {
			t.Errorf("COPY %s %s: no such file in the repository", src, dest)
		}
	}
	if df.shipped["/usr/share/context-pipeline/topics.toml"] != "helm/context-pipeline/topics.toml" {
		t.Errorf("the image must carry helm/context-pipeline/topics.toml at /usr/share/context-pipeline/topics.toml (what context-topics applies); COPYs: %v", df.shipped)
	}
	if df.shipped["/usr/share/context-pipeline/rules.toml"] != "stream-router/rules.toml" {
		t.Errorf("the image must carry stream-router/rules.toml at /usr/share/context-pipeline/rules.toml (the chart's default rules_file); COPYs: %v", df.shipped)
	}
	ignore, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatalf(".dockerignore: %v", err)
	}
	for _, must := range []string{"target", ".git", ".stack"} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(must) + `$`).Match(ignore) {
			t.Errorf(".dockerignore does not leave out %s", must)
		}
	}
	// The chart is left out, but not the declaration context-topics compiles in.
	if !regexp.MustCompile(`(?m)^!helm/context-pipeline/topics\.toml$`).Match(ignore) {
		t.Errorf(".dockerignore leaves out helm/, so it must let helm/context-pipeline/topics.toml in (!helm/context-pipeline/topics.toml)")
	}
}

package charttest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	corev1 "k8s.io/api/core/v1"
)

// Where a file a container reads comes from.
type fileSource struct {
	kind    string // "configmap", "secret", "pvc", "image", "external"
	name    string
	content string // for rendered ConfigMaps and Secrets
	known   bool   // content is known
}

// resolveFile finds what provides `path` in a container: a mounted ConfigMap
// or Secret key, a PVC, or a file the Dockerfile copies into the image.
func resolveFile(r *render, df dockerfile, spec *corev1.PodSpec, c *corev1.Container, path string) (fileSource, error) {
	var best *corev1.VolumeMount
	for i := range c.VolumeMounts {
		m := &c.VolumeMounts[i]
		if strings.HasPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/") && (best == nil || len(m.MountPath) > len(best.MountPath)) {
			best = m
		}
	}
	if best == nil {
		if _, ok := df.shipped[path]; ok {
			return fileSource{kind: "image", name: path}, nil
		}
		if contains(df.fromBuilder, path) {
			return fileSource{kind: "image", name: path}, nil
		}
		return fileSource{}, fmt.Errorf("%s is neither mounted nor copied into the image by the Dockerfile", path)
	}
	rel := strings.TrimPrefix(path, strings.TrimSuffix(best.MountPath, "/")+"/")
	var vol *corev1.Volume
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == best.Name {
			vol = &spec.Volumes[i]
		}
	}
	if vol == nil {
		return fileSource{}, fmt.Errorf("%s: volume %s is not defined", path, best.Name)
	}
	keyFor := func(items []corev1.KeyToPath) (string, bool) {
		if len(items) == 0 {
			return rel, true
		}
		for _, it := range items {
			if it.Path == rel {
				return it.Key, true
			}
		}
		return "", false
	}
	switch {
	case vol.ConfigMap != nil:
		key, ok := keyFor(vol.ConfigMap.Items)
		if !ok {
			return fileSource{}, fmt.Errorf("%s: ConfigMap volume %s projects no %s", path, vol.Name, rel)
		}
		o, rendered := r.get("ConfigMap", vol.ConfigMap.Name)
		if !rendered {
			return fileSource{kind: "external", name: vol.ConfigMap.Name}, nil
		}
		text, has := o.obj.(*corev1.ConfigMap).Data[key]
		if !has {
			return fileSource{}, fmt.Errorf("%s: ConfigMap %s has no key %s", path, o.name, key)
		}
		return fileSource{kind: "configmap", name: o.name, content: text, known: true}, nil
	case vol.Secret != nil:
		key, ok := keyFor(vol.Secret.Items)
		if !ok {
			return fileSource{}, fmt.Errorf("%s: Secret volume %s projects no %s", path, vol.Name, rel)
		}
		o, rendered := r.get("Secret", vol.Secret.SecretName)
		if !rendered {
			return fileSource{kind: "external", name: vol.Secret.SecretName}, nil
		}
		s := o.obj.(*corev1.Secret)
		if text, has := s.StringData[key]; has {
			return fileSource{kind: "secret", name: o.name, content: text, known: true}, nil
		}
		if b, has := s.Data[key]; has {
			return fileSource{kind: "secret", name: o.name, content: string(b), known: true}, nil
		}
		return fileSource{}, fmt.Errorf("%s: Secret %s has no key %s", path, o.name, key)
	case vol.PersistentVolumeClaim != nil:
		return fileSource{kind: "pvc", name: vol.PersistentVolumeClaim.ClaimName}, nil
	}
	return fileSource{}, fmt.Errorf("%s: volume %s holds no files the chart provides", path, vol.Name)
}

// One service's rendered configuration, as a pod reads it.
type serviceConfig struct {
	service string
	pod     podOwner
	text    string
	doc     map[string]any
}

func configArg(c *corev1.Container) string {
	for i, a := range c.Args {
		if a == "--config" && i+1 < len(c.Args) {
			return c.Args[i+1]
		}
	}
	return ""
}

// configsOf finds each workload's --config file and checks its keys.
func configsOf(t *testing.T, r *render, df dockerfile) []serviceConfig {
	t.Helper()
	var out []serviceConfig
	for _, p := range r.pods() {
		c := &p.template.Spec.Containers[0]
		path := configArg(c)
		if path == "" {
			if p.kind != "Job" {
				t.Errorf("%s %s: no --config", p.kind, p.name)
			}
			continue
		}
		src, err := resolveFile(r, df, &p.template.Spec, c, path)
		if err != nil {
			t.Errorf("%s %s: --config %v", p.kind, p.name, err)
			continue
		}
		if !src.known {
			t.Errorf("%s %s: --config %s comes from %s %s, not from the chart", p.kind, p.name, path, src.kind, src.name)
			continue
		}
		s := serviceByName(c.Command[0])
		doc := checkTOML(t, fmt.Sprintf("%s %s %s", p.kind, p.name, path), src.content, s.keys, s.rustFile)
		out = append(out, serviceConfig{service: s.service, pod: p, text: src.content, doc: doc})
	}
	return out
}

// Each service's rendered TOML: only keys the service reads, with the right
// kinds; listen ports equal to the container ports; the registry URL of the
// release; every file it names present in the pod.
func TestServiceConfigs(t *testing.T) {
	df := parseDockerfile(t)
	forEachSet(t, func(t *testing.T, r *render) {
		configs := configsOf(t, r, df)
		seen := map[string]bool{}
		texts := map[string]string{}
		for _, sc := range configs {
			where := fmt.Sprintf("%s %s", sc.pod.kind, sc.pod.name)
			c := &sc.pod.template.Spec.Containers[0]
			if sc.pod.kind != "Job" {
				seen[sc.service] = true
				texts[sc.service] = sc.text
				listenKey := "admin_listen"
				if sc.service == "ingest-gateway" || sc.service == "schema-registry" {
					listenKey = "listen"
				}
				listen, _ := sc.doc[listenKey].(string)
				if !strings.HasPrefix(listen, "0.0.0.0:") {
					t.Errorf("%s: %s = %q: the service must listen on all interfaces in a pod", where, listenKey, listen)
				}
				port := strings.TrimPrefix(listen, "0.0.0.0:")
				if len(c.Ports) == 0 || fmt.Sprint(c.Ports[0].ContainerPort) != port {
					t.Errorf("%s: %s = %q, but the container port is %v", where, listenKey, listen, c.Ports)
				}
			} else if prev, ok := texts[sc.service]; ok && prev != sc.text {
				t.Errorf("%s: the migrate Job's config differs from the running sink's", where)
			}
			if sc.service != "schema-registry" {
				if got := sc.doc["registry_url"]; got != expectedRegistryURL(t, r) {
					t.Errorf("%s: registry_url = %v, want %s", where, got, expectedRegistryURL(t, r))
				}
			}
			if s, _ := lookup(sc.doc, "kafka.bootstrap").(string); s == "" {
				t.Errorf("%s: [kafka] bootstrap is empty", where)
			}
			if _, ok := sc.doc["kafka_bootstrap"]; ok {
				t.Errorf("%s: writes the deprecated kafka_bootstrap (the [kafka] table's bootstrap replaces it)", where)
			}
			for _, key := range append([]string{"keys_file", "tls_cert", "tls_key", "rules_file", "model"}, connectionFileKeys...) {
				path, ok := lookup(sc.doc, key).(string)
				if !ok {
					continue
				}
				src, err := resolveFile(r, df, &sc.pod.template.Spec, c, path)
				if err != nil {
					t.Errorf("%s: %s: %v", where, key, err)
					continue
				}
				if key == "keys_file" && src.known {
					checkKeysFile(t, where, src.content)
				}
			}
		}
		for _, p := range r.longRunning() {
			if !seen[p.template.Spec.Containers[0].Command[0]] {
				t.Errorf("%s %s: its config was not checked", p.kind, p.name)
			}
		}
		// Value-set specific expectations.
		switch r.set.name {
		case "features":
			if !strings.Contains(texts["sink-clickhouse"], `deadletter_topic = ""`) {
				t.Errorf("sinkClickhouse.sources.deadletter=false must write deadletter_topic = \"\":\n%s", texts["sink-clickhouse"])
			}
			if !strings.Contains(texts["ingest-gateway"], "tls_cert = ") {
				t.Errorf("ingestGateway.tls.enabled must write tls_cert and tls_key")
			}
			for _, p := range r.longRunning() {
				c := p.template.Spec.Containers[0]
				if c.Command[0] == "ingest-gateway" && (c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Scheme != corev1.URISchemeHTTPS) {
					t.Errorf("with TLS on the gateway its probes must use HTTPS")
				}
			}
			if _, ok := r.get("Deployment", "feat-context-pipeline-schema-registry"); ok {
				t.Errorf("schemaRegistry.enabled=false still deploys the registry")
			}
		case "default":
			if !strings.Contains(texts["stream-router"], `rules_file = "/usr/share/context-pipeline/rules.toml"`) {
				t.Errorf("by default the router reads the rules shipped in the image")
			}
		}
	})
}

// checkKeysFile parses a rendered keys file like ingest-gateway/src/auth.rs does.
func checkKeysFile(t *testing.T, where, text string) {
	t.Helper()
	var file map[string]any
	if _, err := toml.Decode(text, &file); err != nil {
		t.Errorf("%s: the keys file is not TOML: %v\n%s", where, err, text)
		return
	}
	for k := range file {
		if k != "keys" {
			t.Errorf("%s: the keys file has a top-level key %s (only [[keys]] is read)", where, k)
		}
	}
	entries, _ := file["keys"].([]map[string]any)
	hash := regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	for i, e := range entries {
		for k, v := range e {
			kind, ok := apiKeyEntryKeys[k]
			if !ok {
				t.Errorf("%s: keys[%d]: unknown key %s (ingest-gateway/src/auth.rs)", where, i, k)
			} else if msg := kindMismatch(kind, v); msg != "" {
				t.Errorf("%s: keys[%d].%s: %s", where, i, k, msg)
			}
		}
		if h, _ := e["hash"].(string); !hash.MatchString(h) {
			t.Errorf("%s: keys[%d].hash %q is not sha256:<64 hex digits>", where, i, h)
		}
	}
}

// The rendered router config (and the rules it names) through
// `stream-router --check-config`, when a build of the binary is at hand.
func TestRouterConfigPassesCheckConfig(t *testing.T) {
	target := os.Getenv("CARGO_TARGET_DIR")
	if target == "" {
		home, _ := os.UserHomeDir()
		target = filepath.Join(home, ".cache/context-target")
	}
	bin := filepath.Join(target, "debug/stream-router")
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no stream-router build at %s (cargo build -p stream-router); the rendered TOML was still checked key by key", bin)
	}
	df := parseDockerfile(t)
	forEachSet(t, func(t *testing.T, r *render) {
		for _, sc := range configsOf(t, r, df) {
			if sc.service != "stream-router" {
				continue
			}
			dir := t.TempDir()
			c := &sc.pod.template.Spec.Containers[0]
			rulesPath, _ := sc.doc["rules_file"].(string)
			src, err := resolveFile(r, df, &sc.pod.template.Spec, c, rulesPath)
			if err != nil {
				t.Fatal(err)
			}
			local := filepath.Join(dir, "rules.toml")
			switch {
			case src.known:
				if err := os.WriteFile(local, []byte(src.content), 0o644); err != nil {
					t.Fatal(err)
				}
			case src.kind == "image":
				local = filepath.Join(repoRoot, df.shipped[rulesPath])
			default:
				t.Fatalf("rules from %s %s cannot be checked here", src.kind, src.name)
			}
			// The rendered file, with the rules path and the connection files
			// of the pod moved to this machine, and the pod's passwords.
			text, env := localCheck(t, r, df, sc, dir)
			text = regexp.MustCompile(`(?m)^rules_file = .*$`).ReplaceAllString(text, fmt.Sprintf("rules_file = %q", local))
			cfg := filepath.Join(dir, "stream-router.toml")
			if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin, "--check-config", cfg)
			for _, e := range os.Environ() {
				if !strings.HasPrefix(e, "ROUTER_") {
					cmd.Env = append(cmd.Env, e)
				}
			}
			cmd.Env = append(cmd.Env, env...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Errorf("stream-router --check-config refuses the rendered config of %s: %v\n%s\n--- config:\n%s", sc.pod.name, err, out, text)
			} else {
				t.Logf("%s: stream-router --check-config: %s", sc.pod.name, firstLine(string(out)))
			}
		}
	})
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// prefixes of the environment variables each service reads; the test runs
// the binaries without them so only the rendered file is judged.
var envPrefix = map[string]string{
	"ingest-gateway":  "INGEST_",
	"schema-registry": "SCHEMA_REGISTRY_",
	"sink-clickhouse": "SINK_",
	"enrich-activity": "ENRICH_",
}

// Every other service's rendered configuration passes its own
// `--check-config` (the router's, with its rules file, is checked above),
// with the pod's password variables set and its connection files (CA
// bundles, client certificate, users file) written on this machine.
func TestEveryServiceConfigPassesCheckConfig(t *testing.T) {
	target := os.Getenv("CARGO_TARGET_DIR")
	if target == "" {
		home, _ := os.UserHomeDir()
		target = filepath.Join(home, ".cache/context-target")
	}
	df := parseDockerfile(t)
	forEachSet(t, func(t *testing.T, r *render) {
		for _, sc := range configsOf(t, r, df) {
			prefix, ok := envPrefix[sc.service]
			if !ok {
				continue
			}
			bin := filepath.Join(target, "debug", sc.service)
			if _, err := os.Stat(bin); err != nil {
				t.Logf("no %s build at %s; its rendered TOML was still checked key by key", sc.service, bin)
				continue
			}
			dir := t.TempDir()
			text, env := localCheck(t, r, df, sc, dir)
			cfg := filepath.Join(dir, sc.service+".toml")
			if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin, "--check-config", cfg)
			for _, e := range os.Environ() {
				if !strings.HasPrefix(e, prefix) {
					cmd.Env = append(cmd.Env, e)
				}
			}
			cmd.Env = append(cmd.Env, env...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Errorf("%s --check-config refuses the rendered config of %s: %v\n%s\n--- config:\n%s", sc.service, sc.pod.name, err, out, text)
			} else {
				t.Logf("%s: %s --check-config: %s", sc.pod.name, sc.service, firstLine(string(out)))
			}
		}
	})
}

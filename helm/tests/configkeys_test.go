package charttest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// The configuration keys each service reads, with their TOML kind:
// "string", "duration" (a string like 10s), "int", "float" (an integer is
// accepted too), "bool", "list" (an array of strings), "table", or "map" (a
// table of free names, such as [kafka.properties]). Taken from the service's Rust `Config` struct in
// `rustFile` and the structs its fields name (the [kafka] table's
// KafkaSettings and the flattened RegistrySettings in runtime/src, the
// registry's AuthSettings); every struct has deny_unknown_fields, so a key
// that is not here stops the service. TestRustConfigStructsMatch re-reads
// those structs so that this copy cannot silently fall behind.
type serviceKeys struct {
	service  string
	rustFile string
	keys     map[string]string
	// Keys the chart sets itself (values.schema.json leaves them out of
	// `config`), passwords included: those come from Secrets through the
	// environment.
	wired []string
	// The key of values.yaml whose `config` block feeds this file.
	valuesKey string
	// Renamed keys the service still reads (with a deprecation warning);
	// listed in keys with their old kind, absent from the Rust struct.
	deprecated []string
}

func (s serviceKeys) isDeprecated(key string) bool {
	for _, d := range s.deprecated {
		if d == key {
			return true
		}
	}
	return false
}

// The [kafka] table of every service (runtime/src/kafka.rs, KafkaSettings).
var kafkaKeys = map[string]string{
	"kafka": "table", "kafka.bootstrap": "string", "kafka.security_protocol": "string",
	"kafka.sasl_mechanism": "string", "kafka.sasl_username": "string", "kafka.sasl_password": "string",
	"kafka.ssl_ca_file": "string", "kafka.ssl_cert_file": "string", "kafka.ssl_key_file": "string",
	"kafka.ssl_key_password": "string", "kafka.properties": "map",
	// Renamed to kafka.bootstrap; still read.
	"kafka_bootstrap": "string",
}

// The registry client's keys (runtime/src/registry.rs, RegistrySettings, flattened).
var registryClientKeys = map[string]string{
	"registry_url": "string", "registry_username": "string", "registry_password": "string", "registry_ca_file": "string",
	"registry_unknown_id_patience": "duration",
}

var kafkaWired = []string{
	"kafka", "kafka.bootstrap", "kafka.security_protocol", "kafka.sasl_mechanism", "kafka.sasl_username",
	"kafka.sasl_password", "kafka.ssl_ca_file", "kafka.ssl_cert_file", "kafka.ssl_key_file",
	"kafka.ssl_key_password", "kafka.properties", "kafka_bootstrap",
}
var registryClientWired = []string{"registry_url", "registry_username", "registry_password", "registry_ca_file"}

func keysWith(own map[string]string, shared ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range append(shared, own) {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

func wiredWith(own []string, shared ...[]string) []string {
	out := append([]string{}, own...)
	for _, s := range shared {
		out = append(out, s...)
	}
	return out
}

var services = []serviceKeys{
	{
		service:   "ingest-gateway",
		rustFile:  "ingest-gateway/src/config.rs",
		valuesKey: "ingestGateway",
		keys: keysWith(map[string]string{
			"listen": "string", "events_topic": "string", "deadletter_topic": "string", "keys_file": "string",
			"forget_topic": "string", "max_forgotten_installs": "int",
			"tls_cert": "string", "tls_key": "string", "limits": "table",
			"limits.max_body_bytes": "int", "limits.max_decompressed_bytes": "int",
			"limits.max_events": "int", "limits.max_samples": "int", "limits.max_record_bytes": "int",
			"produce_timeout": "duration", "queue_max_messages": "int", "queue_max_kbytes": "int",
			"max_in_flight_bytes": "int", "max_future": "duration", "max_age": "duration",
			"dedup_window": "duration", "dedup_capacity": "int", "workers": "int",
			"body_read_timeout": "duration", "rate_limit_bytes_per_s": "int", "rate_limit_burst_bytes": "int",
			"dedup_capacity_bytes": "int",
			"backpressure": "table", "backpressure.enabled": "bool", "backpressure.groups": "list",
			"backpressure.retention_share": "float", "backpressure.max_lag": "duration",
			"backpressure.resume_share": "float", "backpressure.check_interval": "duration",
			"backpressure.retry_after": "duration",
		}, kafkaKeys, registryClientKeys),
		wired:      wiredWith([]string{"listen", "events_topic", "deadletter_topic", "forget_topic", "keys_file", "tls_cert", "tls_key"}, kafkaWired, registryClientWired),
		deprecated: []string{"kafka_bootstrap"},
	},
	{
		service:   "schema-registry",
		rustFile:  "schemas/registry/src/config.rs",
		valuesKey: "schemaRegistry",
		keys: keysWith(map[string]string{
			"listen": "string", "topic": "string",
			"default_compatibility": "string", "timeout": "duration", "create_topic": "bool",
			"auth": "table", "auth.users_file": "string", "auth.anonymous": "string",
		}, kafkaKeys),
		wired:      wiredWith([]string{"listen", "topic", "auth", "auth.users_file", "auth.anonymous"}, kafkaWired),
		deprecated: []string{"kafka_bootstrap"},
	},
	{
		service:   "stream-router",
		rustFile:  "stream-router/src/config.rs",
		valuesKey: "streamRouter",
		keys: keysWith(map[string]string{
			"admin_listen": "string", "source_topic": "string", "deadletter_topic": "string", "group_id": "string",
			"forget_topic": "string",
			"rules_file": "string", "delivery": "string", "allow_fallback": "bool",
			"transactional_id": "string", "create_topics": "bool", "new_topic_partitions": "int",
			"max_batch": "int", "linger": "duration", "session_timeout": "duration", "timeout": "duration",
			"max_record_bytes": "int", "stall_after": "duration", "stall_grace": "duration",
		}, kafkaKeys, registryClientKeys),
		wired:      wiredWith([]string{"admin_listen", "source_topic", "deadletter_topic", "forget_topic", "rules_file", "transactional_id"}, kafkaWired, registryClientWired),
		deprecated: []string{"kafka_bootstrap"},
	},
	{
		service:   "sink-clickhouse",
		rustFile:  "sink-clickhouse/src/config.rs",
		valuesKey: "sinkClickhouse",
		keys: keysWith(map[string]string{
			"admin_listen": "string", "clickhouse_url": "string", "clickhouse_user": "string",
			"clickhouse_password": "string", "clickhouse_ca_file": "string",
			"database": "string", "clickhouse_shards": "string", "insert_quorum": "int",
			"events_topic": "string", "activity_topic": "string",
			"deadletter_topic": "string", "forget_topic": "string", "group_prefix": "string", "session_timeout": "duration",
			"max_poll_interval": "duration", "batch": "table", "batch.max_rows": "int",
			"batch.max_bytes": "int", "batch.max_age": "duration", "max_backoff": "duration",
			"insert_timeout": "duration", "stall_after": "duration", "stall_grace": "duration",
		}, kafkaKeys, registryClientKeys),
		wired: wiredWith([]string{"admin_listen", "clickhouse_url", "clickhouse_user", "clickhouse_password", "clickhouse_ca_file",
			"events_topic", "activity_topic", "deadletter_topic", "forget_topic"}, kafkaWired, registryClientWired),
		deprecated: []string{"kafka_bootstrap"},
	},
	{
		service:   "enrich-activity",
		rustFile:  "enrich-activity/src/config.rs",
		valuesKey: "enrichActivity",
		keys: keysWith(map[string]string{
			"motion_topic": "string", "activity_topic": "string", "group_id": "string", "admin_listen": "string",
			"model": "string", "max_batch": "int", "session_timeout": "duration", "session_timeout_ms": "int",
			"deadletter_topic": "string", "forget_topic": "string", "delivery": "string", "transactional_id": "string",
			"min_confidence": "float", "max_record_bytes": "int", "stall_after": "duration", "stall_grace": "duration",
		}, kafkaKeys, registryClientKeys),
		wired:      wiredWith([]string{"admin_listen", "motion_topic", "activity_topic", "deadletter_topic", "forget_topic", "model", "transactional_id"}, kafkaWired, registryClientWired),
		deprecated: []string{"session_timeout_ms", "kafka_bootstrap"},
	},
}

// The entries of the gateway's keys file (ingest-gateway/src/auth.rs, KeyLine).
var apiKeyEntryKeys = map[string]string{
	"app_id": "string", "hash": "string", "enabled": "bool", "rate_limit_per_s": "float", "burst": "float",
}

var durationRe = regexp.MustCompile(`^\s*[0-9]+(ms|s|m|h|d)\s*$`)

func serviceByName(name string) serviceKeys {
	for _, s := range services {
		if s.service == name {
			return s
		}
	}
	panic("no service " + name)
}

// checkTOML parses text and checks every key and the kind of its value.
// It returns the decoded document.
func checkTOML(t *testing.T, what, text string, keys map[string]string, rustFile string) map[string]any {
	t.Helper()
	doc := map[string]any{}
	if _, err := toml.Decode(text, &doc); err != nil {
		t.Errorf("%s: not TOML: %v\n%s", what, err, text)
		return doc
	}
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			path := k
			if prefix != "" {
				path = prefix + "." + k
			}
			kind, ok := keys[path]
			if !ok {
				t.Errorf("%s: key `%s` is not one the service reads (%s)", what, path, rustFile)
				continue
			}
			if msg := kindMismatch(kind, v); msg != "" {
				t.Errorf("%s: `%s` = %v: %s", what, path, v, msg)
			}
			sub, isTable := v.(map[string]any)
			switch {
			case isTable && kind == "map":
				for name, entry := range sub {
					switch entry.(type) {
					case string, int64, float64, bool:
					default:
						t.Errorf("%s: `%s.%s` = %v: want text, a number or true/false", what, path, name, entry)
					}
				}
			case isTable:
				walk(path, sub)
			}
		}
	}
	walk("", doc)
	return doc
}

func kindMismatch(kind string, v any) string {
	switch kind {
	case "string":
		if _, ok := v.(string); !ok {
			return fmt.Sprintf("want a string, got %T", v)
		}
	case "duration":
		s, ok := v.(string)
		if !ok || !durationRe.MatchString(s) {
			return "want a duration such as 500ms, 10s, 5m, 24h or 30d"
		}
	case "int":
		if _, ok := v.(int64); !ok {
			return fmt.Sprintf("want an integer, got %T (a float such as 2000.0 is refused by the service)", v)
		}
	case "float":
		switch v.(type) {
		case int64, float64:
		default:
			return fmt.Sprintf("want a number, got %T", v)
		}
	case "bool":
		if _, ok := v.(bool); !ok {
			return fmt.Sprintf("want true or false, got %T", v)
		}
	case "list":
		items, ok := v.([]any)
		if !ok {
			return fmt.Sprintf("want a list of strings, got %T", v)
		}
		for _, item := range items {
			if _, ok := item.(string); !ok {
				return fmt.Sprintf("want a list of strings, got an item of %T", item)
			}
		}
	case "table", "map":
		if _, ok := v.(map[string]any); !ok {
			return fmt.Sprintf("want a table, got %T", v)
		}
	}
	return ""
}

// The Rust sources a service's configuration structs may live in: its
// config.rs, the other files of its crate, and runtime/src (context_runtime).
type rustSources struct {
	files map[string]string
}

func loadRustSources(t *testing.T, rustFile string) rustSources {
	t.Helper()
	rs := rustSources{files: map[string]string{}}
	var paths []string
	for _, pattern := range []string{rustFile, filepath.Join(filepath.Dir(rustFile), "*.rs"), "runtime/src/*.rs"} {
		m, err := filepath.Glob(filepath.Join(repoRoot, pattern))
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, m...)
	}
	for _, p := range paths {
		src, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		rs.files[p] = string(src)
	}
	if _, ok := rs.files[filepath.Join(repoRoot, rustFile)]; !ok {
		t.Fatalf("%s not found", rustFile)
	}
	return rs
}

// structBody is the text between the braces of `pub struct NAME {`, first
// looked for in rustFile.
func (rs rustSources) structBody(first, name string) (string, bool) {
	re := regexp.MustCompile(`(?m)^pub struct ` + regexp.QuoteMeta(name) + ` \{$`)
	order := []string{filepath.Join(repoRoot, first)}
	var rest []string
	for p := range rs.files {
		if p != order[0] {
			rest = append(rest, p)
		}
	}
	sort.Strings(rest)
	for _, p := range append(order, rest...) {
		src := rs.files[p]
		if loc := re.FindStringIndex(src); loc != nil {
			body := src[loc[1]:]
			return body[:strings.Index(body, "\n}")], true
		}
	}
	return "", false
}

func (rs rustSources) isEnum(name string) bool {
	re := regexp.MustCompile(`(?m)^pub enum ` + regexp.QuoteMeta(name) + `\b`)
	for _, src := range rs.files {
		if re.MatchString(src) {
			return true
		}
	}
	return false
}

type rustField struct {
	name, ty string
	flatten  bool
}

// rustStructFields reads the `pub name: Type` fields of a struct body, with
// whether `#[serde(flatten)]` precedes them.
func rustStructFields(body string) []rustField {
	field := regexp.MustCompile(`^\s*pub ([a-z_][a-z0-9_]*)\s*:\s*(.+?),?\s*$`)
	var out []rustField
	flatten := false
	for _, line := range strings.Split(body, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#[serde(") && strings.Contains(trimmed, "flatten") {
			flatten = true
			continue
		}
		if m := field.FindStringSubmatch(line); m != nil {
			out = append(out, rustField{name: m[1], ty: strings.TrimSpace(m[2]), flatten: flatten})
			flatten = false
		}
	}
	return out
}

// rustKind is the TOML kind of a Rust field type, and the struct to read for
// a table.
func (rs rustSources) rustKind(ty string) (kind, structName string) {
	for {
		inner, ok := strings.CutPrefix(ty, "Option<")
		if !ok {
			break
		}
		ty = strings.TrimSuffix(inner, ">")
	}
	if i := strings.LastIndex(ty, "::"); i >= 0 && !strings.Contains(ty, "<") {
		ty = ty[i+2:]
	}
	switch {
	case ty == "String" || ty == "PathBuf" || ty == "Secret" || ty == "SocketAddr" || ty == "Delivery" || ty == "Compatibility":
		return "string", ""
	case ty == "Duration":
		return "duration", ""
	case ty == "bool":
		return "bool", ""
	case ty == "f32" || ty == "f64":
		return "float", ""
	case regexp.MustCompile(`^(usize|u8|u16|u32|u64|i32|i64)$`).MatchString(ty):
		return "int", ""
	case regexp.MustCompile(`^(std::collections::)?(BTreeMap|HashMap)<`).MatchString(ty):
		return "map", ""
	case ty == "Vec<String>":
		return "list", ""
	case rs.isEnum(ty):
		return "string", ""
	}
	return "table", ty
}

// configKeys is every key of a service's file, from its Config struct down.
func (rs rustSources) configKeys(t *testing.T, rustFile string) map[string]string {
	t.Helper()
	out := map[string]string{}
	var walk func(structName, prefix string, depth int)
	walk = func(structName, prefix string, depth int) {
		body, ok := rs.structBody(rustFile, structName)
		if !ok {
			t.Fatalf("no `pub struct %s {` found in %s, its crate or runtime/src", structName, rustFile)
		}
		if depth > 4 {
			t.Fatalf("%s: structs nested too deep", structName)
		}
		for _, f := range rustStructFields(body) {
			kind, sub := rs.rustKind(f.ty)
			if f.flatten {
				if sub == "" {
					t.Fatalf("%s.%s: #[serde(flatten)] on a %s", structName, f.name, f.ty)
				}
				walk(sub, prefix, depth+1)
				continue
			}
			key := prefix + f.name
			out[key] = kind
			if sub != "" {
				walk(sub, key+".", depth+1)
			}
		}
	}
	walk("Config", "", 0)
	return out
}

// The hard-coded key lists above against the Rust structs as they are now.
func TestRustConfigStructsMatch(t *testing.T) {
	for _, s := range services {
		t.Run(s.service, func(t *testing.T) {
			fromRust := loadRustSources(t, s.rustFile).configKeys(t, s.rustFile)
			for k, kind := range s.keys {
				if s.isDeprecated(k) {
					if _, ok := fromRust[k]; ok {
						t.Errorf("key `%s` is listed as deprecated but %s still has the field", k, s.rustFile)
					}
					continue
				}
				rk, ok := fromRust[k]
				if !ok {
					t.Errorf("key `%s` is listed here but %s (and the structs it names) has no such field: update helm/tests and the chart", k, s.rustFile)
				} else if rk != kind {
					t.Errorf("key `%s`: listed as %s, %s says %s", k, kind, s.rustFile, rk)
				}
			}
			for k := range fromRust {
				if _, ok := s.keys[k]; !ok {
					t.Errorf("%s has the key `%s`, unknown to helm/tests: add it here, to values.schema.json and, if it needs a value, to values.yaml", s.rustFile, k)
				}
			}
		})
	}
}

// values.schema.json lets through exactly the keys the chart does not set
// itself, so every key of each service is either wired or settable.
func TestValuesSchemaCoversConfigKeys(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(raw, &schema); err != nil {
		t.Fatal(err)
	}
	props := func(node map[string]any) map[string]any {
		p, _ := node["properties"].(map[string]any)
		return p
	}
	for _, s := range services {
		t.Run(s.service, func(t *testing.T) {
			section, _ := props(schema)[s.valuesKey].(map[string]any)
			config, _ := props(section)["config"].(map[string]any)
			if config == nil {
				t.Fatalf("values.schema.json has no %s.config", s.valuesKey)
			}
			if config["additionalProperties"] != false {
				t.Errorf("%s.config must refuse unknown keys (additionalProperties: false)", s.valuesKey)
			}
			inSchema := map[string]bool{}
			var walk func(prefix string, node map[string]any)
			walk = func(prefix string, node map[string]any) {
				for k, v := range props(node) {
					path := k
					if prefix != "" {
						path = prefix + "." + k
					}
					inSchema[path] = true
					if sub, ok := v.(map[string]any); ok && sub["type"] == "object" {
						walk(path, sub)
					}
				}
			}
			walk("", config)
			wired := map[string]bool{}
			for _, w := range s.wired {
				wired[w] = true
				if inSchema[w] {
					t.Errorf("%s.config.%s is set by the chart and must not be settable in values", s.valuesKey, w)
				}
			}
			var missing []string
			for k := range s.keys {
				if !inSchema[k] && !wired[k] {
					missing = append(missing, k)
				}
			}
			for k := range inSchema {
				if _, ok := s.keys[k]; !ok {
					t.Errorf("values.schema.json allows %s.config.%s, which %s does not read", s.valuesKey, k, s.rustFile)
				}
			}
			sort.Strings(missing)
			if len(missing) > 0 {
				t.Errorf("keys of %s neither wired by the chart nor allowed in %s.config: %v", s.rustFile, s.valuesKey, missing)
			}
		})
	}
}

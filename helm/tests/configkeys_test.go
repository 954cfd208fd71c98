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
// accepted too), "bool", or "table". Taken from the Rust Config structs
// named in `rustFile` (every struct has deny_unknown_fields, so a key that is
// not here stops the service); TestRustConfigStructsMatch re-reads those
// structs so that this copy cannot silently fall behind.
type serviceKeys struct {
	service  string
	rustFile string
	// Rust struct name -> TOML table it is read from ("" is the top level).
	structs map[string]string
	keys    map[string]string
	// Keys the chart sets itself (values.schema.json leaves them out of `config`).
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

var services = []serviceKeys{
	{
		service:   "ingest-gateway",
		rustFile:  "ingest-gateway/src/config.rs",
		structs:   map[string]string{"Config": "", "Limits": "limits"},
		valuesKey: "ingestGateway",
		keys: map[string]string{
			"listen": "string", "kafka_bootstrap": "string", "registry_url": "string",
			"events_topic": "string", "deadletter_topic": "string", "keys_file": "string",
			"tls_cert": "string", "tls_key": "string", "limits": "table",
			"limits.max_body_bytes": "int", "limits.max_decompressed_bytes": "int",
			"limits.max_events": "int", "limits.max_samples": "int", "limits.max_record_bytes": "int",
			"produce_timeout": "duration", "queue_max_messages": "int", "queue_max_kbytes": "int",
			"max_in_flight_bytes": "int", "max_future": "duration", "max_age": "duration",
			"dedup_window": "duration", "dedup_capacity": "int", "workers": "int",
		},
		wired: []string{"listen", "kafka_bootstrap", "registry_url", "events_topic", "deadletter_topic", "keys_file", "tls_cert", "tls_key"},
	},
	{
		service:   "schema-registry",
		rustFile:  "schemas/registry/src/config.rs",
		structs:   map[string]string{"Config": ""},
		valuesKey: "schemaRegistry",
		keys: map[string]string{
			"listen": "string", "kafka_bootstrap": "string", "topic": "string",
			"default_compatibility": "string", "timeout": "duration", "create_topic": "bool",
		},
		wired: []string{"listen", "kafka_bootstrap", "topic"},
	},
	{
		service:   "stream-router",
		rustFile:  "stream-router/src/config.rs",
		structs:   map[string]string{"Config": ""},
		valuesKey: "streamRouter",
		keys: map[string]string{
			"admin_listen": "string", "kafka_bootstrap": "string", "registry_url": "string",
			"source_topic": "string", "deadletter_topic": "string", "group_id": "string",
			"rules_file": "string", "delivery": "string", "allow_fallback": "bool",
			"transactional_id": "string", "create_topics": "bool", "new_topic_partitions": "int",
			"max_batch": "int", "linger": "duration", "session_timeout": "duration", "timeout": "duration",
		},
		wired: []string{"admin_listen", "kafka_bootstrap", "registry_url", "source_topic", "deadletter_topic", "rules_file", "transactional_id"},
	},
	{
		service:   "sink-clickhouse",
		rustFile:  "sink-clickhouse/src/config.rs",
		structs:   map[string]string{"Config": "", "BatchLimits": "batch"},
		valuesKey: "sinkClickhouse",
		keys: map[string]string{
			"admin_listen": "string", "kafka_bootstrap": "string", "registry_url": "string",
			"clickhouse_url": "string", "clickhouse_user": "string", "clickhouse_password": "string",
			"database": "string", "events_topic": "string", "activity_topic": "string",
			"deadletter_topic": "string", "group_prefix": "string", "session_timeout": "duration",
			"max_poll_interval": "duration", "batch": "table", "batch.max_rows": "int",
			"batch.max_bytes": "int", "batch.max_age": "duration", "max_backoff": "duration",
		},
		wired: []string{"admin_listen", "kafka_bootstrap", "registry_url", "clickhouse_url", "clickhouse_user", "clickhouse_password", "events_topic", "activity_topic", "deadletter_topic"},
	},
	{
		service:   "enrich-activity",
		rustFile:  "enrich-activity/src/config.rs",
		structs:   map[string]string{"Config": ""},
		valuesKey: "enrichActivity",
		keys: map[string]string{
			"kafka_bootstrap": "string", "registry_url": "string", "motion_topic": "string",
			"activity_topic": "string", "group_id": "string", "admin_listen": "string",
			"model": "string", "max_batch": "int", "session_timeout": "duration", "session_timeout_ms": "int",
			"deadletter_topic": "string", "delivery": "string", "transactional_id": "string",
			"min_confidence": "float",
		},
		wired:      []string{"admin_listen", "kafka_bootstrap", "registry_url", "motion_topic", "activity_topic", "deadletter_topic", "model", "transactional_id"},
		deprecated: []string{"session_timeout_ms"},
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
			if sub, isTable := v.(map[string]any); isTable {
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
	case "table":
		if _, ok := v.(map[string]any); !ok {
			return fmt.Sprintf("want a table, got %T", v)
		}
	}
	return ""
}

// rustStructFields reads `pub name: Type` fields of `pub struct NAME { ... }`.
func rustStructFields(t *testing.T, src, name string) map[string]string {
	t.Helper()
	start := regexp.MustCompile(`(?m)^pub struct ` + name + ` \{$`).FindStringIndex(src)
	if start == nil {
		t.Fatalf("no `pub struct %s {` found", name)
	}
	body := src[start[1]:]
	body = body[:strings.Index(body, "\n}")]
	field := regexp.MustCompile(`^\s*pub ([a-z_][a-z0-9_]*)\s*:\s*([^,]+),?\s*$`)
	out := map[string]string{}
	for _, line := range strings.Split(body, "\n") {
		if m := field.FindStringSubmatch(line); m != nil {
			out[m[1]] = strings.TrimSpace(m[2])
		}
	}
	return out
}

func rustKind(ty string) string {
	switch {
	case ty == "String" || ty == "PathBuf" || ty == "Option<PathBuf>" || ty == "Secret" || ty == "Option<String>" ||
		ty == "SocketAddr" || ty == "Delivery" || ty == "Compatibility":
		return "string"
	case ty == "Duration":
		return "duration"
	case ty == "bool":
		return "bool"
	case ty == "f32" || ty == "f64":
		return "float"
	case regexp.MustCompile(`^(usize|u8|u16|u32|u64|i32|i64)$`).MatchString(ty):
		return "int"
	default:
		return "table"
	}
}

// The hard-coded key lists above against the Rust structs as they are now.
func TestRustConfigStructsMatch(t *testing.T) {
	for _, s := range services {
		t.Run(s.service, func(t *testing.T) {
			src, err := os.ReadFile(filepath.Join(repoRoot, s.rustFile))
			if err != nil {
				t.Fatal(err)
			}
			fromRust := map[string]string{}
			for structName, table := range s.structs {
				for f, ty := range rustStructFields(t, string(src), structName) {
					key := f
					if table != "" {
						key = table + "." + f
					}
					fromRust[key] = rustKind(ty)
				}
			}
			for k, kind := range s.keys {
				if s.isDeprecated(k) {
					if _, ok := fromRust[k]; ok {
						t.Errorf("key `%s` is listed as deprecated but %s still has the field", k, s.rustFile)
					}
					continue
				}
				rk, ok := fromRust[k]
				if !ok {
					t.Errorf("key `%s` is listed here but %s has no such field: update helm/tests and the chart", k, s.rustFile)
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

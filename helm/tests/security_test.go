package charttest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Secured connections (docs/helm.md, "Secured connections"): where each
// credential goes, for the value sets "secure" (ci/secure-values.yaml: every
// credential in an existing Secret), "inline" (the chart writes its own
// Secrets; CAs given as PEM) and "mtls" (mutual TLS, an external HTTPS
// registry with basic auth), and that the default sets stay plaintext.

// The passwords of the "inline" set, which the chart writes into its own
// Secrets: none may appear anywhere but in a Secret.
const (
	inlineKafkaPassword      = "kafka-pw-4f1c9e20"
	inlineRegistryPassword   = "registry-pw-77ab20d1"
	inlineAdminPassword      = "admin-pw-c3d4e5f6"
	inlineClickhousePassword = "clickhouse-pw-9a8b7c6d"
)

var inlinePasswords = []string{inlineKafkaPassword, inlineRegistryPassword, inlineAdminPassword, inlineClickhousePassword}

// A CA bundle for `pem` values (--set-file), written by rendered().
var caFile = filepath.Join(os.TempDir(), "context-pipeline-helm-tests-ca.pem")

// passwordHash is what `schema-registry hash-password` prints
// (schemas/registry/src/auth.rs): pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>.
func passwordHash(password string) string {
	salt := []byte("helm-tests-salt!")
	key, err := pbkdf2.Key(sha256.New, password, salt, 20000, 32)
	if err != nil {
		panic(err)
	}
	return fmt.Sprintf("pbkdf2-sha256$20000$%s$%s", hex.EncodeToString(salt), hex.EncodeToString(key))
}

func registryUsersJSON(users [][2]string) string {
	var out []map[string]string
	for _, u := range users {
		out = append(out, map[string]string{"name": u[0], "role": u[1], "password_hash": passwordHash(u[0] + "-password")})
	}
	b, _ := json.Marshal(out)
	return string(b)
}

var inlineArgs = []string{
	"--set", "kafka.securityProtocol=sasl_ssl,kafka.sasl.mechanism=PLAIN,kafka.sasl.username=inline-user,kafka.sasl.password=" + inlineKafkaPassword,
	"--set-file", "kafka.tls.ca.pem=" + caFile,
	"--set-json", `kafka.properties={"socket.keepalive.enable":true,"reconnect.backoff.max.ms":10000}`,
	"--set", "schemaRegistry.client.username=context,schemaRegistry.client.password=" + inlineRegistryPassword,
	"--set", "schemaRegistry.auth.enabled=true,schemaRegistry.auth.anonymous=read",
	"--set-json", "schemaRegistry.auth.users=" + registryUsersJSON([][2]string{{"admin", "admin"}, {"context", "write"}, {"reader", "read"}}),
	"--set", "schemaRegistry.register.compatibility=FULL_TRANSITIVE,schemaRegistry.register.username=admin,schemaRegistry.register.password=" + inlineAdminPassword,
	"--set", "sinkClickhouse.clickhouse.url=https://clickhouse.example.com:8443,sinkClickhouse.clickhouse.password=" + inlineClickhousePassword,
	"--set-file", "sinkClickhouse.clickhouse.ca.pem=" + caFile,
	"--set", "streamRouter.keda.enabled=true,sinkClickhouse.keda.enabled=true,enrichActivity.keda.enabled=true",
	"--set", "credentialsRevision=r1",
}

var inlineSet = valueSet{name: "inline", release: "inl", args: inlineArgs}

// A variant of the inline set with more --set arguments (later ones win).
func inlineVariant(name string, extra ...string) valueSet {
	return valueSet{name: "inline-" + name, release: inlineSet.release, args: append(append([]string{}, inlineArgs...), extra...)}
}

// A throwaway CA certificate and key, for `pem` values and for the files
// the check-config tests write where a pod would mount an existing Secret.
type pki struct{ caPEM, keyPEM string }

var (
	pkiOnce sync.Once
	pkiVal  pki
	pkiErr  error
)

func testPKI(t *testing.T) pki {
	t.Helper()
	pkiOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			pkiErr = err
			return
		}
		tmpl := x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{CommonName: "context-pipeline helm tests"},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(24 * time.Hour),
			IsCA:                  true,
			BasicConstraintsValid: true,
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		}
		der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
		if err != nil {
			pkiErr = err
			return
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			pkiErr = err
			return
		}
		pkiVal = pki{
			caPEM:  string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
			keyPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})),
		}
	})
	if pkiErr != nil {
		t.Fatal(pkiErr)
	}
	return pkiVal
}

// The file keys of the connections, as dotted paths into a service's TOML.
var connectionFileKeys = []string{"kafka.ssl_ca_file", "kafka.ssl_cert_file", "kafka.ssl_key_file", "registry_ca_file", "clickhouse_ca_file", "auth.users_file"}

// The environment prefix of each service (docs/configuration.md).
var servicePrefix = map[string]string{
	"ingest-gateway": "INGEST_", "schema-registry": "SCHEMA_REGISTRY_", "stream-router": "ROUTER_",
	"sink-clickhouse": "SINK_", "enrich-activity": "ENRICH_",
}

// lookup follows a dotted path of tables in a decoded TOML document.
func lookup(doc map[string]any, dotted string) any {
	var cur any = doc
	for _, part := range strings.Split(dotted, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		if cur, ok = m[part]; !ok {
			return nil
		}
	}
	return cur
}

func envVar(c *corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

// secretValue is what a secretKeyRef gives: known for the chart's own
// Secrets, unknown for the ones the values name as existing.
func secretValue(r *render, ref *corev1.SecretKeySelector) (value string, known bool, err error) {
	o, ok := r.get("Secret", ref.Name)
	if !ok {
		if contains(r.set.externalSecrets, ref.Name) {
			return "", false, nil
		}
		return "", false, fmt.Errorf("Secret %s is neither rendered nor named as existing", ref.Name)
	}
	s := o.obj.(*corev1.Secret)
	if v, has := s.StringData[ref.Key]; has {
		return v, true, nil
	}
	if v, has := s.Data[ref.Key]; has {
		return string(v), true, nil
	}
	return "", false, fmt.Errorf("Secret %s has no key %s", ref.Name, ref.Key)
}

// configMapValue is the same for a ConfigMap.
func configMapValue(r *render, name, key string) (value string, known bool, err error) {
	o, ok := r.get("ConfigMap", name)
	if !ok {
		if contains(r.set.externalConfigMaps, name) {
			return "", false, nil
		}
		return "", false, fmt.Errorf("ConfigMap %s is neither rendered nor named as existing", name)
	}
	v, has := o.obj.(*corev1.ConfigMap).Data[key]
	if !has {
		return "", false, fmt.Errorf("ConfigMap %s has no key %s", name, key)
	}
	return v, true, nil
}

// localCheck prepares a rendered config for `--check-config` on this
// machine: the connection files it names written into dir (their rendered
// content, or stand-ins for existing Secrets and ConfigMaps) and their paths
// replaced, and the password variables the pod gets from Secrets (their
// rendered value, or a stand-in).
func localCheck(t *testing.T, r *render, df dockerfile, sc serviceConfig, dir string) (string, []string) {
	t.Helper()
	spec := &sc.pod.template.Spec
	c := &spec.Containers[0]
	text := sc.text
	p := testPKI(t)
	for _, key := range connectionFileKeys {
		path, ok := lookup(sc.doc, key).(string)
		if !ok {
			continue
		}
		src, err := resolveFile(r, df, spec, c, path)
		if err != nil {
			t.Errorf("%s %s: %s: %v", sc.pod.kind, sc.pod.name, key, err)
			continue
		}
		content := src.content
		if !src.known {
			switch key {
			case "kafka.ssl_key_file":
				content = p.keyPEM
			case "auth.users_file":
				content = fmt.Sprintf("[[users]]\nname = \"check\"\nrole = \"read\"\npassword_hash = %q\n", passwordHash("check"))
			default:
				content = p.caPEM
			}
		}
		local := filepath.Join(dir, strings.ReplaceAll(key, ".", "-"))
		if err := os.WriteFile(local, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		text = strings.ReplaceAll(text, strconv.Quote(path), strconv.Quote(local))
	}
	var env []string
	for _, e := range c.Env {
		if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			continue
		}
		v, known, err := secretValue(r, e.ValueFrom.SecretKeyRef)
		if err != nil {
			t.Errorf("%s %s: %s: %v", sc.pod.kind, sc.pod.name, e.Name, err)
		}
		if !known {
			v = "check-config-stand-in"
		}
		env = append(env, e.Name+"="+v)
	}
	return text, env
}

// The chart's knowledge of a value set's Kafka security, read back from
// what it rendered into the first service config.
func kafkaTable(t *testing.T, configs []serviceConfig) map[string]any {
	t.Helper()
	if len(configs) == 0 {
		t.Fatal("no service configs rendered")
	}
	k, _ := lookup(configs[0].doc, "kafka").(map[string]any)
	return k
}

// Every service gets the same [kafka] table, with the protocol, mechanism and
// files the values ask for; its passwords come from Secrets through
// <PREFIX>KAFKA_SASL_PASSWORD, <PREFIX>REGISTRY_PASSWORD and
// SINK_CLICKHOUSE_PASSWORD; every file the TOML names is mounted there.
func TestConnectionSettingsReachEveryService(t *testing.T) {
	df := parseDockerfile(t)
	forEachSet(t, func(t *testing.T, r *render) {
		configs := configsOf(t, r, df)
		first := kafkaTable(t, configs)
		for _, sc := range configs {
			where := fmt.Sprintf("%s %s", sc.pod.kind, sc.pod.name)
			c := &sc.pod.template.Spec.Containers[0]
			prefix := servicePrefix[sc.service]
			k, _ := lookup(sc.doc, "kafka").(map[string]any)
			if !reflect.DeepEqual(k, first) {
				t.Errorf("%s: its [kafka] table differs from %s's:\n%v\n%v", where, configs[0].pod.name, k, first)
			}
			protocol, _ := k["security_protocol"].(string)
			if protocol == "" {
				t.Errorf("%s: [kafka] security_protocol is not written", where)
			}
			sasl := strings.HasPrefix(protocol, "sasl_")
			// Each password: from a Secret when the TOML says the service needs it, absent otherwise.
			want := map[string]bool{
				prefix + "KAFKA_SASL_PASSWORD": sasl,
				prefix + "REGISTRY_PASSWORD":   lookup(sc.doc, "registry_username") != nil,
			}
			if sc.service == "schema-registry" {
				delete(want, prefix+"REGISTRY_PASSWORD")
			}
			if sc.service == "sink-clickhouse" {
				want["SINK_CLICKHOUSE_PASSWORD"] = true
			}
			if lookup(sc.doc, "kafka.ssl_key_file") != nil && r.set.name == "mtls" {
				want[prefix+"KAFKA_SSL_KEY_PASSWORD"] = true
			}
			for name, needed := range want {
				e := envVar(c, name)
				switch {
				case needed && e == nil:
					t.Errorf("%s: no %s", where, name)
				case !needed && e != nil:
					t.Errorf("%s: sets %s, which its config does not use", where, name)
				case e != nil && (e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil || e.Value != ""):
					t.Errorf("%s: %s does not come from a Secret (secretKeyRef)", where, name)
				case e != nil:
					v, known, err := secretValue(r, e.ValueFrom.SecretKeyRef)
					if err != nil {
						t.Errorf("%s: %s: %v", where, name, err)
					} else if known && v == "" && name != "SINK_CLICKHOUSE_PASSWORD" {
						t.Errorf("%s: %s reads an empty value from Secret %s", where, name, e.ValueFrom.SecretKeyRef.Name)
					}
				}
			}
			if sasl {
				for _, key := range []string{"sasl_mechanism", "sasl_username"} {
					if s, _ := k[key].(string); s == "" {
						t.Errorf("%s: [kafka] %s is empty with security_protocol %s", where, key, protocol)
					}
				}
			} else if k["sasl_mechanism"] != nil || k["sasl_username"] != nil {
				t.Errorf("%s: [kafka] has SASL keys with security_protocol %s (the services refuse that)", where, protocol)
			}
			tls := protocol == "ssl" || protocol == "sasl_ssl"
			for _, key := range []string{"ssl_ca_file", "ssl_cert_file", "ssl_key_file"} {
				if k[key] != nil && !tls {
					t.Errorf("%s: [kafka] %s with security_protocol %s (the services refuse that)", where, key, protocol)
				}
			}
			if (k["ssl_cert_file"] == nil) != (k["ssl_key_file"] == nil) {
				t.Errorf("%s: [kafka] ssl_cert_file and ssl_key_file go together", where)
			}
			if ca, ok := lookup(sc.doc, "clickhouse_ca_file").(string); ok && ca != "" {
				if u, _ := sc.doc["clickhouse_url"].(string); !strings.HasPrefix(u, "https://") {
					t.Errorf("%s: clickhouse_ca_file with clickhouse_url %s", where, u)
				}
			}
			// The files: mounted where the TOML points, from the source the values name.
			for _, key := range connectionFileKeys {
				path, ok := lookup(sc.doc, key).(string)
				if !ok {
					continue
				}
				src, err := resolveFile(r, df, &sc.pod.template.Spec, c, path)
				if err != nil {
					t.Errorf("%s: %s: %v", where, key, err)
					continue
				}
				if src.kind == "configmap" && (key == "kafka.ssl_key_file" || key == "auth.users_file") {
					t.Errorf("%s: %s comes from ConfigMap %s; keys and users files belong in Secrets", where, key, src.name)
				}
				if src.known && strings.HasSuffix(key, "ca_file") && src.content != testPKI(t).caPEM {
					t.Errorf("%s: %s (%s %s) is not the CA given in the values", where, key, src.kind, src.name)
				}
			}
		}
		// What each set asks for.
		protocol, _ := first["security_protocol"].(string)
		wantProtocol := map[string]string{"secure": "sasl_ssl", "inline": "sasl_ssl", "mtls": "ssl"}[r.set.name]
		if wantProtocol == "" {
			wantProtocol = "plaintext"
		}
		if protocol != wantProtocol {
			t.Errorf("[kafka] security_protocol = %q, want %q", protocol, wantProtocol)
		}
		switch r.set.name {
		case "secure":
			if first["sasl_mechanism"] != "SCRAM-SHA-512" || first["ssl_ca_file"] == nil {
				t.Errorf("ci/secure-values.yaml: want SCRAM-SHA-512 and a CA file, got %v", first)
			}
		case "inline":
			props, _ := first["properties"].(map[string]any)
			if props["socket.keepalive.enable"] != true || props["reconnect.backoff.max.ms"] != int64(10000) {
				t.Errorf("[kafka.properties] = %v, want socket.keepalive.enable = true and reconnect.backoff.max.ms = 10000", props)
			}
		case "mtls":
			if first["ssl_cert_file"] == nil || first["ssl_ca_file"] == nil {
				t.Errorf("mutual TLS: want ssl_ca_file, ssl_cert_file and ssl_key_file, got %v", first)
			}
		}
	})
}

// No password is in a ConfigMap, a literal variable, an annotation or an
// argument: only in Secrets.
func TestPasswordsStayInSecrets(t *testing.T) {
	df := parseDockerfile(t)
	forEachSet(t, func(t *testing.T, r *render) {
		secrets := append([]string{}, inlinePasswords...)
		for _, o := range r.byKind["Secret"] {
			s := o.obj.(*corev1.Secret)
			for k, v := range s.StringData {
				if strings.Contains(strings.ToLower(k), "password") && v != "" {
					secrets = append(secrets, v)
				}
			}
		}
		for _, o := range r.objects {
			if o.kind == "Secret" {
				continue
			}
			raw, err := json.Marshal(o.obj)
			if err != nil {
				t.Fatal(err)
			}
			for _, pw := range secrets {
				if bytes.Contains(raw, []byte(pw)) {
					t.Errorf("%s %s holds the password %q (it belongs in a Secret)", o.kind, o.name, pw)
				}
			}
		}
		for _, sc := range configsOf(t, r, df) {
			var walk func(prefix string, m map[string]any)
			walk = func(prefix string, m map[string]any) {
				for k, v := range m {
					if sub, ok := v.(map[string]any); ok {
						walk(prefix+k+".", sub)
					} else if strings.Contains(k, "password") {
						t.Errorf("%s %s: the config sets %s%s; passwords come from the environment", sc.pod.kind, sc.pod.name, prefix, k)
					}
				}
			}
			walk("", sc.doc)
		}
		for _, p := range r.pods() {
			for _, c := range p.template.Spec.Containers {
				for _, e := range c.Env {
					if strings.Contains(e.Name, "PASSWORD") && (e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
						t.Errorf("%s %s: %s is not read from a Secret", p.kind, p.name, e.Name)
					}
				}
			}
		}
	})
}

// KEDA's Kafka scalers use the services' security: `sasl` and `tls` in the
// trigger, the credentials from the chart's TriggerAuthentication, itself
// reading the Secrets and ConfigMaps the pods read.
func TestKedaTriggersAuthenticate(t *testing.T) {
	df := parseDockerfile(t)
	forEachSet(t, func(t *testing.T, r *render) {
		k := kafkaTable(t, configsOf(t, r, df))
		protocol, _ := k["security_protocol"].(string)
		mechanism, _ := k["sasl_mechanism"].(string)
		wantSasl := map[string]string{"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}[mechanism]
		tls := protocol == "ssl" || protocol == "sasl_ssl"
		secured := wantSasl != "" || k["ssl_ca_file"] != nil || k["ssl_cert_file"] != nil
		var router podOwner
		for _, p := range r.longRunning() {
			if p.template.Spec.Containers[0].Command[0] == "stream-router" {
				router = p
			}
		}
		used := map[string]bool{}
		for _, o := range r.byKind["ScaledObject"] {
			so := o.obj.(*ScaledObject)
			for _, tr := range so.Spec.Triggers {
				where := fmt.Sprintf("ScaledObject %s trigger %s", o.name, tr.Name)
				if tr.Metadata["sasl"] != wantSasl {
					t.Errorf("%s: sasl %q, want %q", where, tr.Metadata["sasl"], wantSasl)
				}
				if (tr.Metadata["tls"] == "enable") != tls {
					t.Errorf("%s: tls %q with security_protocol %s", where, tr.Metadata["tls"], protocol)
				}
				if tr.Metadata["bootstrapServers"] != k["bootstrap"] {
					t.Errorf("%s: bootstrapServers %q, the services' %q", where, tr.Metadata["bootstrapServers"], k["bootstrap"])
				}
				switch ref := tr.AuthenticationRef; {
				case ref == nil && secured:
					t.Errorf("%s: no authenticationRef with Kafka security on", where)
				case ref == nil:
				case r.set.name == "mtls" && strings.Contains(o.name, "sink-clickhouse"):
					if ref.Name != "ops-kafka-auth" {
						t.Errorf("%s: authenticationRef %s, want the operator's own ops-kafka-auth", where, ref.Name)
					}
				default:
					if _, ok := r.get("TriggerAuthentication", ref.Name); !ok {
						t.Errorf("%s: authenticationRef %s is not rendered", where, ref.Name)
					}
					used[ref.Name] = true
				}
			}
		}
		if !secured && len(r.byKind["TriggerAuthentication"]) > 0 {
			t.Errorf("a TriggerAuthentication without Kafka security")
		}
		for _, o := range r.byKind["TriggerAuthentication"] {
			if !used[o.name] {
				t.Errorf("TriggerAuthentication %s is rendered but no ScaledObject uses it", o.name)
			}
			ta := o.obj.(*TriggerAuthentication)
			params := map[string]bool{}
			for _, ref := range ta.Spec.SecretTargetRef {
				params[ref.Parameter] = true
				if _, _, err := secretValue(r, &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: ref.Name}, Key: ref.Key}); err != nil {
					t.Errorf("TriggerAuthentication %s: %s: %v", o.name, ref.Parameter, err)
				}
			}
			for _, ref := range ta.Spec.ConfigMapTargetRef {
				params[ref.Parameter] = true
				if _, _, err := configMapValue(r, ref.Name, ref.Key); err != nil {
					t.Errorf("TriggerAuthentication %s: %s: %v", o.name, ref.Parameter, err)
				}
			}
			for p := range params {
				if !kafkaScalerAuthParams[p] {
					t.Errorf("TriggerAuthentication %s: the Kafka scaler reads no parameter %s", o.name, p)
				}
			}
			want := map[string]bool{
				"username": wantSasl != "", "password": wantSasl != "", "ca": k["ssl_ca_file"] != nil,
				"cert": k["ssl_cert_file"] != nil, "key": k["ssl_key_file"] != nil,
			}
			for p, needed := range want {
				if params[p] != needed {
					t.Errorf("TriggerAuthentication %s: parameter %s present %v, want %v", o.name, p, params[p], needed)
				}
			}
			// The same password the pods read.
			if wantSasl != "" && router.template != nil {
				pod := envVar(&router.template.Spec.Containers[0], "ROUTER_KAFKA_SASL_PASSWORD")
				for _, ref := range ta.Spec.SecretTargetRef {
					if ref.Parameter == "password" && (pod == nil || pod.ValueFrom.SecretKeyRef.Name != ref.Name || pod.ValueFrom.SecretKeyRef.Key != ref.Key) {
						t.Errorf("TriggerAuthentication %s reads the password from %s/%s, the pods elsewhere", o.name, ref.Name, ref.Key)
					}
				}
			}
		}
	})
}

// Hook Jobs read only Secrets and ConfigMaps that exist when they run:
// existing ones, or the chart's hook copies (never the release's own, which
// a pre-upgrade hook would see in their old form and a pre-install one not
// at all). The register Job authenticates to the registry.
func TestHookJobsBringTheirCredentials(t *testing.T) {
	forEachSet(t, func(t *testing.T, r *render) {
		for _, p := range r.pods() {
			if p.kind != "Job" {
				continue
			}
			events := hookEvents(p.meta)
			weight, _ := strconv.Atoi(p.meta.Annotations["helm.sh/hook-weight"])
			check := func(kind, name, what string) {
				o, ok := r.get(kind, name)
				if !ok {
					return
				}
				if !isHook(o.meta) {
					t.Errorf("Job %s: %s reads %s %s, which is not a hook object", p.name, what, kind, name)
					return
				}
				if !reflect.DeepEqual(hookEvents(o.meta), events) {
					t.Errorf("Job %s: %s %s runs at %v, the Job at %v", p.name, kind, name, hookEvents(o.meta), events)
				}
				if w, _ := strconv.Atoi(o.meta.Annotations["helm.sh/hook-weight"]); w >= weight {
					t.Errorf("Job %s (weight %d): %s %s has weight %d, so it may not exist yet", p.name, weight, kind, name, w)
				}
			}
			spec := p.template.Spec
			for _, c := range spec.Containers {
				for _, e := range c.Env {
					if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
						check("Secret", e.ValueFrom.SecretKeyRef.Name, e.Name)
					}
				}
			}
			for _, v := range spec.Volumes {
				if v.Secret != nil {
					check("Secret", v.Secret.SecretName, "volume "+v.Name)
				}
				if v.ConfigMap != nil {
					check("ConfigMap", v.ConfigMap.Name, "volume "+v.Name)
				}
			}
			c := spec.Containers[0]
			if c.Command[0] != "schema-registry" {
				continue
			}
			user := envVar(&c, "REGISTRY_USERNAME")
			password := envVar(&c, "REGISTRY_PASSWORD")
			wantUser := map[string]string{"secure": "admin", "inline": "admin", "mtls": "SRKEY123"}[r.set.name]
			switch {
			case wantUser == "" && (user != nil || password != nil):
				t.Errorf("Job %s: registry credentials without auth", p.name)
			case wantUser == "":
			case user == nil || user.Value != wantUser || password == nil || password.ValueFrom == nil || password.ValueFrom.SecretKeyRef == nil:
				t.Errorf("Job %s: want REGISTRY_USERNAME=%s and REGISTRY_PASSWORD from a Secret, got %v / %v", p.name, wantUser, user, password)
			default:
				v, known, err := secretValue(r, password.ValueFrom.SecretKeyRef)
				if err != nil {
					t.Errorf("Job %s: REGISTRY_PASSWORD: %v", p.name, err)
				} else if known && v != inlineAdminPassword {
					t.Errorf("Job %s: REGISTRY_PASSWORD is not the register user's", p.name)
				}
			}
			ca := envVar(&c, "REGISTRY_CA_FILE")
			if (ca != nil) != (r.set.name == "mtls") {
				t.Errorf("Job %s: REGISTRY_CA_FILE %v (the mtls set's registry has a private CA, the others none)", p.name, ca)
			}
			if ca != nil {
				df := parseDockerfile(t)
				if _, err := resolveFile(r, df, &spec, &c, ca.Value); err != nil {
					t.Errorf("Job %s: REGISTRY_CA_FILE: %v", p.name, err)
				}
			}
		}
	})
}

// Pods roll when a Secret the chart writes for them changes (or
// credentialsRevision does), and only those that read it; the registry's
// users file is reloaded by the registry and rolls nothing.
func TestSecretChangesRollTheirPods(t *testing.T) {
	annotations := func(t *testing.T, vs valueSet) map[string][2]string {
		r := rendered(t, vs)
		out := map[string][2]string{}
		for _, p := range r.longRunning() {
			a := p.template.Annotations
			if a["checksum/secrets"] == "" {
				t.Errorf("%s: %s %s has no checksum/secrets", vs.name, p.kind, p.name)
			}
			out[p.template.Spec.Containers[0].Command[0]] = [2]string{a["checksum/config"], a["checksum/secrets"]}
		}
		return out
	}
	base := annotations(t, inlineSet)
	everyone := []string{"ingest-gateway", "schema-registry", "stream-router", "sink-clickhouse", "enrich-activity"}
	cases := []struct {
		name  string
		set   []string
		rolls []string
	}{
		{"kafka-password", []string{"--set", "kafka.sasl.password=another-kafka-pw"}, everyone},
		{"registry-password", []string{"--set", "schemaRegistry.client.password=another-registry-pw"}, []string{"ingest-gateway", "stream-router", "sink-clickhouse", "enrich-activity"}},
		{"clickhouse-password", []string{"--set", "sinkClickhouse.clickhouse.password=another-ch-pw"}, []string{"sink-clickhouse"}},
		{"revision", []string{"--set", "credentialsRevision=r2"}, everyone},
		{"users", []string{"--set-json", "schemaRegistry.auth.users=" + registryUsersJSON([][2]string{{"admin", "admin"}, {"context", "write"}, {"new-reader", "read"}})}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := annotations(t, inlineVariant(tc.name, tc.set...))
			for _, svc := range everyone {
				if got[svc][0] != base[svc][0] {
					t.Errorf("%s: checksum/config changed, but the change was a secret", svc)
				}
				rolled := got[svc][1] != base[svc][1]
				if rolled != contains(tc.rolls, svc) {
					t.Errorf("%s: checksum/secrets changed = %v, want %v", svc, rolled, contains(tc.rolls, svc))
				}
			}
		})
	}
}

// Every values file in ci/ passes `helm lint --strict` and is one of the
// value sets these tests render.
func TestEveryCIValuesFile(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no ci/*.yaml (%v)", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			covered := false
			for _, vs := range valueSets {
				covered = covered || contains(vs.args, f)
			}
			if !covered {
				t.Errorf("%s is not a value set of helm/tests (render_test.go, valueSets)", f)
			}
			cmd := exec.Command(helmBinary(t), "lint", "--strict", "--kube-version", kubeVersion, chartDir, "-f", f)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("helm lint --strict -f %s: %v\n%s", f, err, out)
			}
		})
	}
}

// Values that cannot work are refused at install, naming what to change.
func TestInconsistentSecurityIsRefused(t *testing.T) {
	hash := passwordHash("x")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"sasl without mechanism", []string{"--set", "kafka.securityProtocol=sasl_ssl,kafka.sasl.username=u,kafka.sasl.password=p"}, "/kafka/sasl/mechanism"},
		{"sasl without username", []string{"--set", "kafka.securityProtocol=sasl_ssl,kafka.sasl.mechanism=PLAIN,kafka.sasl.password=p"}, "/kafka/sasl/username"},
		{"sasl without password", []string{"--set", "kafka.securityProtocol=sasl_ssl,kafka.sasl.mechanism=PLAIN,kafka.sasl.username=u"}, "/kafka/sasl/password"},
		{"sasl values on plaintext", []string{"--set", "kafka.sasl.mechanism=PLAIN,kafka.sasl.username=u,kafka.sasl.password=p"}, "kafka.sasl.* is set but kafka.securityProtocol is plaintext"},
		{"unknown mechanism", []string{"--set", "kafka.securityProtocol=sasl_ssl,kafka.sasl.mechanism=GSSAPI,kafka.sasl.username=u,kafka.sasl.password=p"}, "/kafka/sasl/mechanism"},
		{"ca on plaintext", []string{"--set", "kafka.tls.ca.existingSecret=ca"}, "TLS needs ssl or sasl_ssl"},
		{"two ca sources", []string{"--set", "kafka.securityProtocol=ssl,kafka.tls.ca.existingSecret=a,kafka.tls.ca.existingConfigMap=b"}, "set one of existingSecret, existingConfigMap and pem"},
		{"ca not pem", []string{"--set", "kafka.securityProtocol=ssl,kafka.tls.ca.pem=hello"}, "/kafka/tls/ca/pem"},
		{"misspelt key", []string{"--set", "kafka.sasl.user=u"}, "additional properties 'user' not allowed"},
		{"owned property", []string{"--set", "kafka.properties.acks=1"}, "kafka.properties.acks is refused"},
		{"security as a property", []string{"--set", "kafka.properties.security\\.protocol=ssl"}, "kafka.properties.security.protocol is refused"},
		{"registry user without password", []string{"--set", "schemaRegistry.client.username=u"}, "/schemaRegistry/client/password"},
		{"registry ca on http", []string{"--set", "schemaRegistry.client.ca.existingSecret=ca"}, "a CA needs an https:// registry"},
		{"clickhouse ca on http", []string{"--set", "sinkClickhouse.clickhouse.ca.existingSecret=ca"}, "a CA needs an https:// URL"},
		{"auth without users", []string{"--set", "schemaRegistry.auth.enabled=true,schemaRegistry.client.username=u,schemaRegistry.client.password=p"}, "/schemaRegistry/auth/users"},
		{"auth without client credentials", []string{"--set", "schemaRegistry.auth.enabled=true,schemaRegistry.auth.existingSecret=users"}, "the services need credentials of a user with role write"},
		{"client user read only", []string{"--set", "schemaRegistry.auth.enabled=true,schemaRegistry.client.username=r,schemaRegistry.client.password=p",
			"--set-json", `schemaRegistry.auth.users=[{"name":"r","role":"read","password_hash":"` + hash + `"}]`}, "role write or admin"},
		{"compatibility without admin", []string{"--set", "schemaRegistry.auth.enabled=true,schemaRegistry.client.username=w,schemaRegistry.client.password=p,schemaRegistry.register.compatibility=FULL",
			"--set-json", `schemaRegistry.auth.users=[{"name":"w","role":"write","password_hash":"` + hash + `"}]`}, "needs role admin"},
		{"bad password hash", []string{"--set", "schemaRegistry.auth.enabled=true,schemaRegistry.client.username=w,schemaRegistry.client.password=p",
			"--set-json", `schemaRegistry.auth.users=[{"name":"w","role":"write","password_hash":"hunter2"}]`}, "password_hash"},
		{"auth on an external registry", []string{"--set", "schemaRegistry.enabled=false,schemaRegistry.externalUrl=http://r:8081,schemaRegistry.auth.enabled=true,schemaRegistry.auth.existingSecret=u,schemaRegistry.client.username=u,schemaRegistry.client.password=p"}, "schemaRegistry.enabled=false"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"template", "refused", chartDir, "--namespace", namespace, "--kube-version", kubeVersion}, tc.args...)
			cmd := exec.Command(helmBinary(t), args...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Run(); err == nil {
				t.Fatalf("helm template %s succeeded; want a refusal mentioning %q", strings.Join(tc.args, " "), tc.want)
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("the refusal does not mention %q:\n%s", tc.want, stderr.String())
			}
		})
	}
}

// The chart's Secret holds exactly the passwords the values carry, under the
// keys the pods read; with existingSecret everywhere it holds none.
func TestChartSecretHoldsOnlyValuesPasswords(t *testing.T) {
	forEachSet(t, func(t *testing.T, r *render) {
		var keys []string
		for _, o := range r.byKind["Secret"] {
			if !strings.HasSuffix(o.name, "-connections") || isHook(o.meta) {
				continue
			}
			for k := range o.obj.(*corev1.Secret).StringData {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		want := map[string][]string{
			"inline": {"kafka-sasl-password", "kafka-sasl-username", "registry-password"},
			// KEDA reads the SASL user from a Secret.
			"secure": {"kafka-sasl-username"},
		}[r.set.name]
		if strings.Join(keys, ",") != strings.Join(want, ",") {
			t.Errorf("the chart's connections Secret holds %v, want %v", keys, want)
		}
	})
}

// The chart refuses the same [kafka.properties] names as the services
// (runtime/src/kafka.rs, OWNED), so an owned setting fails at install.
func TestChartRefusesTheServicesOwnedProperties(t *testing.T) {
	src, err := os.ReadFile(filepath.Join(repoRoot, "runtime/src/kafka.rs"))
	if err != nil {
		t.Fatal(err)
	}
	block := regexp.MustCompile(`(?s)pub const OWNED: &\[\(&str, &str\)\] = &\[(.*?)\n\];`).FindSubmatch(src)
	if block == nil {
		t.Fatal("runtime/src/kafka.rs: no `pub const OWNED: &[(&str, &str)] = &[ ... ];`")
	}
	var rust []string
	for _, m := range regexp.MustCompile(`\(\s*"([a-z0-9._]+)"`).FindAllSubmatch(block[1], -1) {
		rust = append(rust, string(m[1]))
	}
	tpl, err := os.ReadFile(filepath.Join(chartDir, "templates/_connections.tpl"))
	if err != nil {
		t.Fatal(err)
	}
	list := regexp.MustCompile(`(?s)define "cp.kafkaOwnedProperties" -\}\}\n(.*?)\n\{\{- end`).FindSubmatch(tpl)
	if list == nil {
		t.Fatal(`templates/_connections.tpl: no "cp.kafkaOwnedProperties"`)
	}
	chart := strings.Fields(string(list[1]))
	sort.Strings(rust)
	sort.Strings(chart)
	if strings.Join(rust, " ") != strings.Join(chart, " ") {
		t.Errorf("the chart refuses %v in kafka.properties, the services %v", chart, rust)
	}
}

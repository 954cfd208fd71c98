package charttest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

var (
	repoRoot  = mustAbs("../..")
	chartDir  = mustAbs("../context-pipeline")
	namespace = "context"
	// The Kubernetes version the chart is rendered for (Chart.yaml asks for
	// >= 1.27); scripts/helm-check passes its own.
	kubeVersion = envOr("HELM_CHECK_KUBE_VERSION", "1.34.0")
)

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func mustAbs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		panic(err)
	}
	return a
}

func helmBinary(t *testing.T) string {
	t.Helper()
	if h := os.Getenv("HELM"); h != "" {
		return h
	}
	home, _ := os.UserHomeDir()
	h := filepath.Join(home, ".cache/context-helm/v3.19.0/helm")
	if _, err := os.Stat(h); err != nil {
		t.Fatalf("no helm: set HELM or run scripts/helm-check, which installs it (%v)", err)
	}
	return h
}

// A value set the chart is rendered with.
type valueSet struct {
	name    string
	release string
	args    []string
	// Secrets and ConfigMaps the values name but the chart does not create.
	externalSecrets    []string
	externalConfigMaps []string
}

// A model artifact stand-in for the `inline` model ConfigMap.
var modelFile = filepath.Join(os.TempDir(), "context-pipeline-helm-tests-model.json")

var valueSets = []valueSet{
	{name: "default", release: "rel"},
	{
		name:               "production",
		release:            "context-pipeline",
		args:               []string{"-f", filepath.Join(chartDir, "ci/production-values.yaml")},
		externalSecrets:    []string{"ingest-api-keys", "clickhouse-credentials"},
		externalConfigMaps: []string{"activity-model"},
	},
	{
		// The branches neither file takes: keys written by the chart, TLS on
		// the gateway, an external registry, a model from --set-file, one
		// sink source off.
		name:    "features",
		release: "feat",
		args: []string{
			"--set-json", `ingestGateway.apiKeys.keys=[{"app_id":"demo-app","hash":"sha256:` + strings.Repeat("ab", 32) + `","rate_limit_per_s":500,"burst":5000},{"app_id":"old-app","hash":"sha256:` + strings.Repeat("0f", 32) + `","enabled":false}]`,
			"--set", "ingestGateway.tls.enabled=true,ingestGateway.tls.secretName=gateway-tls",
			"--set", "ingestGateway.autoscaling.enabled=false,ingestGateway.replicaCount=3",
			"--set", "schemaRegistry.enabled=false,schemaRegistry.externalUrl=http://registry.kafka.svc:8081",
			"--set", "schemaRegistry.register.compatibility=FULL_TRANSITIVE",
			"--set", "enrichActivity.model.source=configMap",
			"--set-file", "enrichActivity.model.configMap.inline=" + modelFile,
			"--set", "sinkClickhouse.sources.deadletter=false",
			"--set", "networkPolicy.enabled=true,networkPolicy.egress.enabled=true,metrics.serviceMonitor.enabled=true",
			"--set", "streamRouter.keda.enabled=true,enrichActivity.keda.enabled=true",
		},
		externalSecrets: []string{"gateway-tls"},
	},
	{
		// Every connection secured, every credential in an existing Secret.
		name:               "secure",
		release:            "context-pipeline",
		args:               []string{"-f", filepath.Join(chartDir, "ci/secure-values.yaml")},
		externalSecrets:    []string{"ingest-api-keys", "clickhouse-credentials", "kafka-credentials", "kafka-ca", "registry-users", "registry-context", "registry-admin"},
		externalConfigMaps: []string{"clickhouse-ca"},
	},
	inlineSet,
	{
		// Strimzi-style mutual TLS (CA and client certificate from Secrets, an
		// encrypted key), an external registry over HTTPS with basic auth
		// (Confluent Cloud style, its CA in a ConfigMap), a ScaledObject with a
		// TriggerAuthentication of the operator's own.
		name:    "mtls",
		release: "mtls",
		args: []string{
			"--set", "kafka.bootstrapServers=my-cluster-kafka-bootstrap.kafka.svc:9093,kafka.securityProtocol=ssl",
			"--set", "kafka.tls.ca.existingSecret=my-cluster-cluster-ca-cert",
			"--set", "kafka.tls.clientCert.existingSecret=context-user,kafka.tls.clientCert.certKey=user.crt,kafka.tls.clientCert.keyKey=user.key,kafka.tls.clientCert.keyPasswordKey=key.password",
			"--set", "schemaRegistry.enabled=false,schemaRegistry.externalUrl=https://psrc-abc12.eu-west-1.aws.confluent.cloud",
			"--set", "schemaRegistry.client.username=SRKEY123,schemaRegistry.client.existingSecret=confluent-registry,schemaRegistry.client.passwordKey=api-secret",
			"--set", "schemaRegistry.client.ca.existingConfigMap=registry-ca,schemaRegistry.client.ca.key=bundle.pem",
			"--set", "streamRouter.keda.enabled=true,enrichActivity.keda.enabled=true",
			"--set", "sinkClickhouse.keda.enabled=true,sinkClickhouse.keda.authenticationRef=ops-kafka-auth",
		},
		externalSecrets:    []string{"my-cluster-cluster-ca-cert", "context-user", "confluent-registry"},
		externalConfigMaps: []string{"registry-ca"},
	},
}

// One decoded manifest.
type object struct {
	source string // the template it came from
	kind   string
	name   string
	meta   metav1.ObjectMeta
	obj    any
}

type render struct {
	set     valueSet
	objects []object
	byKind  map[string][]object
}

func (r *render) get(kind, name string) (object, bool) {
	for _, o := range r.byKind[kind] {
		if o.name == name {
			return o, true
		}
	}
	return object{}, false
}

var (
	renders   = map[string]*render{}
	rendersMu sync.Mutex
)

// rendered renders a value set once per test binary.
func rendered(t *testing.T, vs valueSet) *render {
	t.Helper()
	rendersMu.Lock()
	defer rendersMu.Unlock()
	if r, ok := renders[vs.name]; ok {
		return r
	}
	if err := os.WriteFile(modelFile, []byte(`{"model_version":"act-test"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, []byte(testPKI(t).caPEM), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"template", vs.release, chartDir, "--namespace", namespace, "--kube-version", kubeVersion}, vs.args...)
	cmd := exec.Command(helmBinary(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	r := &render{set: vs, byKind: map[string][]object{}}
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(stdout.String(), -1) {
		o, ok := decode(t, vs.name, doc)
		if ok {
			r.objects = append(r.objects, o)
			r.byKind[o.kind] = append(r.byKind[o.kind], o)
		}
	}
	if len(r.objects) == 0 {
		t.Fatalf("%s: helm rendered nothing", vs.name)
	}
	renders[vs.name] = r
	return r
}

// The Go type of each kind the chart may render.
func newObject(apiVersion, kind string) any {
	switch apiVersion + " " + kind {
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}
	case "v1 Secret":
		return &corev1.Secret{}
	case "v1 Service":
		return &corev1.Service{}
	case "v1 ServiceAccount":
		return &corev1.ServiceAccount{}
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}
	case "apps/v1 StatefulSet":
		return &appsv1.StatefulSet{}
	case "batch/v1 Job":
		return &batchv1.Job{}
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}
	case "autoscaling/v2 HorizontalPodAutoscaler":
		return &autoscalingv2.HorizontalPodAutoscaler{}
	case "networking.k8s.io/v1 Ingress":
		return &networkingv1.Ingress{}
	case "networking.k8s.io/v1 NetworkPolicy":
		return &networkingv1.NetworkPolicy{}
	case "monitoring.coreos.com/v1 ServiceMonitor":
		return &monitoringv1.ServiceMonitor{}
	case "keda.sh/v1alpha1 ScaledObject":
		return &ScaledObject{}
	case "keda.sh/v1alpha1 TriggerAuthentication":
		return &TriggerAuthentication{}
	}
	return nil
}

// decode turns one YAML document into its typed object, strictly: unknown
// and duplicate fields and case-insensitive matches are errors.
func decode(t *testing.T, set, doc string) (object, bool) {
	t.Helper()
	source := ""
	if m := regexp.MustCompile(`(?m)^# Source: (.+)$`).FindStringSubmatch(doc); m != nil {
		source = m[1]
	}
	body := regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(doc, "")
	if strings.TrimSpace(body) == "" {
		return object{}, false
	}
	raw, err := yaml.YAMLToJSONStrict([]byte(doc))
	if err != nil {
		t.Errorf("%s: %s: not valid YAML: %v", set, source, err)
		return object{}, false
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(raw, &tm); err != nil {
		t.Errorf("%s: %s: %v", set, source, err)
		return object{}, false
	}
	obj := newObject(tm.APIVersion, tm.Kind)
	if obj == nil {
		t.Errorf("%s: %s: %s %s is not a kind these tests know; add its Go type", set, source, tm.APIVersion, tm.Kind)
		return object{}, false
	}
	strict, err := sigsjson.UnmarshalStrict(raw, obj)
	if err != nil {
		t.Errorf("%s: %s: %s does not decode: %v", set, source, tm.Kind, err)
		return object{}, false
	}
	for _, e := range strict {
		t.Errorf("%s: %s: %s: %v", set, source, tm.Kind, e)
	}
	var meta struct {
		Metadata metav1.ObjectMeta `json:"metadata"`
	}
	_ = json.Unmarshal(raw, &meta)
	return object{source: source, kind: tm.Kind, name: meta.Metadata.Name, meta: meta.Metadata, obj: obj}, true
}

// A workload's pod template with its owner.
type podOwner struct {
	object
	template *corev1.PodTemplateSpec
	replicas *int32
}

func (r *render) pods() []podOwner {
	var out []podOwner
	for _, o := range r.objects {
		switch w := o.obj.(type) {
		case *appsv1.Deployment:
			out = append(out, podOwner{o, &w.Spec.Template, w.Spec.Replicas})
		case *appsv1.StatefulSet:
			out = append(out, podOwner{o, &w.Spec.Template, w.Spec.Replicas})
		case *batchv1.Job:
			out = append(out, podOwner{o, &w.Spec.Template, nil})
		}
	}
	return out
}

func (r *render) longRunning() []podOwner {
	var out []podOwner
	for _, p := range r.pods() {
		if p.kind != "Job" {
			out = append(out, p)
		}
	}
	return out
}

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func forEachSet(t *testing.T, f func(t *testing.T, r *render)) {
	for _, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) { f(t, rendered(t, vs)) })
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func fmtErrs(errs []string) string { return strings.Join(errs, "; ") }

// Names and labels the API server would refuse.
func TestNamesAndLabelsAreValid(t *testing.T) {
	forEachSet(t, func(t *testing.T, r *render) {
		for _, o := range r.objects {
			if errs := validation.IsDNS1123Subdomain(o.name); len(errs) > 0 {
				t.Errorf("%s %s: %s", o.kind, o.name, fmtErrs(errs))
			}
			if o.kind == "Service" {
				if errs := validation.IsDNS1035Label(o.name); len(errs) > 0 {
					t.Errorf("Service %s: %s", o.name, fmtErrs(errs))
				}
			}
			if o.kind == "StatefulSet" && len(o.name) > 52 {
				t.Errorf("StatefulSet %s: longer than 52 characters (its revision label would be refused)", o.name)
			}
			if o.meta.Namespace != namespace && o.kind != "ServiceMonitor" {
				t.Errorf("%s %s: namespace %q, want %q", o.kind, o.name, o.meta.Namespace, namespace)
			}
			for k, v := range o.meta.Labels {
				if errs := validation.IsQualifiedName(k); len(errs) > 0 {
					t.Errorf("%s %s: label key %s: %s", o.kind, o.name, k, fmtErrs(errs))
				}
				if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
					t.Errorf("%s %s: label %s=%s: %s", o.kind, o.name, k, v, fmtErrs(errs))
				}
			}
		}
		seen := map[string]bool{}
		for _, o := range r.objects {
			key := o.kind + "/" + o.name
			if seen[key] {
				t.Errorf("%s rendered twice", key)
			}
			seen[key] = true
		}
	})
}

// Probes, resources and the security context of every pod; the UID and GID
// of the Dockerfile's runtime user.
func TestPodsAreHardened(t *testing.T) {
	df := parseDockerfile(t)
	forEachSet(t, func(t *testing.T, r *render) {
		if len(r.longRunning()) == 0 {
			t.Fatal("no workloads rendered")
		}
		for _, p := range r.pods() {
			where := p.kind + " " + p.name
			spec := p.template.Spec
			if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
				t.Errorf("%s: mounts a service account token it never uses", where)
			}
			psc := spec.SecurityContext
			if len(spec.Containers) == 0 {
				t.Errorf("%s: no containers", where)
			}
			for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
				cw := fmt.Sprintf("%s container %s", where, c.Name)
				if len(c.Command) == 0 || !contains(df.binaries, c.Command[0]) {
					t.Errorf("%s: command %v does not start with one of the image's binaries %v", cw, c.Command, df.binaries)
				}
				for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
					if _, ok := c.Resources.Requests[res]; !ok {
						t.Errorf("%s: no %s request", cw, res)
					}
					if res == corev1.ResourceMemory {
						if _, ok := c.Resources.Limits[res]; !ok {
							t.Errorf("%s: no memory limit", cw)
						}
					}
				}
				sc := c.SecurityContext
				if sc == nil {
					t.Errorf("%s: no securityContext", cw)
					continue
				}
				nonRoot := sc.RunAsNonRoot
				if nonRoot == nil && psc != nil {
					nonRoot = psc.RunAsNonRoot
				}
				if nonRoot == nil || !*nonRoot {
					t.Errorf("%s: runAsNonRoot is not true", cw)
				}
				if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
					t.Errorf("%s: readOnlyRootFilesystem is not true", cw)
				}
				if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
					t.Errorf("%s: allowPrivilegeEscalation is not false", cw)
				}
				if sc.Privileged != nil && *sc.Privileged {
					t.Errorf("%s: privileged", cw)
				}
				if sc.Capabilities == nil || !containsCap(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
					t.Errorf("%s: capabilities must drop ALL and add none", cw)
				}
				uid, gid := sc.RunAsUser, sc.RunAsGroup
				if uid == nil && psc != nil {
					uid = psc.RunAsUser
				}
				if gid == nil && psc != nil {
					gid = psc.RunAsGroup
				}
				if uid == nil || *uid != df.uid {
					t.Errorf("%s: runAsUser %v, but the image's user is %d (Dockerfile USER)", cw, deref(uid), df.uid)
				}
				if gid == nil || *gid != df.gid {
					t.Errorf("%s: runAsGroup %v, but the image's group is %d (Dockerfile USER)", cw, deref(gid), df.gid)
				}
				mounted := map[string]bool{}
				for _, v := range spec.Volumes {
					mounted[v.Name] = true
				}
				for _, m := range c.VolumeMounts {
					if !mounted[m.Name] {
						t.Errorf("%s: mounts the undefined volume %s", cw, m.Name)
					}
					if m.SubPath != "" {
						t.Errorf("%s: mount %s uses subPath, so updates of its source never reach the pod", cw, m.Name)
					}
				}
			}
		}
		for _, p := range r.longRunning() {
			for _, c := range p.template.Spec.Containers {
				cw := fmt.Sprintf("%s %s container %s", p.kind, p.name, c.Name)
				ports := map[string]bool{}
				for _, port := range c.Ports {
					ports[port.Name] = true
				}
				for _, probe := range []struct {
					name string
					p    *corev1.Probe
					path string
				}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}, {"startup", c.StartupProbe, "/healthz"}} {
					if probe.p == nil || probe.p.HTTPGet == nil {
						t.Errorf("%s: no %s probe over HTTP", cw, probe.name)
						continue
					}
					if probe.p.HTTPGet.Path != probe.path {
						t.Errorf("%s: %s probe on %s, want %s", cw, probe.name, probe.p.HTTPGet.Path, probe.path)
					}
					if !ports[probe.p.HTTPGet.Port.String()] {
						t.Errorf("%s: %s probe on port %s, which the container does not declare", cw, probe.name, probe.p.HTTPGet.Port.String())
					}
				}
			}
		}
	})
}

func containsCap(caps []corev1.Capability, c corev1.Capability) bool {
	for _, x := range caps {
		if x == c {
			return true
		}
	}
	return false
}

func deref(p *int64) any {
	if p == nil {
		return "unset"
	}
	return *p
}

// Every Service selects pods the release runs, on ports those pods declare.
func TestServicesSelectRenderedPods(t *testing.T) {
	forEachSet(t, func(t *testing.T, r *render) {
		for _, o := range r.byKind["Service"] {
			svc := o.obj.(*corev1.Service)
			var matched []podOwner
			for _, p := range r.longRunning() {
				if selects(svc.Spec.Selector, p.template.Labels) {
					matched = append(matched, p)
				}
			}
			if len(matched) == 0 {
				t.Errorf("Service %s selects %v: no Deployment or StatefulSet of the release has such pods", o.name, svc.Spec.Selector)
				continue
			}
			for _, port := range svc.Spec.Ports {
				for _, p := range matched {
					if !podDeclaresPort(p.template, port.TargetPort.String()) {
						t.Errorf("Service %s port %s: target %s is not a port of %s %s", o.name, port.Name, port.TargetPort.String(), p.kind, p.name)
					}
				}
			}
		}
		for _, o := range r.byKind["StatefulSet"] {
			sts := o.obj.(*appsv1.StatefulSet)
			so, ok := r.get("Service", sts.Spec.ServiceName)
			if !ok {
				t.Errorf("StatefulSet %s: serviceName %s is not rendered", o.name, sts.Spec.ServiceName)
			} else if so.obj.(*corev1.Service).Spec.ClusterIP != "None" {
				t.Errorf("StatefulSet %s: its governing Service %s is not headless", o.name, so.name)
			}
		}
		for _, o := range r.byKind["Deployment"] {
			d := o.obj.(*appsv1.Deployment)
			if !selects(d.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
				t.Errorf("Deployment %s: its selector does not match its own pods", o.name)
			}
		}
		for _, o := range r.byKind["PodDisruptionBudget"] {
			pdb := o.obj.(*policyv1.PodDisruptionBudget)
			n := 0
			for _, p := range r.longRunning() {
				if selects(pdb.Spec.Selector.MatchLabels, p.template.Labels) {
					n++
				}
			}
			if n != 1 {
				t.Errorf("PodDisruptionBudget %s selects the pods of %d workloads, want 1", o.name, n)
			}
		}
		for _, o := range r.byKind["Ingress"] {
			ing := o.obj.(*networkingv1.Ingress)
			for _, rule := range ing.Spec.Rules {
				for _, path := range rule.HTTP.Paths {
					svc, ok := r.get("Service", path.Backend.Service.Name)
					if !ok {
						t.Errorf("Ingress %s: backend Service %s is not rendered", o.name, path.Backend.Service.Name)
						continue
					}
					found := false
					for _, port := range svc.obj.(*corev1.Service).Spec.Ports {
						found = found || port.Name == path.Backend.Service.Port.Name
					}
					if !found {
						t.Errorf("Ingress %s: Service %s has no port %s", o.name, svc.name, path.Backend.Service.Port.Name)
					}
					if strings.HasPrefix(path.Path, "/metrics") || strings.HasPrefix(path.Path, "/readyz") {
						t.Errorf("Ingress %s exposes %s", o.name, path.Path)
					}
				}
			}
		}
		for _, o := range r.byKind["ServiceMonitor"] {
			sm := o.obj.(*monitoringv1.ServiceMonitor)
			n := 0
			for _, so := range r.byKind["Service"] {
				svc := so.obj.(*corev1.Service)
				if selects(sm.Spec.Selector.MatchLabels, so.meta.Labels) {
					n++
					for _, ep := range sm.Spec.Endpoints {
						ok := false
						for _, port := range svc.Spec.Ports {
							ok = ok || port.Name == ep.Port
						}
						if !ok {
							t.Errorf("ServiceMonitor %s: Service %s has no port %s", o.name, so.name, ep.Port)
						}
					}
				}
			}
			if n != 1 {
				t.Errorf("ServiceMonitor %s selects %d Services, want 1", o.name, n)
			}
		}
	})
}

func podDeclaresPort(tpl *corev1.PodTemplateSpec, port string) bool {
	for _, c := range tpl.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == port || fmt.Sprint(p.ContainerPort) == port {
				return true
			}
		}
	}
	return false
}

// Autoscalers point at rendered workloads, which then leave their replica
// count to them; KEDA triggers read lag with the Kafka scaler's own keys.
func TestAutoscalersTargetRenderedWorkloads(t *testing.T) {
	forEachSet(t, func(t *testing.T, r *render) {
		scaled := map[string]bool{}
		for _, o := range r.byKind["HorizontalPodAutoscaler"] {
			h := o.obj.(*autoscalingv2.HorizontalPodAutoscaler)
			ref := h.Spec.ScaleTargetRef
			if _, ok := r.get(ref.Kind, ref.Name); !ok {
				t.Errorf("HPA %s targets %s %s, which is not rendered", o.name, ref.Kind, ref.Name)
			}
			scaled[ref.Kind+"/"+ref.Name] = true
		}
		for _, o := range r.byKind["ScaledObject"] {
			so := o.obj.(*ScaledObject)
			ref := so.Spec.ScaleTargetRef
			if ref == nil {
				t.Errorf("ScaledObject %s: no scaleTargetRef", o.name)
				continue
			}
			if _, ok := r.get(ref.Kind, ref.Name); !ok || ref.APIVersion != "apps/v1" {
				t.Errorf("ScaledObject %s targets %s %s %s, which is not rendered", o.name, ref.APIVersion, ref.Kind, ref.Name)
			}
			scaled[ref.Kind+"/"+ref.Name] = true
			if so.Spec.MaxReplicaCount == nil || so.Spec.MinReplicaCount == nil || *so.Spec.MaxReplicaCount < *so.Spec.MinReplicaCount {
				t.Errorf("ScaledObject %s: min/max replica counts missing or reversed", o.name)
			}
			if len(so.Spec.Triggers) == 0 {
				t.Errorf("ScaledObject %s: no triggers", o.name)
			}
			for _, tr := range so.Spec.Triggers {
				if tr.Type != "kafka" {
					t.Errorf("ScaledObject %s: trigger type %s", o.name, tr.Type)
				}
				for k := range tr.Metadata {
					if !kafkaScalerMetadata[k] {
						t.Errorf("ScaledObject %s: trigger %s: the Kafka scaler has no metadata key %s", o.name, tr.Name, k)
					}
				}
				for _, k := range []string{"bootstrapServers", "consumerGroup", "topic", "lagThreshold"} {
					if tr.Metadata[k] == "" {
						t.Errorf("ScaledObject %s: trigger %s: %s is empty", o.name, tr.Name, k)
					}
				}
			}
		}
		for _, p := range r.longRunning() {
			if scaled[p.kind+"/"+p.name] && p.replicas != nil {
				t.Errorf("%s %s sets replicas although an autoscaler owns them (every upgrade would reset them)", p.kind, p.name)
			}
			if !scaled[p.kind+"/"+p.name] && p.replicas == nil {
				t.Errorf("%s %s has neither replicas nor an autoscaler", p.kind, p.name)
			}
		}
	})
}

// Every ConfigMap and Secret a pod uses is rendered or named by the values as existing.
func TestVolumesAndSecretsExist(t *testing.T) {
	forEachSet(t, func(t *testing.T, r *render) {
		for _, p := range r.pods() {
			where := p.kind + " " + p.name
			for _, v := range p.template.Spec.Volumes {
				if cm := v.ConfigMap; cm != nil {
					if _, ok := r.get("ConfigMap", cm.Name); !ok && !contains(r.set.externalConfigMaps, cm.Name) {
						t.Errorf("%s: volume %s uses ConfigMap %s, which is neither rendered nor named as existing", where, v.Name, cm.Name)
					}
				}
				if s := v.Secret; s != nil {
					if _, ok := r.get("Secret", s.SecretName); !ok && !contains(r.set.externalSecrets, s.SecretName) {
						t.Errorf("%s: volume %s uses Secret %s, which is neither rendered nor named as existing", where, v.Name, s.SecretName)
					}
				}
			}
			for _, c := range p.template.Spec.Containers {
				for _, e := range c.Env {
					if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
						ref := e.ValueFrom.SecretKeyRef
						so, ok := r.get("Secret", ref.Name)
						switch {
						case !ok && !contains(r.set.externalSecrets, ref.Name):
							t.Errorf("%s: env %s reads Secret %s, which is neither rendered nor named as existing", where, e.Name, ref.Name)
						case ok:
							s := so.obj.(*corev1.Secret)
							if _, has := s.StringData[ref.Key]; !has {
								if _, has := s.Data[ref.Key]; !has {
									t.Errorf("%s: env %s reads key %s, which Secret %s does not hold", where, e.Name, ref.Key, ref.Name)
								}
							}
						}
						if ok && p.kind == "Job" && !isHook(so.meta) && isPreInstallHook(p.meta) {
							t.Errorf("%s runs before install but reads Secret %s, which is created only after the hooks", where, ref.Name)
						}
					}
				}
			}
			if p.kind == "Job" && isPreInstallHook(p.meta) {
				for _, v := range p.template.Spec.Volumes {
					if v.ConfigMap != nil {
						if cm, ok := r.get("ConfigMap", v.ConfigMap.Name); ok && !isHook(cm.meta) {
							t.Errorf("%s runs before install but mounts ConfigMap %s, which is created only after the hooks", where, cm.name)
						}
					}
				}
			}
		}
	})
}

func hookEvents(m metav1.ObjectMeta) []string {
	h := m.Annotations["helm.sh/hook"]
	if h == "" {
		return nil
	}
	var out []string
	for _, e := range strings.Split(h, ",") {
		out = append(out, strings.TrimSpace(e))
	}
	return out
}

func isHook(m metav1.ObjectMeta) bool           { return len(hookEvents(m)) > 0 }
func isPreInstallHook(m metav1.ObjectMeta) bool { return contains(hookEvents(m), "pre-install") }

// The topics Job and the migrate Job run before install and before upgrade,
// the topics first; schema registration after install and before upgrade.
func TestHookJobs(t *testing.T) {
	forEachSet(t, func(t *testing.T, r *render) {
		var migrate, register, topics []podOwner
		for _, p := range r.pods() {
			if p.kind != "Job" {
				continue
			}
			c := p.template.Spec.Containers[0]
			args := strings.Join(append(append([]string{}, c.Command...), c.Args...), " ")
			switch {
			case strings.HasPrefix(args, "sink-clickhouse migrate"):
				migrate = append(migrate, p)
			case strings.HasPrefix(args, "schema-registry register"):
				register = append(register, p)
			case strings.HasPrefix(args, "context-topics apply"):
				topics = append(topics, p)
			default:
				t.Errorf("Job %s runs %q, which these tests do not expect", p.name, args)
			}
			if p.template.Spec.RestartPolicy != corev1.RestartPolicyNever && p.template.Spec.RestartPolicy != corev1.RestartPolicyOnFailure {
				t.Errorf("Job %s: restartPolicy %s", p.name, p.template.Spec.RestartPolicy)
			}
		}
		if len(migrate) != 1 {
			t.Fatalf("%d `sink-clickhouse migrate` Jobs, want 1", len(migrate))
		}
		ev := hookEvents(migrate[0].meta)
		if len(ev) != 2 || !contains(ev, "pre-install") || !contains(ev, "pre-upgrade") {
			t.Errorf("the migrate Job's helm.sh/hook is %q, want pre-install,pre-upgrade", migrate[0].meta.Annotations["helm.sh/hook"])
		}
		if len(topics) != 1 {
			t.Fatalf("%d `context-topics apply` Jobs, want 1", len(topics))
		}
		ev = hookEvents(topics[0].meta)
		if len(ev) != 2 || !contains(ev, "pre-install") || !contains(ev, "pre-upgrade") {
			t.Errorf("the topics Job's helm.sh/hook is %q, want pre-install,pre-upgrade", topics[0].meta.Annotations["helm.sh/hook"])
		}
		weight := func(p podOwner) int {
			w, _ := strconv.Atoi(p.meta.Annotations["helm.sh/hook-weight"])
			return w
		}
		if weight(topics[0]) >= weight(migrate[0]) {
			t.Errorf("the topics Job (weight %d) must run before the migrate Job (weight %d)", weight(topics[0]), weight(migrate[0]))
		}
		checkTopicsJob(t, r, topics[0])
		if len(register) != 1 {
			t.Fatalf("%d `schema-registry register` Jobs, want 1", len(register))
		}
		ev = hookEvents(register[0].meta)
		if !contains(ev, "post-install") || !contains(ev, "pre-upgrade") {
			t.Errorf("the register Job's helm.sh/hook is %q, want post-install and pre-upgrade", register[0].meta.Annotations["helm.sh/hook"])
		}
		args := register[0].template.Spec.Containers[0].Args
		url := ""
		for i, a := range args {
			if a == "--url" && i+1 < len(args) {
				url = args[i+1]
			}
		}
		if url != expectedRegistryURL(t, r) {
			t.Errorf("the register Job uses %q, the services %q", url, expectedRegistryURL(t, r))
		}
	})
}

// The registry URL the services should use in a render.
func expectedRegistryURL(t *testing.T, r *render) string {
	t.Helper()
	for _, o := range r.byKind["Deployment"] {
		if o.meta.Labels["app.kubernetes.io/component"] == "schema-registry" {
			svc, ok := r.get("Service", o.name)
			if !ok {
				t.Fatalf("no Service for %s", o.name)
			}
			return fmt.Sprintf("http://%s.%s.svc:%d", svc.name, namespace, svc.obj.(*corev1.Service).Spec.Ports[0].Port)
		}
	}
	// An external registry: the value set's schemaRegistry.externalUrl.
	for _, a := range r.set.args {
		if _, rest, ok := strings.Cut(a, "schemaRegistry.externalUrl="); ok {
			url, _, _ := strings.Cut(rest, ",")
			return url
		}
	}
	t.Fatalf("%s: no registry Deployment and no schemaRegistry.externalUrl", r.set.name)
	return ""
}

// The topics Job applies the chart's own declaration (the ConfigMap holds
// topics.toml as it is in the chart) with the release's names, partitions
// and replication factor, and reaches Kafka as the services do: the tools'
// KAFKA_* variables carry the [kafka] table of every service.
func checkTopicsJob(t *testing.T, r *render, p podOwner) {
	t.Helper()
	c := p.template.Spec.Containers[0]
	file := ""
	for i, a := range c.Args {
		if a == "--file" && i+1 < len(c.Args) {
			file = c.Args[i+1]
		}
	}
	if file == "" {
		t.Fatalf("Job %s: no --file", p.name)
	}
	src, err := resolveFile(r, parseDockerfile(t), &p.template.Spec, &c, file)
	if err != nil {
		t.Fatalf("Job %s: --file %v", p.name, err)
	}
	declared, err := os.ReadFile(filepath.Join(chartDir, "topics.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if !src.known || strings.TrimSpace(src.content) != strings.TrimSpace(string(declared)) {
		t.Errorf("Job %s: --file %s is not the chart's topics.toml (from %s %s)", p.name, file, src.kind, src.name)
	}
	args := strings.Join(c.Args, " ")
	for _, want := range []string{"--replication-factor 3", "--name context.events.v1=context.events.v1", "--partitions context.events.v1="} {
		if !strings.Contains(args, want) {
			t.Errorf("Job %s: args %q lack %q", p.name, args, want)
		}
	}
	if strings.Contains(args, "--skip _schemas") == expectsRegistry(r) {
		t.Errorf("Job %s: args %q: _schemas must be skipped exactly when the registry is external", p.name, args)
	}
	configs := configsOf(t, r, parseDockerfile(t))
	k := kafkaTable(t, configs)
	wantEnv := map[string]any{
		"KAFKA_BOOTSTRAP":         k["bootstrap"],
		"KAFKA_SECURITY_PROTOCOL": k["security_protocol"],
		"KAFKA_SASL_MECHANISM":    k["sasl_mechanism"],
		"KAFKA_SASL_USERNAME":     k["sasl_username"],
		"KAFKA_SSL_CA_FILE":       k["ssl_ca_file"],
		"KAFKA_SSL_CERT_FILE":     k["ssl_cert_file"],
		"KAFKA_SSL_KEY_FILE":      k["ssl_key_file"],
	}
	for name, want := range wantEnv {
		e := envVar(&c, name)
		switch {
		case want == nil && e != nil:
			t.Errorf("Job %s: sets %s, which the services' [kafka] table does not", p.name, name)
		case want != nil && (e == nil || e.Value != want):
			t.Errorf("Job %s: %s = %v, the services' [kafka] table %v", p.name, name, e, want)
		}
		if e != nil && strings.HasSuffix(name, "_FILE") {
			if _, err := resolveFile(r, parseDockerfile(t), &p.template.Spec, &c, e.Value); err != nil {
				t.Errorf("Job %s: %s: %v", p.name, name, err)
			}
		}
	}
	sasl := k["sasl_mechanism"] != nil
	if pw := envVar(&c, "KAFKA_SASL_PASSWORD"); (pw != nil) != sasl || (pw != nil && (pw.ValueFrom == nil || pw.ValueFrom.SecretKeyRef == nil)) {
		t.Errorf("Job %s: KAFKA_SASL_PASSWORD %v (want it from a Secret exactly with SASL)", p.name, pw)
	}
}

// Whether the release runs its own registry (and so needs _schemas).
func expectsRegistry(r *render) bool {
	for _, o := range r.byKind["Deployment"] {
		if o.meta.Labels["app.kubernetes.io/component"] == "schema-registry" {
			return true
		}
	}
	return false
}

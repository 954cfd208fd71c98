package charttest

import (
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The KEDA ScaledObject (keda.sh/v1alpha1). The fields and their JSON names
// follow kedacore/keda, apis/keda/v1alpha1/scaledobject_types.go and
// scaletriggers_types.go (KEDA 2.x); the status is left out because the
// chart never writes one. The module github.com/kedacore/keda/v2 is not
// imported: it is a single module that carries every scaler's cloud SDK.
type ScaledObject struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec ScaledObjectSpec `json:"spec"`
}

type ScaledObjectSpec struct {
	ScaleTargetRef        *ScaleTarget    `json:"scaleTargetRef"`
	PollingInterval       *int32          `json:"pollingInterval,omitempty"`
	CooldownPeriod        *int32          `json:"cooldownPeriod,omitempty"`
	InitialCooldownPeriod int32           `json:"initialCooldownPeriod,omitempty"`
	IdleReplicaCount      *int32          `json:"idleReplicaCount,omitempty"`
	MinReplicaCount       *int32          `json:"minReplicaCount,omitempty"`
	MaxReplicaCount       *int32          `json:"maxReplicaCount,omitempty"`
	Advanced              *AdvancedConfig `json:"advanced,omitempty"`
	Triggers              []ScaleTriggers `json:"triggers"`
	Fallback              *Fallback       `json:"fallback,omitempty"`
}

type Fallback struct {
	FailureThreshold int32 `json:"failureThreshold"`
	Replicas         int32 `json:"replicas"`
}

type AdvancedConfig struct {
	HorizontalPodAutoscalerConfig *HorizontalPodAutoscalerConfig `json:"horizontalPodAutoscalerConfig,omitempty"`
	RestoreToOriginalReplicaCount bool                           `json:"restoreToOriginalReplicaCount,omitempty"`
	ScalingModifiers              *ScalingModifiers              `json:"scalingModifiers,omitempty"`
}

type ScalingModifiers struct {
	Formula          string                         `json:"formula,omitempty"`
	Target           string                         `json:"target,omitempty"`
	ActivationTarget string                         `json:"activationTarget,omitempty"`
	MetricType       autoscalingv2.MetricTargetType `json:"metricType,omitempty"`
}

type HorizontalPodAutoscalerConfig struct {
	Behavior *autoscalingv2.HorizontalPodAutoscalerBehavior `json:"behavior,omitempty"`
	Name     string                                         `json:"name,omitempty"`
}

type ScaleTarget struct {
	Name                   string `json:"name"`
	APIVersion             string `json:"apiVersion,omitempty"`
	Kind                   string `json:"kind,omitempty"`
	EnvSourceContainerName string `json:"envSourceContainerName,omitempty"`
}

// ScaleTriggers: metadata values are strings in the CRD, so an unquoted
// number or boolean in a template fails to decode here, as it fails on the
// API server.
type ScaleTriggers struct {
	Type              string                         `json:"type"`
	Name              string                         `json:"name,omitempty"`
	UseCachedMetrics  bool                           `json:"useCachedMetrics,omitempty"`
	Metadata          map[string]string              `json:"metadata"`
	AuthenticationRef *AuthenticationRef             `json:"authenticationRef,omitempty"`
	MetricType        autoscalingv2.MetricTargetType `json:"metricType,omitempty"`
}

type AuthenticationRef struct {
	Name string `json:"name"`
	Kind string `json:"kind,omitempty"`
}

// The trigger metadata the Kafka scaler reads (kedacore/keda,
// pkg/scalers/kafka_scaler.go, kafkaMetadata); the credentials come from a
// TriggerAuthentication, never from metadata.
var kafkaScalerMetadata = map[string]bool{
	"bootstrapServers": true, "consumerGroup": true, "topic": true,
	"partitionLimitation": true, "lagThreshold": true, "activationLagThreshold": true,
	"offsetResetPolicy": true, "allowIdleConsumers": true, "excludePersistentLag": true,
	"scaleToZeroOnInvalidOffset": true, "limitToPartitionsWithLag": true,
	"ensureEvenDistributionOfPartitions": true, "version": true, "tls": true,
	"unsafeSsl": true, "sasl": true,
}

// The KEDA TriggerAuthentication (keda.sh/v1alpha1), following kedacore/keda
// apis/keda/v1alpha1/triggerauthentication_types.go; only the sources that
// read Kubernetes objects or the pod (configMapTargetRef since KEDA 2.13).
type TriggerAuthentication struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec TriggerAuthenticationSpec `json:"spec"`
}

type TriggerAuthenticationSpec struct {
	PodIdentity        *AuthPodIdentity         `json:"podIdentity,omitempty"`
	SecretTargetRef    []AuthSecretTargetRef    `json:"secretTargetRef,omitempty"`
	ConfigMapTargetRef []AuthConfigMapTargetRef `json:"configMapTargetRef,omitempty"`
	Env                []AuthEnvironment        `json:"env,omitempty"`
}

type AuthPodIdentity struct {
	Provider   string  `json:"provider"`
	IdentityID *string `json:"identityId,omitempty"`
	RoleArn    *string `json:"roleArn,omitempty"`
}

type AuthSecretTargetRef struct {
	Parameter string `json:"parameter"`
	Name      string `json:"name"`
	Key       string `json:"key"`
}

type AuthConfigMapTargetRef struct {
	Parameter string `json:"parameter"`
	Name      string `json:"name"`
	Key       string `json:"key"`
}

type AuthEnvironment struct {
	Parameter     string `json:"parameter"`
	Name          string `json:"name"`
	ContainerName string `json:"containerName,omitempty"`
}

// The authentication parameters the Kafka scaler reads (SASL and TLS;
// Kerberos, OAuth and AWS ones are not used by the chart). `sasl` and
// `tls` may come from the trigger's metadata instead, as the chart writes them.
var kafkaScalerAuthParams = map[string]bool{
	"sasl": true, "username": true, "password": true,
	"tls": true, "ca": true, "cert": true, "key": true, "keyPassword": true,
}

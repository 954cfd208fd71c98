// Package charttest checks the context-pipeline Helm chart without a
// cluster: it renders the chart with the real helm binary (HELM, installed
// by scripts/helm-check), decodes every manifest strictly into the
// Kubernetes, prometheus-operator and KEDA types (an unknown or misspelt
// field fails), and asserts on the rendered objects, the services' rendered
// TOML configs and the Dockerfile at the root of the repository.
//
//	HELM=~/.cache/context-helm/v3.19.0/helm go test ./...
package charttest

// Command validate checks Kubernetes manifests offline: every YAML document is decoded
// strictly (unknown or duplicate fields are errors) into the Go types of the Kubernetes API
// (k8s.io/api) or of Chaos Mesh (github.com/chaos-mesh/chaos-mesh/api), then checked for the
// mistakes a strict decode cannot see (a selector that does not match its pod template, a
// probe on a port the container does not declare, a Service without a selector...).
//
// Usage: validate FILE|DIR...   (exit 0: every document valid; 1: problems, one per line)
package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	chaosmesh "github.com/chaos-mesh/chaos-mesh/api/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

// kinds maps "apiVersion/kind" to a constructor of the Go type a document decodes into.
var kinds = map[string]func() any{
	"v1/ConfigMap":                         func() any { return &corev1.ConfigMap{} },
	"v1/Service":                           func() any { return &corev1.Service{} },
	"v1/ServiceAccount":                    func() any { return &corev1.ServiceAccount{} },
	"v1/Namespace":                         func() any { return &corev1.Namespace{} },
	"v1/Secret":                            func() any { return &corev1.Secret{} },
	"v1/PersistentVolumeClaim":             func() any { return &corev1.PersistentVolumeClaim{} },
	"batch/v1/Job":                         func() any { return &batchv1.Job{} },
	"apps/v1/Deployment":                   func() any { return &appsv1.Deployment{} },
	"apps/v1/StatefulSet":                  func() any { return &appsv1.StatefulSet{} },
	"chaos-mesh.org/v1alpha1/NetworkChaos": func() any { return &chaosmesh.NetworkChaos{} },
	"chaos-mesh.org/v1alpha1/PodChaos":     func() any { return &chaosmesh.PodChaos{} },
	"chaos-mesh.org/v1alpha1/StressChaos":  func() any { return &chaosmesh.StressChaos{} },
	"chaos-mesh.org/v1alpha1/Schedule":     func() any { return &chaosmesh.Schedule{} },
}

var separator = regexp.MustCompile(`(?m)^---\s*$`)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: validate FILE|DIR...")
		os.Exit(2)
	}
	var files []string
	for _, arg := range os.Args[1:] {
		found, err := yamlFiles(arg)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", arg, err)
			os.Exit(2)
		}
		files = append(files, found...)
	}
	var problems []string
	documents := 0
	for _, file := range files {
		n, ps := validateFile(file)
		documents += n
		problems = append(problems, ps...)
	}
	for _, p := range problems {
		fmt.Println(p)
	}
	if len(problems) > 0 {
		fmt.Printf("%d problem(s) in %d document(s) of %d file(s)\n", len(problems), documents, len(files))
		os.Exit(1)
	}
	fmt.Printf("ok: %d document(s) in %d file(s) decode strictly into k8s.io/api and chaos-mesh types\n", documents, len(files))
}

func yamlFiles(arg string) ([]string, error) {
	info, err := os.Stat(arg)
	if err != nil {
		return nil, err
	}
	if !info.IsDir() {
		return []string{arg}, nil
	}
	var out []string
	err = filepath.WalkDir(arg, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			out = append(out, path)
		}
		return nil
	})
	sort.Strings(out)
	return out, err
}

func validateFile(file string) (int, []string) {
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, []string{fmt.Sprintf("%s: %v", file, err)}
	}
	var problems []string
	count := 0
	for i, doc := range separator.Split(string(data), -1) {
		if len(bytes.TrimSpace([]byte(stripComments(doc)))) == 0 {
			continue
		}
		count++
		where := fmt.Sprintf("%s: document %d", file, i+1)
		for _, p := range validateDocument([]byte(doc)) {
			problems = append(problems, where+": "+p)
		}
	}
	if count == 0 {
		problems = append(problems, file+": no YAML document")
	}
	return count, problems
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

func validateDocument(doc []byte) []string {
	var meta metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &meta); err != nil {
		return []string{"not YAML: " + err.Error()}
	}
	key := meta.APIVersion + "/" + meta.Kind
	newObj, ok := kinds[key]
	if !ok {
		known := knownKinds()
		return []string{fmt.Sprintf("unknown apiVersion/kind %q (known: %s)", key, strings.Join(known, ", "))}
	}
	obj := newObj()
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return []string{fmt.Sprintf("%s: %v", key, err)}
	}
	return check(obj)
}

func knownKinds() []string {
	out := make([]string, 0, len(kinds))
	for k := range kinds {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func checkName(kind string, m metav1.ObjectMeta) []string {
	if m.Name == "" {
		return []string{kind + ": metadata.name is missing"}
	}
	if errs := validation.IsDNS1123Subdomain(m.Name); len(errs) > 0 {
		return []string{fmt.Sprintf("%s %s: name: %s", kind, m.Name, strings.Join(errs, "; "))}
	}
	return nil
}

func check(obj any) []string {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		ps := checkName("Deployment", o.ObjectMeta)
		if o.Spec.Selector == nil || len(o.Spec.Selector.MatchLabels) == 0 {
			ps = append(ps, fmt.Sprintf("Deployment %s: spec.selector.matchLabels is empty", o.Name))
		} else {
			for k, v := range o.Spec.Selector.MatchLabels {
				if o.Spec.Template.Labels[k] != v {
					ps = append(ps, fmt.Sprintf("Deployment %s: selector %s=%s does not match the pod template's labels", o.Name, k, v))
				}
			}
		}
		return append(ps, checkPod("Deployment "+o.Name, o.Spec.Template.Spec)...)
	case *appsv1.StatefulSet:
		ps := checkName("StatefulSet", o.ObjectMeta)
		return append(ps, checkPod("StatefulSet "+o.Name, o.Spec.Template.Spec)...)
	case *corev1.Service:
		ps := checkName("Service", o.ObjectMeta)
		if errs := validation.IsDNS1035Label(o.Name); len(errs) > 0 {
			ps = append(ps, fmt.Sprintf("Service %s: name: %s", o.Name, strings.Join(errs, "; ")))
		}
		if len(o.Spec.Selector) == 0 {
			ps = append(ps, fmt.Sprintf("Service %s: spec.selector is empty", o.Name))
		}
		if len(o.Spec.Ports) == 0 {
			ps = append(ps, fmt.Sprintf("Service %s: no ports", o.Name))
		}
		for _, p := range o.Spec.Ports {
			if p.Port < 1 || p.Port > 65535 {
				ps = append(ps, fmt.Sprintf("Service %s: port %d out of range", o.Name, p.Port))
			}
		}
		return ps
	case *batchv1.Job:
		ps := checkName("Job", o.ObjectMeta)
		return append(ps, checkPod("Job "+o.Name, o.Spec.Template.Spec)...)
	case *corev1.PersistentVolumeClaim:
		ps := checkName("PersistentVolumeClaim", o.ObjectMeta)
		if len(o.Spec.AccessModes) == 0 {
			ps = append(ps, fmt.Sprintf("PersistentVolumeClaim %s: no accessModes", o.Name))
		}
		if _, ok := o.Spec.Resources.Requests[corev1.ResourceStorage]; !ok {
			ps = append(ps, fmt.Sprintf("PersistentVolumeClaim %s: no storage request", o.Name))
		}
		return ps
	case *corev1.ConfigMap:
		return checkName("ConfigMap", o.ObjectMeta)
	case *corev1.ServiceAccount:
		return checkName("ServiceAccount", o.ObjectMeta)
	case *corev1.Namespace:
		return checkName("Namespace", o.ObjectMeta)
	case *corev1.Secret:
		return checkName("Secret", o.ObjectMeta)
	case *chaosmesh.NetworkChaos:
		ps := checkName("NetworkChaos", o.ObjectMeta)
		return append(ps, checkSelector("NetworkChaos "+o.Name, o.Spec.Selector, string(o.Spec.Mode))...)
	case *chaosmesh.PodChaos:
		ps := checkName("PodChaos", o.ObjectMeta)
		return append(ps, checkSelector("PodChaos "+o.Name, o.Spec.Selector, string(o.Spec.Mode))...)
	case *chaosmesh.StressChaos:
		ps := checkName("StressChaos", o.ObjectMeta)
		if o.Spec.Stressors == nil && o.Spec.StressngStressors == "" {
			ps = append(ps, fmt.Sprintf("StressChaos %s: no stressors", o.Name))
		}
		return append(ps, checkSelector("StressChaos "+o.Name, o.Spec.Selector, string(o.Spec.Mode))...)
	case *chaosmesh.Schedule:
		return checkName("Schedule", o.ObjectMeta)
	}
	return nil
}

func checkSelector(what string, s chaosmesh.PodSelectorSpec, mode string) []string {
	var ps []string
	if len(s.LabelSelectors) == 0 && len(s.Pods) == 0 {
		ps = append(ps, what+": selector selects no pod (labelSelectors or pods)")
	}
	switch mode {
	case "one", "all", "fixed", "fixed-percent", "random-max-percent":
	default:
		ps = append(ps, fmt.Sprintf("%s: mode %q is not one of one, all, fixed, fixed-percent, random-max-percent", what, mode))
	}
	return ps
}

func checkPod(what string, spec corev1.PodSpec) []string {
	var ps []string
	if len(spec.Containers) == 0 {
		return []string{what + ": no containers"}
	}
	volumes := map[string]bool{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = true
	}
	for _, c := range spec.Containers {
		if c.Name == "" || c.Image == "" {
			ps = append(ps, fmt.Sprintf("%s: a container needs a name and an image", what))
			continue
		}
		ports := map[int32]bool{}
		named := map[string]bool{}
		for _, p := range c.Ports {
			ports[p.ContainerPort] = true
			if p.Name != "" {
				named[p.Name] = true
			}
		}
		for kind, probe := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
			if probe == nil || probe.HTTPGet == nil {
				continue
			}
			if !probePortDeclared(probe.HTTPGet.Port, ports, named) {
				ps = append(ps, fmt.Sprintf("%s: container %s: %s probe on port %s, which it does not declare", what, c.Name, kind, probe.HTTPGet.Port.String()))
			}
		}
		for _, m := range c.VolumeMounts {
			if !volumes[m.Name] {
				ps = append(ps, fmt.Sprintf("%s: container %s mounts volume %q, which the pod does not have", what, c.Name, m.Name))
			}
		}
	}
	return ps
}

func probePortDeclared(port intstr.IntOrString, ports map[int32]bool, named map[string]bool) bool {
	if port.Type == intstr.String {
		return named[port.StrVal]
	}
	return ports[port.IntVal]
}

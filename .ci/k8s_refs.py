"""Cross-reference checks over one rendered overlay (what the schemas cannot see).

    python3 .ci/k8s_refs.py OVERLAY RENDERED.yaml

The Kubernetes schemas check each object alone; a typo in a label, a port name or a Secret
key still validates and only fails in a cluster. This checks, within one rendered overlay:
Services, the PodDisruptionBudget and the ServiceMonitor select pods or Services that exist;
named target ports exist on the selected pods; every ConfigMap, Secret and key a pod reads
exists; the HPA targets an existing Deployment; the gateway's termination grace period stays
above its drain bound; the config files in the ConfigMap parse, every replica names a device
and every tenant a tier that exists. It also checks the ServiceMonitor, whose CRD schema is not among the
core schemas, structurally. Prints one line per problem; exits 1 if there is any.
"""

import sys
import tomllib

import yaml

problems = []


def problem(msg):
    problems.append(msg)


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_templates(objs):
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet"):
            yield o, o["spec"]["template"]


def check_services(objs, pods):
    for svc in (o for o in objs if o["kind"] == "Service"):
        name, sel = svc["metadata"]["name"], svc["spec"].get("selector", {})
        chosen = [t for _, t in pods if matches(sel, t["metadata"].get("labels", {}))]
        if not chosen:
            problem(f"Service {name}: selector {sel} matches no pod template")
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort")
            if isinstance(target, str):
                for t in chosen:
                    names = {p.get("name") for c in t["spec"]["containers"] for p in c.get("ports", [])}
                    if target not in names:
                        problem(f"Service {name}: targetPort {target!r} is no port of its pods")


def check_pod_refs(objs, pods):
    configmaps = {o["metadata"]["name"] for o in objs if o["kind"] == "ConfigMap"}
    secrets = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Secret"}

    def secret_key(owner, name, key):
        s = secrets.get(name)
        if s is None:
            problem(f"{owner}: Secret {name} does not exist")
        elif key not in {**s.get("data", {}), **s.get("stringData", {})}:
            problem(f"{owner}: Secret {name} has no key {key!r}")

    for obj, t in pods:
        owner = f"{obj['kind']} {obj['metadata']['name']}"
        spec = t["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in obj["spec"].get("volumeClaimTemplates", [])}
        for v in volumes.values():
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                problem(f"{owner}: ConfigMap {v['configMap']['name']} does not exist")
            if "secret" in v:
                for item in v["secret"].get("items", []):
                    secret_key(owner, v["secret"]["secretName"], item["key"])
        for c in spec.get("initContainers", []) + spec["containers"]:
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes and m["name"] not in claims:
                    problem(f"{owner}/{c['name']}: mounts unknown volume {m['name']!r}")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret_key(f"{owner}/{c['name']}", ref["name"], ref["key"])


def check_scaling(objs, pods):
    deployments = {o["metadata"]["name"] for o in objs if o["kind"] == "Deployment"}
    for hpa in (o for o in objs if o["kind"] == "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        if target["kind"] != "Deployment" or target["name"] not in deployments:
            problem(f"HPA {hpa['metadata']['name']}: target {target} does not exist")
    for pdb in (o for o in objs if o["kind"] == "PodDisruptionBudget"):
        sel = pdb["spec"]["selector"]["matchLabels"]
        if not any(matches(sel, t["metadata"]["labels"]) for _, t in pods):
            problem(f"PDB {pdb['metadata']['name']}: selector {sel} matches no pod template")


def check_service_monitor(objs):
    services = [o for o in objs if o["kind"] == "Service"]
    for sm in (o for o in objs if o["kind"] == "ServiceMonitor"):
        name = sm["metadata"].get("name")
        if sm.get("apiVersion") != "monitoring.coreos.com/v1" or not name:
            problem(f"ServiceMonitor {name}: needs apiVersion monitoring.coreos.com/v1 and a name")
            continue
        sel = sm.get("spec", {}).get("selector", {}).get("matchLabels", {})
        chosen = [s for s in services if matches(sel, s["metadata"].get("labels", {}))]
        if not chosen:
            problem(f"ServiceMonitor {name}: selector {sel} matches no Service")
        endpoints = sm.get("spec", {}).get("endpoints") or []
        if not endpoints:
            problem(f"ServiceMonitor {name}: no endpoints")
        for ep in endpoints:
            ports = {p.get("name") for s in chosen for p in s["spec"]["ports"]}
            if ep.get("port") not in ports:
                problem(f"ServiceMonitor {name}: port {ep.get('port')!r} is not a port of its Services")


def gateway_config(objs):
    """The data of the generated tiergate-config ConfigMap, or None."""
    config = next((o for o in objs if o["kind"] == "ConfigMap"
                   and o["metadata"]["name"].startswith("tiergate-config")), None)
    return config["data"] if config else None


def check_config_files(objs):
    data = gateway_config(objs)
    if data is None:
        return
    parsed = {}
    for name in ("tiergate.toml", "tiers.toml", "tenants.toml"):
        try:
            parsed[name] = tomllib.loads(data[name])
        except (KeyError, tomllib.TOMLDecodeError) as e:
            problem(f"ConfigMap tiergate-config: {name}: {e}")
    if len(parsed) < 3:
        return
    for model in parsed["tiergate.toml"].get("models", []):
        for r in model.get("replicas", []):
            dev = r.get("device", "")
            if not (dev == "cpu" or (dev.startswith("cuda:") and dev[5:].isdigit())):
                problem(f"tiergate.toml: model {model.get('name')}: device {dev!r}")
    tiers = parsed["tiers.toml"].get("tiers", {})
    for t in parsed["tenants.toml"].get("tenants", []):
        if t.get("tier") not in tiers:
            problem(f"tenants.toml: tenant {t.get('id')}: no tier {t.get('tier')!r}")


def check_drain_bound(objs):
    """terminationGracePeriodSeconds > preStop sleep + shutdown_grace_secs + shutdown_flush_secs."""
    data = gateway_config(objs)
    gateway = next((o for o in objs if o["kind"] == "Deployment"
                    and o["metadata"]["name"] == "tiergate"), None)
    if not data or not gateway:
        problem("no tiergate Deployment or tiergate-config ConfigMap")
        return
    try:
        limits = tomllib.loads(data["tiergate.toml"]).get("limits", {})
    except tomllib.TOMLDecodeError:
        return  # reported by check_config_files
    grace = limits.get("shutdown_grace_secs", 20)  # the defaults (src/config.rs)
    flush = limits.get("shutdown_flush_secs", 5)
    spec = gateway["spec"]["template"]["spec"]
    container = next(c for c in spec["containers"] if c["name"] == "tiergate")
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_stop = int(command[1]) if command[:1] == ["sleep"] else 0
    period = spec.get("terminationGracePeriodSeconds", 30)
    bound = pre_stop + grace + flush
    if period <= bound:
        problem(f"gateway: terminationGracePeriodSeconds {period} is not above the drain bound "
                f"{bound} (preStop {pre_stop} s + shutdown_grace_secs {grace} s + shutdown_flush_secs {flush} s)")


def main():
    overlay, path = sys.argv[1:3]
    objs = [o for o in yaml.safe_load_all(open(path)) if o]
    pods = list(pod_templates(objs))
    check_services(objs, pods)
    check_pod_refs(objs, pods)
    check_scaling(objs, pods)
    check_service_monitor(objs)
    check_config_files(objs)
    check_drain_bound(objs)
    for p in problems:
        print(f"{overlay}: {p}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()

"""The official Python client against Kestrel: create, list and watch pods.

Run by tests/clients.rs with KUBECONFIG set; prints 'ok' on success and
exits non-zero with the reason otherwise.
"""
import sys

from kubernetes import client, config, watch

config.load_kube_config()
v1 = client.CoreV1Api()

ns = "pyclient"
v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
for i in range(3):
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name=f"p{i}", labels={"app": "py"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
    )
    v1.create_namespaced_pod(ns, pod)

pods = v1.list_namespaced_pod(ns, label_selector="app=py")
names = sorted(p.metadata.name for p in pods.items)
if names != ["p0", "p1", "p2"]:
    sys.exit(f"list returned {names}")
if pods.items[0].spec.restart_policy != "Always":
    sys.exit("defaults missing")

rv = pods.metadata.resource_version
w = watch.Watch()
seen = []
v1.patch_namespaced_pod("p1", ns, {"metadata": {"labels": {"touched": "yes"}}})
v1.delete_namespaced_pod("p2", ns)
for event in w.stream(v1.list_namespaced_pod, ns, resource_version=rv, timeout_seconds=10):
    seen.append((event["type"], event["object"].metadata.name))
    if len(seen) == 2:
        w.stop()
if seen != [("MODIFIED", "p1"), ("DELETED", "p2")]:
    sys.exit(f"watch saw {seen}")

try:
    v1.read_namespaced_pod("nope", ns)
    sys.exit("expected 404")
except client.exceptions.ApiException as e:
    if e.status != 404:
        sys.exit(f"expected 404, got {e.status}")
print("ok")

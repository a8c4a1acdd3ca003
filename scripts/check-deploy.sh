#!/usr/bin/env bash
# Validates deploy/ (or DEPLOY_DIR):
# 1. every AWS SDK operation the code in src/ calls (a `.operation_name()` fluent builder of the ECS,
#    EC2, Auto Scaling or CloudWatch client, outside tests) has an Allow statement in
#    iam-policy.json AND in the template's AgentPolicy, and neither allows an operation no code
#    calls (least privilege);
# 2. iam-policy.json has the same statements as the template's AgentPolicy;
# 3. the CloudFormation template lints clean with cfn-lint (from .venv, installed by
#    scripts/test-env.sh).
# The operation names come from the SDK crates themselves (their src/operation/ modules, found with
# `cargo metadata`), so a new call is caught without a list to keep up to date here.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy="${DEPLOY_DIR:-deploy}"
lint=.venv/bin/cfn-lint
[ -x "$lint" ] || { echo "check-deploy: $lint missing: run scripts/test-env.sh" >&2; exit 1; }
metadata="$(mktemp)"
trap 'rm -f "$metadata"' EXIT
# Not --offline: on a fresh machine the registry cache lacks the crates of other platforms, which
# metadata lists too; crates.io is reachable wherever the build is.
cargo metadata --format-version 1 --locked --quiet >"$metadata"
.venv/bin/python - "$deploy" "$metadata" <<'PY'
import json, pathlib, re, sys, yaml

deploy = pathlib.Path(sys.argv[1])

class Loader(yaml.SafeLoader):
    pass

# CloudFormation short-form tags (!Ref, !Sub, ...) load as plain values here.
def any_tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_mapping(node)
Loader.add_multi_constructor("!", any_tag)

with open(deploy / "iam-policy.json") as f:
    policy = json.load(f)["Statement"]
with open(deploy / "capacity-alarms.yaml") as f:
    template = yaml.load(f, Loader=Loader)
tpl = template["Resources"]["AgentPolicy"]["Properties"]["PolicyDocument"]["Statement"]

def listed(a):
    return [a] if isinstance(a, str) else list(a)

def allowed(statements):
    """The allowed actions, by their lower-case name (IAM action names ignore case)."""
    return {a.lower(): a for s in statements if s.get("Effect") == "Allow" for a in listed(s["Action"])}

# The SDK crates: IAM service prefix, and each operation's snake_case module name.
crates = {"aws-sdk-ecs": "ecs", "aws-sdk-ec2": "ec2", "aws-sdk-autoscaling": "autoscaling",
          "aws-sdk-cloudwatch": "cloudwatch"}
operations = {}  # snake name -> {prefix: PascalName}
with open(sys.argv[2]) as f:
    packages = json.load(f)["packages"]
for pkg in packages:
    prefix = crates.get(pkg["name"])
    if prefix is None:
        continue
    ops = pathlib.Path(pkg["manifest_path"]).parent / "src" / "operation"
    for d in ops.iterdir():
        if d.is_dir():
            pascal = "".join(part.capitalize() for part in d.name.split("_"))
            operations.setdefault(d.name, {})[prefix] = pascal
if {p for names in operations.values() for p in names} != set(crates.values()):
    sys.exit(f"check-deploy: SDK operations not found for every crate in `cargo metadata`: {sorted(operations)[:5]}")

call = re.compile(r"\.\s*([a-z][a-z0-9_]*)\s*\(\s*\)")
needed = {}  # "prefix:Pascal" -> first "file:line"
for path in sorted(pathlib.Path("src").rglob("*.rs")):
    if path.name == "tests.rs" or "tests" in path.parts:
        continue
    text = path.read_text()
    # Unit tests at the end of a file call the SDK against fakes; only product calls need IAM.
    cut = text.find("#[cfg(test)]")
    if cut >= 0:
        text = text[:cut]
    used = {p for c, p in crates.items() if c.replace("-", "_") in text}
    for m in call.finditer(text):
        services = operations.get(m.group(1))
        if not services:
            continue
        # A name several services share: the services this file uses, else all of them.
        prefixes = [p for p in services if p in used] or list(services)
        line = text.count("\n", 0, m.start()) + 1
        for p in prefixes:
            needed.setdefault(f"{p}:{services[p]}", f"{path}:{line}")

errors = []
for where, statements in ((deploy / "iam-policy.json", policy),
                          (deploy / "capacity-alarms.yaml (AgentPolicy)", tpl)):
    have = allowed(statements)
    for action, site in sorted(needed.items()):
        if action.lower() not in have:
            errors.append(f"{where}: no statement allows {action}, called at {site}")
    # Least privilege: nothing the code does not call.
    called = {a.lower() for a in needed}
    for action in sorted(set(have) - called):
        errors.append(f"{where}: allows {have[action]}, which no code in src/ calls")
if errors:
    sys.exit("check-deploy: the IAM policy does not match the calls the code makes:\n  " + "\n  ".join(errors))

def actions(statements):
    return {s["Sid"]: sorted(listed(s["Action"])) for s in statements}
if actions(policy) != actions(tpl):
    sys.exit(f"check-deploy: {deploy}/iam-policy.json and the template's AgentPolicy differ:\n{actions(policy)}\n{actions(tpl)}")
print(f"check-deploy: the policy allows each of the {len(needed)} operations called in src/: {', '.join(sorted(needed))}", file=sys.stderr)
PY
"$lint" "$deploy"/*.yaml
echo "check-deploy: template lints clean; iam-policy.json matches the template's AgentPolicy" >&2

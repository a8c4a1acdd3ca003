#!/usr/bin/env bash
# Validates deploy/: the CloudFormation template with cfn-lint (from .venv, installed by
# scripts/test-env.sh), and that deploy/iam-policy.json is JSON with the same statements as the
# template's AgentPolicy.
set -euo pipefail
cd "$(dirname "$0")/.."
lint=.venv/bin/cfn-lint
[ -x "$lint" ] || { echo "check-deploy: $lint missing: run scripts/test-env.sh" >&2; exit 1; }
"$lint" deploy/*.yaml
.venv/bin/python - <<'PY'
import json, sys, yaml

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

with open("deploy/iam-policy.json") as f:
    policy = json.load(f)
with open("deploy/capacity-alarms.yaml") as f:
    template = yaml.load(f, Loader=Loader)
tpl = template["Resources"]["AgentPolicy"]["Properties"]["PolicyDocument"]["Statement"]
def actions(statements):
    out = {}
    for s in statements:
        a = s["Action"]
        out[s["Sid"]] = sorted([a] if isinstance(a, str) else a)
    return out
if actions(policy["Statement"]) != actions(tpl):
    sys.exit(f"check-deploy: deploy/iam-policy.json and the template's AgentPolicy differ:\n{actions(policy['Statement'])}\n{actions(tpl)}")
print("check-deploy: template lints clean; iam-policy.json matches the template's AgentPolicy", file=sys.stderr)
PY
